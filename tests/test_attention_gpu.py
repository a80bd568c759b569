"""Fused attention backends vs the SDPA reference (CUDA only; skipped cleanly without a GPU)."""

from __future__ import annotations

import pytest
import torch

from conftest import FUSED_BACKENDS
from model.attention import attention, resolve_backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _varlen_inputs(dtype):
    torch.manual_seed(0)
    lens = [300, 17, 64, 65, 500, 1]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lens), 8, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(sum(lens), 8, 64, device="cuda", dtype=dtype)
    return lens, cu, (q, k, v), grad


def _run(backend, lens, cu, qkv, grad, window):
    for t in qkv:
        t.grad = None
    out = attention(*qkv, cu, max(lens), window, backend=backend)
    out.backward(grad)
    return out.float(), [t.grad.float() for t in qkv]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("window", [None, 64])
def test_fused_backend_matches_sdpa(backend, window):
    lens, cu, qkv, grad = _varlen_inputs(torch.bfloat16)
    out, grads = _run(backend, lens, cu, qkv, grad, window)
    ref, ref_grads = _run("sdpa", lens, cu, qkv, grad, window)
    out_tol, grad_tol = 2e-2, 5e-2
    assert (out - ref).abs().max().item() < out_tol
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < grad_tol


def _math_reference(q, k, v, lens, window):
    """Per-segment softmax(q k^T / sqrt(d)) v in float64 on the CPU, with the |i - j| <= window band."""
    outs, start = [], 0
    for n in lens:
        qs, ks, vs = (t[start : start + n].double().cpu().transpose(0, 1) for t in (q, k, v))  # [H, n, Dh]
        s = qs @ ks.transpose(1, 2) / qs.shape[-1] ** 0.5
        if window is not None:
            i = torch.arange(n)
            s = s.masked_fill((i[:, None] - i[None, :]).abs() > window, float("-inf"))
        outs.append((s.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("window", [None, 64])
def test_fp32_on_cuda_runs_sdpa_and_matches_the_exact_reference(window):
    """fp32 is what a GPU run with parallel.precision=fp32 computes: the fused kernels are bf16/fp16 only,
    so ``auto`` must pick SDPA, asking for a fused backend must fail clearly, and SDPA's CUDA kernels must
    give the exact attention (forward and, through autograd of the reference, backward)."""
    lens, cu, qkv, grad = _varlen_inputs(torch.float32)
    assert resolve_backend("auto", qkv[0]) == "sdpa"
    for fused in ("flash_attn", "torch_varlen"):
        with pytest.raises(RuntimeError, match="fp16/bf16"):
            attention(*qkv, cu, max(lens), window, backend=fused)
    out, grads = _run("auto", lens, cu, qkv, grad, window)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in qkv]
    ref = _math_reference(*ref_in, lens, window)
    ref.backward(grad.double().cpu())
    assert (out.double().cpu() - ref).abs().max().item() < 1e-4
    for g, r in zip(grads, ref_in):
        assert (g.double().cpu() - r.grad).abs().max().item() < 1e-3
