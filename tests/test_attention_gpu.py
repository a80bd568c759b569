"""Fused attention backends vs the SDPA reference (CUDA only; skipped cleanly without a GPU)."""

from __future__ import annotations

import pytest
import torch

from model.attention import _flash_attn_fn, _torch_varlen_fn, attention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKENDS = [
    pytest.param("flash_attn", marks=pytest.mark.skipif(_flash_attn_fn() is None, reason="flash-attn not installed")),
    pytest.param("torch_varlen", marks=pytest.mark.skipif(_torch_varlen_fn() is None, reason="no torch varlen_attn")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fused_backend_matches_sdpa(backend, window, dtype):
    if dtype == torch.float32 and backend == "flash_attn":
        pytest.skip("flash-attn has no fp32 kernels (the model runs it in bf16)")
    torch.manual_seed(0)
    lens = [300, 17, 64, 65, 500, 1]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lens), 8, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(sum(lens), 8, 64, device="cuda", dtype=dtype)

    def run(b):
        for t in (q, k, v):
            t.grad = None
        out = attention(q, k, v, cu, max(lens), window, backend=b)
        out.backward(grad)
        return out.float(), [t.grad.float() for t in (q, k, v)]

    try:
        out, grads = run(backend)
    except RuntimeError as e:  # a backend without kernels for this dtype says so; that is not a mismatch
        if dtype == torch.float32 and "dtype" in str(e).lower():
            pytest.skip(f"{backend} has no fp32 kernels here ({str(e).splitlines()[0][:120]})")
        raise
    ref, ref_grads = run("sdpa")
    out_tol, grad_tol = (2e-2, 5e-2) if dtype == torch.bfloat16 else (1e-3, 1e-2)
    assert (out - ref).abs().max().item() < out_tol
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < grad_tol
