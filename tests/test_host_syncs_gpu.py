"""No device→host sync in the model's training forward and backward on CUDA (skipped cleanly without a GPU).

``torch.cuda.set_sync_debug_mode("error")`` raises at any synchronising call (``.item()``, ``.tolist()``,
``nonzero``, CUDA ``bincount``…), so these tests name the first sync left in the path. The CPU suite counts the
training loop's reads (``tests/test_train.py``) and checks the MoL fast path on CPU (``tests/test_routing.py``).
"""

from __future__ import annotations

import pytest
import torch

from conftest import FUSED_BACKENDS
from model.config import MoLConfig, preset
from model.modernalbert import ModernAlbertForMaskedLM
from model.mol import MoLFFN, grouped_mm_fits

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _mol(dtype) -> MoLFFN:
    torch.manual_seed(0)
    m = MoLFFN(256, 512, MoLConfig(groups=(0,), num_experts=8, top_k=2, rank=16, alpha=32)).cuda().to(dtype)
    with torch.no_grad():
        m.B1.normal_(std=0.05)
        m.B2.normal_(std=0.05)
    return m


def test_grouped_mol_in_bf16_uses_grouped_mm_without_a_sync_and_matches_the_per_expert_path():
    m = _mol(torch.bfloat16)
    x = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    r = m.router(x)
    assert grouped_mm_fits(x, m.A2)

    def run(fast: bool):
        x.grad = None
        m.zero_grad()
        m.grouped_ffn.grouped_mm = fast
        out = m.grouped(x, r.topk_idx_TK, r.topk_w_TK)
        out.float().square().sum().backward()
        return out.float(), x.grad.float(), m.B1.grad.float()

    want = run(False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run(True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 2e-2 * max(1.0, w.abs().max().item())


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_the_masked_lm_forward_and_backward_never_sync(backend):
    """The tiny preset (MoL on, router jitter on) in bf16 with a fused attention backend: one training
    forward + backward under the sync detector. The inputs are made first (host → device copies are allowed)."""
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=4000, attn_backend=backend)
    model = ModernAlbertForMaskedLM(cfg).cuda().to(torch.bfloat16).train()
    lens = [128, 64, 100, 3, 128]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    ids = torch.randint(5, cfg.vocab_size, (sum(lens),), device="cuda")
    positions = torch.arange(0, sum(lens), 7, device="cuda")
    labels = torch.randint(5, cfg.vocab_size, (len(positions),), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(ids, cu, max(lens), positions, labels)
        loss = out.mlm_loss + sum(out.aux_losses.values())
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
