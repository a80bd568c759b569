"""LoRA-Mixer plug-and-play: PEFT adapters saved by the `peft` library become frozen experts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model.config import AttnExpertsConfig, MoLConfig, preset
from model.lora_mixer import AdapterError, MixtureLinear, freeze_all_but_routers, load_peft_adapters
from model.losses import combine_losses
from model.modernalbert import ModernAlbertForMaskedLM

peft = pytest.importorskip("peft")

TARGETS = r".*attn\.(Wqkv|Wo)"  # the attention projections only (ffn.Wo is not an attention expert)


def _base_cfg():
    return preset("tiny", vocab_size=300, mol=MoLConfig(groups=()))


def _save_peft_adapter(base_state: dict, path, r: int, alpha: int, seed: int, rslora: bool = False) -> dict:
    """Train-free stand-in for a task adapter: a PEFT LoRA with random B, saved by PEFT itself."""
    torch.manual_seed(seed)
    base = ModernAlbertForMaskedLM(_base_cfg())
    base.load_state_dict(base_state)
    model = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS,
                                                      lora_dropout=0.0, use_rslora=rslora))
    deltas = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
            with torch.no_grad():
                module.lora_B["default"].weight.normal_(std=0.2)
            deltas[name.removeprefix("base_model.model.")] = module.get_delta_weight("default").detach().clone()
    model.save_pretrained(str(path))
    return deltas


@pytest.fixture()
def adapters(tmp_path):
    torch.manual_seed(0)
    base_state = ModernAlbertForMaskedLM(_base_cfg()).state_dict()
    a = _save_peft_adapter(base_state, tmp_path / "task_a", r=4, alpha=8, seed=1)
    b = _save_peft_adapter(base_state, tmp_path / "task_b", r=2, alpha=8, seed=2, rslora=True)
    return base_state, [str(tmp_path / "task_a"), str(tmp_path / "task_b")], [a, b]


def _mixer(base_state, routing="topk"):
    cfg = dataclasses.replace(_base_cfg(), attn_experts=AttnExpertsConfig(groups=(0, 1), num_experts=2, top_k=1,
                                                                          rank=4, alpha=8, routing=routing))
    model = ModernAlbertForMaskedLM(cfg)
    missing, unexpected = model.load_state_dict(base_state, strict=False)
    assert not unexpected and all("lora_" in k or "router" in k for k in missing)
    return model


def test_loaded_expert_delta_equals_peft_definition(adapters):
    base_state, dirs, deltas = adapters
    model = _mixer(base_state)
    load_peft_adapters(model, dirs)
    mixtures = {n: m for n, m in model.named_modules() if isinstance(m, MixtureLinear)}
    assert len(mixtures) == 4  # Wqkv and Wo of both groups
    assert all(d.abs().sum() > 0 for adapter in deltas for d in adapter.values())
    for j in range(2):
        for name, m in mixtures.items():
            assert torch.allclose(m.expert_delta(j), deltas[j][name], atol=1e-6), (j, name)
    # scale s = α/r for the plain adapter, α/√r for the rsLoRA one
    m = next(iter(mixtures.values()))
    assert m.lora_scale.tolist() == pytest.approx([8 / 4, 8 / 2 ** 0.5])
    cfg = json.load(open(f"{dirs[0]}/adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4


def test_expert_output_equals_the_peft_model_output(adapters, tmp_path):
    base_state, dirs, _ = adapters
    model = _mixer(base_state).eval()
    load_peft_adapters(model, dirs)
    base = ModernAlbertForMaskedLM(_base_cfg())
    base.load_state_dict(base_state)
    ref = peft.PeftModel.from_pretrained(base, dirs[0]).eval()
    x = torch.randn(9, 64)
    for name, m in model.named_modules():
        if isinstance(m, MixtureLinear):
            one_hot = torch.zeros(9, 2)
            one_hot[:, 0] = 1.0
            ref_module = ref.base_model.model.get_submodule(name)
            assert torch.allclose(m(x, one_hot), ref_module(x), atol=1e-5), name


def test_plug_and_play_trains_only_the_routers(adapters):
    base_state, dirs, _ = adapters
    torch.manual_seed(0)
    model = _mixer(base_state, routing="hardsoft")
    load_peft_adapters(model, dirs)
    trainable = freeze_all_but_routers(model)
    assert trainable == ["model.groups.0.block.attn.router.weight", "model.groups.1.block.attn.router.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    routers = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 300, (64,))
    cu = torch.tensor([0, 30, 64], dtype=torch.int32)
    pos = torch.arange(0, 64, 3)
    for _ in range(3):
        out = model(ids, cu, 34, pos, ids[pos])
        assert "attn_rsl" in out.aux_losses
        combine_losses(model.cfg, out.mlm_loss, out.aux_losses).backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, routers[n]), n


def test_adapter_mismatches_are_named(adapters, tmp_path):
    base_state, dirs, _ = adapters
    model = _mixer(base_state)
    with pytest.raises(AdapterError, match="num_experts=2: got 1 adapters"):
        load_peft_adapters(model, dirs[:1])
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        load_peft_adapters(model, [dirs[0], str(tmp_path)])
    with pytest.raises(AdapterError, match="no attention experts"):
        load_peft_adapters(ModernAlbertForMaskedLM(_base_cfg()), dirs)
