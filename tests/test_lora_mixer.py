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
from model.routing import RoutingRecorder

peft = pytest.importorskip("peft")

TARGETS = r".*attn\.(Wqkv|Wo)"  # the attention projections only (ffn.Wo is not an attention expert)


def _base_cfg():
    return preset("tiny", vocab_size=300, mol=MoLConfig(groups=()))


def _save_peft_adapter(base_state: dict, path, r: int, alpha: int, seed: int, rslora: bool = False) -> dict:
    """Train-free stand-in for a task adapter: a PEFT LoRA with random B, saved by PEFT itself."""
    torch.manual_seed(seed)
    base = ModernAlbertForMaskedLM(_base_cfg())
    base.load_state_dict(base_state)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0, use_rslora=rslora)
    )
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
    cfg = dataclasses.replace(
        _base_cfg(),
        attn_experts=AttnExpertsConfig(groups=(0, 1), num_experts=2, top_k=1, rank=4, alpha=8, routing=routing),
    )
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
    assert m.lora_scale.tolist() == pytest.approx([8 / 4, 8 / 2**0.5])
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


def _routed_encoder(route: str, routing: str = "hardsoft", eval_routing: str = "same", seed: int = 0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        _base_cfg(),
        attn_experts=AttnExpertsConfig(
            groups=(0, 1),
            num_experts=3,
            top_k=1,
            rank=4,
            alpha=8,
            routing=routing,
            route=route,
            eval_routing=eval_routing,
        ),
    )
    model = ModernAlbertForMaskedLM(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MixtureLinear):
                m.lora_B.normal_(std=0.5)
    return model


def _batch():
    torch.manual_seed(1)
    return torch.randint(5, 300, (40,)), torch.tensor([0, 18, 40], dtype=torch.int32), 22


@pytest.mark.parametrize("route", ["shared", "per_projection"])
def test_each_projection_is_routed_on_the_input_the_route_option_names(route):
    """shared: Wo's weights come from the router on the block input; per_projection: Wo has its own router,
    which sees exactly Wo's input (the attention output)."""
    model = _routed_encoder(route)
    seen = {}

    def keep(name):
        def hook(mod, args):
            seen.setdefault(name, args[0].detach().clone())  # returns None: the input is left as it is

        return hook

    attn = model.model.groups[0].block.attn
    for name in ("router", "router_o", "Wqkv", "Wo"):
        if hasattr(attn, name):
            getattr(attn, name).register_forward_pre_hook(keep(name))
    recorder = RoutingRecorder()
    ids, cu, L = _batch()
    model.model(ids, cu, L, recorder=recorder)
    assert torch.equal(seen["router"], seen["Wqkv"])
    kinds = sorted({k.split(".")[1] for k in recorder.stats})
    if route == "shared":
        assert not hasattr(attn, "router_o") and kinds == ["attn"]
    else:
        assert torch.equal(seen["router_o"], seen["Wo"]) and not torch.equal(seen["router_o"], seen["Wqkv"])
        assert kinds == ["attn", "attn_o"]
        # both routers learn from the task loss
        h, _ = model.model(ids, cu, L)
        h.square().mean().backward()
        assert attn.router.weight.grad.abs().sum() > 0 and attn.router_o.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("route", ["shared", "per_projection"])
def test_forced_routing_equals_the_model_with_that_expert_folded_in(route):
    """Domain-forced routing (every token to expert j, weight 1) is the plain model with W + ΔW_j; the routers
    record their cross-entropy to the forced expert instead of the RSL."""
    model = _routed_encoder(route).eval()
    ids, cu, L = _batch()
    plain = ModernAlbertForMaskedLM(_base_cfg()).eval()
    for j in range(3):
        state = {k: v for k, v in model.state_dict().items() if "lora_" not in k and "router" not in k}
        for name, m in model.named_modules():
            if isinstance(m, MixtureLinear):
                state[name + ".weight"] = m.weight + m.expert_delta(j)
        plain.load_state_dict(state)
        recorder = RoutingRecorder()
        forced, _ = model.model(ids, cu, L, recorder=recorder, expert_ids_T=torch.full((40,), j))
        assert torch.allclose(forced, plain.model(ids, cu, L)[0], atol=1e-5), j
        assert set(recorder.aux_losses) == {"attn_route_ce"}
        assert recorder.aux_losses["attn_route_ce"].item() > 0


@pytest.mark.parametrize("route", ["shared", "per_projection"])
def test_router_supervision_leaves_the_routing_to_the_routers_and_teaches_them_the_target(route):
    """route_targets_T: the forward is the routed one (not forced), the routers' cross-entropy to the target
    expert is recorded next to the RSL, and a descent step on it moves every router towards the target."""
    model = _routed_encoder(route).eval()
    ids, cu, L = _batch()
    target_T = torch.full((40,), 2)
    free, _ = model.model(ids, cu, L)
    recorder = RoutingRecorder()
    supervised, _ = model.model(ids, cu, L, recorder=recorder, route_targets_T=target_T)
    assert torch.equal(free, supervised)
    assert set(recorder.aux_losses) == {"attn_rsl", "attn_route_ce"}
    routers = [p for n, p in model.named_parameters() if "router" in n]

    def route_ce() -> float:  # summed over the routed applications
        rec = RoutingRecorder()
        model.model(ids, cu, L, recorder=rec, route_targets_T=target_T)
        return float(rec.aux_losses["attn_route_ce"])

    before = route_ce()
    opt = torch.optim.SGD(routers, lr=0.1)
    opt.zero_grad()
    recorder.aux_losses["attn_route_ce"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)
    # the routers learn to read the hidden state; the experts are not trained to write their task into it
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if "router" not in n)
    opt.step()
    assert route_ce() < 0.95 * before


def test_eval_routing_topk_serves_a_soft_trained_mixer_with_top_k():
    soft = _routed_encoder("shared", routing="soft", eval_routing="topk")
    topk = _routed_encoder("shared", routing="topk")
    topk.load_state_dict(soft.state_dict())
    ids, cu, L = _batch()
    soft.eval(), topk.eval()
    assert torch.allclose(soft.model(ids, cu, L)[0], topk.model(ids, cu, L)[0], atol=1e-6)
    soft.train()  # training keeps the soft mixture
    soft_cfg_same = _routed_encoder("shared", routing="soft").train()
    soft_cfg_same.load_state_dict(soft.state_dict())
    assert torch.allclose(soft.model(ids, cu, L)[0], soft_cfg_same.model(ids, cu, L)[0], atol=1e-6)
    assert not torch.allclose(soft.model(ids, cu, L)[0], topk.train().model(ids, cu, L)[0], atol=1e-4)
