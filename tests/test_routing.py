"""MoL grouped compute vs reference, router contract, auxiliary losses, LoRA-Mixer routing modes."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from model.config import MoLConfig
from model.lora_mixer import MixtureLinear
from model.mol import MoLFFN
from model.routing import (
    Routing,
    Router,
    RoutingRecorder,
    entropy,
    load_balance_loss,
    mixing_weights,
    routing_specialization_loss,
    topk_dense,
    z_loss,
)


_GROUPED_MM = F.grouped_mm  # the real one, for the spy in the parity test


def _mol(num_experts=8, top_k=2, seed=0, activation="geglu", bias=False) -> MoLFFN:
    torch.manual_seed(seed)
    m = MoLFFN(32, 48, MoLConfig(groups=(0,), num_experts=num_experts, top_k=top_k, rank=4, alpha=8), activation, bias)
    with torch.no_grad():
        if bias:
            m.Wi.bias.normal_(std=0.5)
            m.Wo.bias.normal_(std=0.5)
        m.B1.normal_(std=0.1)
        m.B2.normal_(std=0.1)
        m.router.weight.normal_(std=1.0)  # spread the routing over experts
    return m


# the pairs leave and rejoin token order by indexing (eager's default) or by permutations (compile's)
@pytest.mark.parametrize("permute", [False, True])
@pytest.mark.parametrize("grouped_mm", [True, False])  # one F.grouped_mm call per factor; a matmul per expert
@pytest.mark.parametrize("ffn", ["geglu", "gelu+bias"])  # ModernBERT's FFN; the BERT family's
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_grouped_mol_equals_the_reference_outputs_and_gradients(top_k, ffn, grouped_mm, permute, monkeypatch):
    m = _mol(top_k=top_k, activation=ffn.split("+")[0], bias="bias" in ffn).eval()
    m.grouped_ffn.grouped_mm = grouped_mm
    m.grouped_ffn.permute_pairs = permute
    calls = []
    monkeypatch.setattr(F, "grouped_mm", lambda *a, **k: calls.append(1) or _GROUPED_MM(*a, **k))
    x = torch.randn(200, 32, requires_grad=True)
    r = m.router(x)
    assert len(set(r.topk_idx_TK.reshape(-1).tolist())) == 8  # every expert gets tokens
    weights = torch.randn(200, 32)

    def run(fn):
        m.zero_grad()
        x.grad = None
        out = fn(x, m.router(x))
        (out * weights).sum().backward()
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()}

    out_g, dx_g, g_g = run(lambda x, r: m.grouped(x, r.topk_idx_TK, r.topk_w_TK))
    assert len(calls) == (2 if grouped_mm else 0)  # B1 and A2 (rank 4 and width 48: 16-byte aligned fp32)
    out_r, dx_r, g_r = run(m.reference)
    assert (out_g - out_r).abs().max().item() <= 1e-5
    assert_close(dx_g, dx_r, what="d/dx")
    for n in g_g:
        assert_close(g_g[n], g_r[n], what=n)


@pytest.mark.parametrize("permute", [False, True])
def test_grouped_mol_reads_nothing_on_the_host_and_handles_idle_experts(permute, monkeypatch):
    """The fast path's block ends stay on the device: no .tolist()/.item() in its forward or backward (each
    would be a device sync on GPU), also when experts get no token (their blocks are empty)."""
    m = _mol(top_k=1).eval()
    m.grouped_ffn.permute_pairs = permute
    x = torch.randn(64, 32, requires_grad=True)
    idx_TK = torch.randint(0, 3, (64, 1))  # experts 3..7 idle
    w_TK = torch.ones(64, 1)
    m.grouped_ffn.grouped_mm = False
    want = m.grouped(x, idx_TK, w_TK)
    (want.square().sum()).backward()
    want_dx = x.grad.clone()
    x.grad = None

    def forbidden(self, *a, **k):
        raise AssertionError("a host read in the grouped MoL fast path")

    m.grouped_ffn.grouped_mm = True
    with monkeypatch.context() as mp:
        for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
            mp.setattr(torch.Tensor, name, forbidden)
        got = m.grouped(x, idx_TK, w_TK)
        (got.square().sum()).backward()
    assert (got - want).abs().max().item() <= 1e-5
    assert_close(x.grad, want_dx, what="d/dx")


def test_top_k_weights_sum_to_one_and_pick_the_largest_probabilities():
    router = Router(16, 8, 3, jitter=0.0)
    r = router(torch.randn(100, 16))
    assert r.logits_TE.dtype == torch.float32
    assert torch.allclose(r.topk_w_TK.sum(-1), torch.ones(100))
    assert torch.equal(r.probs_TE.topk(3, dim=-1).indices, r.topk_idx_TK)
    assert torch.allclose(topk_dense(r).sum(-1), torch.ones(100))


def test_router_runs_in_fp32_and_jitters_only_in_training():
    router = Router(16, 4, 2, jitter=0.5)
    x = torch.randn(10, 16, dtype=torch.bfloat16)
    router.eval()
    assert torch.equal(router(x).logits_TE, router(x).logits_TE)
    assert router(x).probs_TE.dtype == torch.float32
    router.train()
    assert not torch.equal(router(x).logits_TE, router(x).logits_TE)


def test_load_balance_loss_on_a_hand_checked_case():
    # 4 tokens, 2 experts, top-1. Probabilities (rows): .9/.1, .8/.2, .3/.7, .6/.4
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    idx = probs.argmax(-1, keepdim=True)  # experts 0, 0, 1, 0
    r = Routing(probs.log(), probs, idx, torch.ones(4, 1))
    # f = (3/4, 1/4); P = mean probs = (0.65, 0.35); E·Σ f·P = 2·(0.4875 + 0.0875) = 1.15
    assert load_balance_loss(r).item() == pytest.approx(1.15, abs=1e-6)
    # perfectly balanced routing gives the minimum, 1
    flat = torch.full((4, 2), 0.5)
    assert load_balance_loss(
        Routing(flat.log(), flat, torch.tensor([[0], [1], [0], [1]]), torch.ones(4, 1))
    ).item() == pytest.approx(1.0)
    # z-loss: mean of logsumexp(logits)² = mean of 0² for log-probabilities
    assert z_loss(r).item() == pytest.approx(0.0, abs=1e-6)


def test_aux_loss_counts_exactly_the_tokens_it_is_given():
    """No padding exists in the unpadded model; the loss of a batch is that of its real tokens only."""
    m = _mol().eval()  # no jitter: the router is deterministic
    x = torch.randn(30, 32)
    rec = RoutingRecorder()
    m(x, layer=4, recorder=rec)
    r = m.router(x)
    assert rec.aux_losses["mol_load_balance"].item() == pytest.approx(load_balance_loss(r).item())
    # the statistics count T·k assignments, per layer the module ran at
    assert int(rec.stats["layer4.ffn"]["tokens_per_expert"].sum()) == 30 * 2
    # a recompute after the forward (activation checkpointing) adds nothing
    m(x, layer=4, recorder=rec.close())
    assert rec.aux_losses["mol_load_balance"].item() == pytest.approx(load_balance_loss(r).item())


def test_routing_modes_forward_and_backward_contract():
    torch.manual_seed(0)
    logits = torch.randn(20, 4)
    C = torch.randn(20, 4)  # a loss linear in the weights: its gradient does not depend on the forward value

    def weights_and_grad(mode):
        lg = logits.clone().requires_grad_(True)
        p = lg.softmax(-1)
        top_p, top_i = p.topk(2, -1)
        r = Routing(lg, p, top_i, top_p / top_p.sum(-1, keepdim=True))
        w = mixing_weights(r, mode)
        (w * C).sum().backward()
        return w.detach(), lg.grad

    w_soft, g_soft = weights_and_grad("soft")
    w_topk, g_topk = weights_and_grad("topk")
    w_hs, g_hs = weights_and_grad("hardsoft")
    assert torch.equal(w_hs, w_topk)  # forward: hard top-k
    assert torch.allclose(g_hs, g_soft, atol=1e-7)  # backward: the soft probabilities'
    assert not torch.allclose(g_topk, g_soft)
    assert ((w_topk > 0).sum(-1) == 2).all() and torch.allclose(w_soft.sum(-1), torch.ones(20))


def test_hardsoft_mixture_linear_forward_equals_topk():
    torch.manual_seed(0)
    lin = MixtureLinear(8, 12, num_experts=4, rank=2, alpha=4)
    with torch.no_grad():
        lin.lora_B.normal_()
    router = Router(8, 4, 2, 0.0)
    x = torch.randn(10, 8)
    r = router(x)
    y_hs = lin(x, mixing_weights(r, "hardsoft"))
    y_topk = lin(x, mixing_weights(r, "topk"))
    assert torch.allclose(y_hs, y_topk, atol=1e-6)
    # and the mixture is W x + Σ_j w_j s B_j A_j x
    w = mixing_weights(r, "topk")
    expected = x @ lin.weight.t() + sum(w[:, j : j + 1] * (x @ lin.expert_delta(j).t()) for j in range(4))
    assert torch.allclose(y_topk, expected, atol=1e-5)


def test_routing_specialization_loss_terms_and_sign():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    r = Routing(probs.log(), probs, probs.topk(1, -1).indices, torch.ones(2, 1))
    balance = 3 * (torch.tensor([0.5, 0.5, 0.0]) * probs.mean(0)).sum()
    h = entropy(probs).mean()
    assert routing_specialization_loss(r, 0.1, 0.0).item() == pytest.approx(0.1 * balance.item())
    # the paper's printed Eq. 5 (default): − λ·H; the sharpening variant: + λ·H
    assert routing_specialization_loss(r, 0.0, 0.5).item() == pytest.approx(-0.5 * h.item())
    assert routing_specialization_loss(r, 0.0, 0.5, "maximise").item() == pytest.approx(-0.5 * h.item())
    assert routing_specialization_loss(r, 0.0, 0.5, "minimise").item() == pytest.approx(0.5 * h.item())
    with pytest.raises(ValueError, match="rsl_entropy='up': allowed: maximise, minimise"):
        routing_specialization_loss(r, 0.0, 0.5, "up")
    assert entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(math.log(4))


@pytest.mark.parametrize("goal, entropy_rises", [("maximise", True), ("minimise", False)])
def test_rsl_gradient_moves_the_routing_entropy_in_the_chosen_direction(goal, entropy_rises):
    """The direction, not only the value: a gradient-descent step on the RSL's entropy term raises each
    token's routing entropy by default (the paper's sign) and lowers it with the sharpening variant."""
    torch.manual_seed(0)
    router = Router(16, 4, 2, 0.0)
    with torch.no_grad():
        router.weight.normal_(std=1.0)  # far from uniform, so the entropy can move both ways
    x = torch.randn(64, 16)
    lam = 0.5
    loss = routing_specialization_loss(router(x), 0.0, lam, goal)
    (grad,) = torch.autograd.grad(loss, router.weight)
    # the gradient is ∓λ·∇H exactly
    w = router.weight.detach().clone().requires_grad_(True)
    (grad_h,) = torch.autograd.grad(entropy(F.linear(x, w).softmax(-1)).mean(), w)
    assert torch.allclose(grad, (-lam if goal == "maximise" else lam) * grad_h, atol=1e-6)
    h_before = entropy(router(x).probs_TE).mean()
    with torch.no_grad():
        router.weight -= 0.05 * grad
    h_after = entropy(router(x).probs_TE).mean()
    assert (h_after > h_before + 1e-4) if entropy_rises else (h_after < h_before - 1e-4), (h_before, h_after)


def test_attn_experts_config_checks_rsl_and_routing_fields():
    from config_check import ConfigError
    from model.config import AttnExpertsConfig

    assert AttnExpertsConfig().rsl_entropy == "maximise" and AttnExpertsConfig().route == "shared"
    for field, value, msg in [
        ("rsl_lambda", -0.1, "attn_experts.rsl_lambda=-0.1: must be >= 0"),
        ("rsl_entropy", "sharpen", "attn_experts.rsl_entropy='sharpen': allowed: maximise, minimise"),
        ("route", "both", "attn_experts.route='both': allowed: shared, per_projection"),
        ("eval_routing", "hard", "attn_experts.eval_routing='hard': allowed: same, soft, topk"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            AttnExpertsConfig(groups=(0,), **{field: value}).validate(2)


@pytest.mark.parametrize("ffn", ["geglu", "gelu+bias"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_slot_masked_mol_equals_the_reference_outputs_and_gradients(top_k, ffn):
    """mol.compute=slots: a dense matmul per routing slot over every expert's factors, masked to the slot's
    expert, gives the reference's output and gradients (fp32), with no host read."""
    m = _mol(top_k=top_k, activation=ffn.split("+")[0], bias="bias" in ffn).eval()
    m.grouped_ffn.compute = "slots"
    x = torch.randn(200, 32, requires_grad=True)
    weights = torch.randn(200, 32)

    def run(fn):
        m.zero_grad()
        x.grad = None
        r = m.router(x)
        out = fn(x, r)
        (out * weights).sum().backward()
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()}

    out_s, dx_s, g_s = run(lambda x, r: m.grouped(x, r.topk_idx_TK, r.topk_w_TK))
    out_r, dx_r, g_r = run(m.reference)
    assert (out_s - out_r).abs().max().item() <= 1e-5
    assert_close(dx_s, dx_r, what="d/dx")
    for n in g_s:
        assert_close(g_s[n], g_r[n], what=n)


def test_slot_masked_and_grouped_mol_agree_in_bf16():
    m = _mol(top_k=2).eval().to(torch.bfloat16)
    x = torch.randn(256, 32, dtype=torch.bfloat16)
    r = m.router(x)
    grouped = m.grouped(x, r.topk_idx_TK, r.topk_w_TK)
    m.grouped_ffn.compute = "slots"
    slots = m.grouped(x, r.topk_idx_TK, r.topk_w_TK)
    assert (slots.float() - grouped.float()).abs().max().item() <= 2e-2 * grouped.float().abs().max().item()
