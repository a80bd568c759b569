"""LoRA-Mixer attention experts: routed LoRA experts inside Wqkv and Wo (arXiv 2507.00029).

``MixtureLinear`` is an ``nn.Linear`` (its ``weight`` keeps the plain projection's key) plus E LoRA
experts: ``y = W x + Σ_j w_j s_j B_j A_j x`` with per-token weights w [T, E] from the block's router
(``model.routing.mixing_weights``: soft, topk or hardsoft). The experts' A and B are applied for all
experts in one matmul each (E·r is small); unselected experts have weight 0.

Which input routes which projection (``attn_experts.route``, chosen in ``model/modernalbert.py``'s
``Attention``): ``shared`` — one router on the block input gives the weights of Wqkv and Wo, so a PEFT
adapter (which adapts both) acts as one whole expert; ``per_projection`` — Wqkv is routed on the block
input, Wo by a second router (``router_o``) on the attention output, as the paper places its routers.
At inference ``eval_routing=topk`` serves a soft-trained mixer with top-K routing.

Plug-and-play regime: ``load_peft_adapters`` puts N frozen PEFT LoRA adapters (``adapter_config.json``
+ ``adapter_model.safetensors``) in as the N experts, and ``freeze_all_but_routers`` leaves only the
routers trainable. Adapters of different ranks are zero-padded to the largest (exact), each keeps its
own scale (α/r, or α/√r with rsLoRA).

Shapes: T tokens, E experts, R rank, In/Out the projection's sizes.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn as nn

from model.init import fill_


class MixtureLinear(nn.Linear):
    lora_scale: torch.Tensor  # [E] buffer: each expert's α/r (a PEFT import may set its own)

    def __init__(
        self, in_features: int, out_features: int, num_experts: int, rank: int, alpha: float, bias: bool = False
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)  # bias: the BERT-family block's projections
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_features, rank))
        self.register_buffer("lora_scale", torch.full((num_experts,), alpha / rank))
        self.alpha = alpha
        self.reset_lora()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """A ~ Kaiming-uniform (as PEFT), B = 0, scale α/r: at init the mixture equals the plain projection."""
        for e in range(self.lora_A.shape[0]):
            fill_(self.lora_A.data[e], nn.init.kaiming_uniform_, generator, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        with torch.no_grad():
            self.lora_scale.fill_(self.alpha / self.lora_A.shape[1])

    def forward(self, x_TI: torch.Tensor, weights_TE: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x_TI)
        if weights_TE is None:
            return y
        E, R, In = self.lora_A.shape
        u_TER = (x_TI @ self.lora_A.reshape(E * R, In).t()).view(-1, E, R)
        u_TER = u_TER * (weights_TE.to(x_TI.dtype) * self.lora_scale.to(x_TI.dtype))[:, :, None]
        B_OX = self.lora_B.permute(1, 0, 2).reshape(self.out_features, E * R)
        return y + u_TER.reshape(-1, E * R) @ B_OX.t()

    def expert_delta(self, j: int) -> torch.Tensor:
        """ΔW_j = s_j·B_j·A_j [Out, In]."""
        return self.lora_scale[j] * self.lora_B[j] @ self.lora_A[j]


class AdapterError(ValueError):
    """A PEFT adapter does not fit the model; the message names the adapter and the key."""


def _read_adapter(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg_path = os.path.join(path, "adapter_config.json")
    weights_path = os.path.join(path, "adapter_model.safetensors")
    for p in (cfg_path, weights_path):
        if not os.path.isfile(p):
            raise AdapterError(f"adapter {path!r}: missing {os.path.basename(p)}")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {path!r}: peft_type {cfg.get('peft_type')!r}, only LORA is supported")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(f"adapter {path!r}: fan_in_fan_out adapters are not supported")
    return cfg, load_file(weights_path)


def load_peft_adapters(model: nn.Module, adapter_dirs: list[str]) -> None:
    """Make adapter i the expert i of every ``MixtureLinear`` (strict: every key used, none missing)."""
    mixtures = {name: m for name, m in model.named_modules() if isinstance(m, MixtureLinear)}
    if not mixtures:
        raise AdapterError("the model has no attention experts (attn_experts.groups is empty)")
    E = next(iter(mixtures.values())).lora_A.shape[0]
    if len(adapter_dirs) != E:
        raise AdapterError(f"attn_experts.num_experts={E}: got {len(adapter_dirs)} adapters")
    for j, path in enumerate(adapter_dirs):
        cfg, sd = _read_adapter(path)
        unused = set(sd)
        for name, m in mixtures.items():
            keys = [f"base_model.model.{name}.lora_{x}.weight" for x in "AB"]
            missing = [k for k in keys if k not in sd]
            if missing:
                raise AdapterError(f"adapter {path!r}: no tensor {missing[0]!r}")
            A, B = sd[keys[0]], sd[keys[1]]
            r = A.shape[0]
            if A.shape[1] != m.in_features or B.shape != (m.out_features, r) or r > m.lora_A.shape[1]:
                raise AdapterError(
                    f"adapter {path!r}: {name} has A {tuple(A.shape)}, B {tuple(B.shape)}; the model expects "
                    f"A [r, {m.in_features}], B [{m.out_features}, r] with r <= {m.lora_A.shape[1]}"
                )
            with torch.no_grad():
                m.lora_A[j].zero_()
                m.lora_B[j].zero_()
                m.lora_A[j, :r] = A.to(m.lora_A.dtype)
                m.lora_B[j, :, :r] = B.to(m.lora_B.dtype)
                alpha = float(cfg.get("lora_alpha", r))
                m.lora_scale[j] = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            unused -= set(keys)
        if unused:
            raise AdapterError(f"adapter {path!r}: tensors that match no attention expert: {sorted(unused)[:3]}")


def freeze_all_but_routers(model: nn.Module) -> list[str]:
    """Plug-and-play: only the attention experts' routers stay trainable; returns their names."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("attn.router.weight", "attn.router_o.weight")))
        if p.requires_grad:
            trainable.append(name)
    return trainable
