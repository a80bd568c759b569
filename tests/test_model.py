"""ModernALBERT on one device: unpadded parity, recursion, presets, config errors, training smoke test."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from model.attention import apply_rotary, attention
from config_check import ConfigError
from model.config import BERT_BLOCK, AttnExpertsConfig, ModelConfig, MoLConfig, preset
from model.flops import count_parameters
from model.losses import combine_losses
from model.modernalbert import ModernAlbertForMaskedLM, model_inputs
from model.mol import DenseFFN, MoLFFN

torch.set_default_dtype(torch.float32)


def _tiny(**kw) -> ModelConfig:
    return preset("tiny", vocab_size=300, **kw)


def _random_lora(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every LoRA B a non-zero value so experts differ from the shared weights."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith((".B1", ".B2", "lora_B")):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _stream(doc_lens: list[int], vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (sum(doc_lens),), generator=g)
    cu = torch.tensor([0] + list(torch.tensor(doc_lens).cumsum(0)), dtype=torch.int32)
    return ids, cu, max(doc_lens)


def padded_reference(model: ModernAlbertForMaskedLM, ids: torch.Tensor, doc_lens: list[int]) -> torch.Tensor:
    """The encoder on a padded [N, L] batch with explicit masked-softmax attention; returns [T, D].

    Written independently of the unpadded path (no cu_seqlens, no SDPA), reusing only the weights.
    """
    cfg, enc = model.cfg, model.model
    N, L, D, H, Dh = len(doc_lens), max(doc_lens), cfg.hidden_size, cfg.num_heads, cfg.head_dim
    valid = torch.arange(L)[None, :] < torch.tensor(doc_lens)[:, None]  # [N, L]
    tok = torch.zeros(N, L, dtype=torch.long)
    tok[valid] = ids
    pos = torch.arange(L)
    x = enc.embeddings(tok, pos.expand(N, L))
    post = cfg.norm_position == "post"
    for layer in range(cfg.num_layers):
        block = enc.groups[layer // cfg.group_depth].block
        is_global = cfg.is_global(layer)
        h = x if layer == 0 or post else block.attn_norm(x)
        q, k, v = block.attn.Wqkv(h).view(N, L, 3, H, Dh).unbind(2)
        if cfg.position_embedding == "rope":
            theta = cfg.rope_theta_global if is_global else cfg.rope_theta_local
            inv = 1.0 / theta ** (torch.arange(0, Dh, 2).float() / Dh)
            ang = torch.outer(pos.float(), inv)
            cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
            q = torch.stack([apply_rotary(q[n], cos, sin) for n in range(N)])
            k = torch.stack([apply_rotary(k[n], cos, sin) for n in range(N)])
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(Dh)
        allowed = valid[:, None, None, :].expand(N, 1, L, L)
        if not is_global:
            allowed = allowed & ((pos[:, None] - pos[None, :]).abs() <= cfg.local_window // 2)
        allowed = allowed | ((~valid)[:, None, :, None] & (pos == 0))  # padding rows: any finite row, dropped later
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = torch.einsum("nhqk,nkhd->nqhd", probs, v).reshape(N, L, D)
        x = x + block.attn.Wo(o)
        if post:  # BERT: norm after each residual add
            x = block.attn_norm(x)
            out = x.clone()
            out[valid] = block.ffn_norm(x[valid] + block.ffn(x[valid], layer))
            x = out
            continue
        flat = block.ffn_norm(x)[valid]  # FFN/MoL on real tokens only, as routing must never see padding
        out = x.clone()
        out[valid] = x[valid] + block.ffn(flat, layer)
        x = out
    return enc.final_norm(x)[valid]


@pytest.mark.parametrize("family", [False, True])
@pytest.mark.parametrize("mol", [False, True])
@pytest.mark.parametrize("window", [128, 8])
def test_unpadded_forward_and_grads_equal_the_padded_reference(mol, window, family):
    torch.manual_seed(0)
    cfg = _tiny(local_window=window, mol=MoLConfig(groups=(1,) if mol else ()), **(BERT_BLOCK if family else {}))
    model = ModernAlbertForMaskedLM(cfg).eval()
    _random_lora(model)
    with torch.no_grad():  # biases start at zero: give them values, so the test sees where each is added
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.1)
    doc_lens = [7, 40, 150, 3, 96, 40, 7]  # several documents, some longer than the windows, some of equal length
    ids, cu, max_len = _stream(doc_lens, cfg.vocab_size)
    weights = torch.randn(sum(doc_lens), cfg.hidden_size)

    out, _ = model.model(ids, cu, max_len)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = padded_reference(model, ids, doc_lens)
    (ref * weights).sum().backward()

    assert (out - ref).abs().max().item() <= 1e-5
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert_close(grads[n], p.grad, what=n)


def test_attention_never_crosses_documents():
    torch.manual_seed(0)
    cfg = _tiny()
    model = ModernAlbertForMaskedLM(cfg).eval()
    ids, cu, m = _stream([30, 50], cfg.vocab_size)
    both, _ = model.model(ids, cu, m)
    first, _ = model.model(ids[:30], torch.tensor([0, 30], dtype=torch.int32), 30)
    ids2 = ids.clone()
    ids2[30:] = torch.randint(5, cfg.vocab_size, (50,))  # change the second document only
    changed, _ = model.model(ids2, cu, m)
    assert torch.allclose(both[:30], first, atol=1e-6)
    assert torch.equal(both[:30], changed[:30])


def test_local_window_is_used_by_local_layers_only():
    torch.manual_seed(0)
    q, k, v = (torch.randn(40, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 40], dtype=torch.int32)
    local = attention(q, k, v, cu, 40, window=4, backend="sdpa")
    full = attention(q, k, v, cu, 40, window=None, backend="sdpa")
    # token 0 sees keys 0..4: perturbing key 10 changes only the global result
    k2 = k.clone()
    k2[10] += 5
    assert torch.equal(attention(q, k2, v, cu, 40, window=4, backend="sdpa")[0], local[0])
    assert not torch.allclose(attention(q, k2, v, cu, 40, window=None, backend="sdpa")[0], full[0])
    cfg = _tiny()
    assert [cfg.is_global(i) for i in range(4)] == [True, False, False, True]


def test_recursion_shares_weights_across_applications():
    cfg = dataclasses.replace(_tiny(), group_depth=3)
    model = ModernAlbertForMaskedLM(cfg)
    assert len(model.model.groups) == 2 and cfg.num_layers == 6
    # one block per group; group 0's keeps an attention norm for its layers 1 and 2, layer 0 skips it
    blocks = [m for m in model.modules() if m.__class__.__name__ == "Block"]
    assert len(blocks) == 2 and blocks[0].attn_norm is not None
    single = ModernAlbertForMaskedLM(dataclasses.replace(cfg, group_depth=1))
    assert single.model.groups[0].block.attn_norm is None
    # same unique parameters whatever G is (only the attention norm of group 0 differs)
    n3 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in single.parameters())
    assert n3 - n1 == cfg.hidden_size


def test_mol_at_init_equals_the_plain_ffn():
    torch.manual_seed(0)
    cfg = MoLConfig(groups=(0,), num_experts=4, top_k=2, rank=4, alpha=8)
    mol = MoLFFN(16, 24, cfg)
    plain = DenseFFN(16, 24)
    plain.load_state_dict({"Wi.weight": mol.Wi.weight, "Wo.weight": mol.Wo.weight})
    x = torch.randn(50, 16)
    assert (mol(x) - plain(x)).abs().max().item() <= 1e-6


def test_mlm_head_is_tied_to_the_factorised_embedding():
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(_tiny())
    h = torch.randn(5, 64)
    expected = model.head(h) @ model.decoder_weight().t() + model.decoder_bias
    assert torch.allclose(model.logits(h), expected, atol=1e-5)
    assert not any("decoder.weight" in n for n, _ in model.named_parameters())


def test_sparse_prediction_returns_loss_accuracy_and_aux_losses():
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(_tiny())
    ids, cu, m = _stream([20, 30], 300)
    pos = torch.tensor([1, 5, 22, 40])
    out = model(ids, cu, m, pos, ids[pos])
    assert out.logits.shape == (4, 300) and out.num_masked == 4
    assert torch.allclose(out.mlm_loss, F.cross_entropy(out.logits, ids[pos]))
    assert set(out.aux_losses) == {"mol_load_balance", "mol_z"}
    expected = out.mlm_loss + 0.01 * out.aux_losses["mol_load_balance"] + 1e-3 * out.aux_losses["mol_z"]
    assert torch.allclose(combine_losses(model.cfg, out.mlm_loss, out.aux_losses), expected)
    # scales: a micro-batch's share of a global mean
    assert torch.allclose(
        combine_losses(model.cfg, out.mlm_loss, out.aux_losses, task_scale=0.5, aux_scale=0.25),
        0.5 * out.mlm_loss + 0.25 * (expected - out.mlm_loss),
    )
    stats = out.routing_stats
    assert list(stats) == ["layer2.ffn", "layer3.ffn"]  # group 1 = layers 2 and 3, routed separately
    assert int(stats["layer2.ffn"]["tokens_per_expert"].sum()) == 50 * 2


def test_initialising_unit_by_unit_from_the_meta_device_equals_initialising_whole():
    """What pretrain/parallelize.py does per FSDP unit: same weights as one init_weights call, in any order."""
    cfg = _tiny()
    whole = ModernAlbertForMaskedLM(cfg)
    whole.init_weights(seed=7)
    with torch.device("meta"):
        parts = ModernAlbertForMaskedLM(cfg)
    parts.to_empty(device="cpu")
    for g in reversed(range(cfg.num_groups)):
        parts.init_weights(seed=7, select=lambda n, g=g: n.startswith(f"model.groups.{g}"))
    parts.init_weights(seed=7, select=lambda n: not n.startswith("model.groups."))
    ref = {k: v.clone() for k, v in whole.state_dict().items()}
    for k, v in parts.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # a different seed gives different weights; torch.manual_seed still decides the default
    whole.init_weights(seed=8)
    assert not torch.equal(
        whole.state_dict()["model.groups.0.block.ffn.Wi.weight"], ref["model.groups.0.block.ffn.Wi.weight"]
    )
    torch.manual_seed(3)
    a = ModernAlbertForMaskedLM(cfg).state_dict()
    torch.manual_seed(3)
    b = ModernAlbertForMaskedLM(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_presets_have_the_advertised_sizes():
    assert count_parameters(preset("tiny"))["total"] < 3_000_000
    assert abs(count_parameters(preset("50m"))["total"] / 50e6 - 1) <= 0.05
    assert abs(count_parameters(preset("120m"))["total"] / 120e6 - 1) <= 0.05
    c = preset("120m")
    assert (c.num_layers, c.mol.groups, c.hidden_size, c.intermediate_size) == (27, (2, 3, 4, 5), 1024, 2624)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(num_heads=5), "num_heads=5: must divide hidden_size=64"),
        (dict(attn_backend="xformers"), "attn_backend='xformers': allowed: auto, sdpa, flash_attn, torch_varlen"),
        (dict(mol=MoLConfig(groups=(2,))), "mol.groups=(2,): entries must be in [0, num_groups=2)"),
        (dict(mol=MoLConfig(groups=(1,), top_k=9)), "mol.top_k=9: must be in [1, num_experts=8]"),
        (dict(attn_experts=AttnExpertsConfig(groups=(0,), routing="dense")), "attn_experts.routing='dense'"),
        (dict(local_window=7), "local_window=7: must be even"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        preset("tiny", **overrides)
    assert message in str(e.value)
    with pytest.raises(ConfigError, match="preset='7b': allowed: tiny, 50m, 120m"):
        preset("7b")


def test_config_round_trips_through_a_dict():
    cfg = preset("50m", attn_experts=AttnExpertsConfig(groups=(1,), routing="topk"))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config fields: \\['hiden_size'\\]"):
        ModelConfig.from_dict({"hiden_size": 3})


@pytest.mark.slow
@pytest.mark.parametrize("mol_groups", [(), (1,)])
def test_tiny_model_learns_on_the_shipped_corpus(shards_dir, mol_groups):
    from pretrain.data import LoaderConfig, PretrainLoader

    torch.manual_seed(0)
    loader = PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=16, num_workers=0))
    model = ModernAlbertForMaskedLM(
        preset("tiny", vocab_size=loader.index.vocab_size, mol=MoLConfig(groups=mol_groups))
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _, batch in zip(range(40), loader):
        out = model(**model_inputs(batch))
        combine_losses(model.cfg, out.mlm_loss, out.aux_losses).backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.mlm_loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > math.log(loader.index.vocab_size) - 0.5  # starts near chance
    assert last < first - 1.0, losses
    if mol_groups:
        assert any(n.endswith(".B1") and p.abs().sum() > 0 for n, p in model.named_parameters())
