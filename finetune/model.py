"""Sequence classifiers on a pretrained ModernALBERT encoder, with LoRA adapters in PEFT format.

``TaskClassifier`` = the native encoder (``.model``, the same module path as in
``ModernAlbertForMaskedLM``, so adapter keys match the LoRA-Mixer's) + one head per task
(``model.classification.ClassificationHead``, the head the HF export and the GLUE runner use, on the
mean of the example's last hidden states or on its [CLS] state). Tasks in a batch may differ: each example uses its own
task's head.

``add_lora`` replaces chosen projections (``attn.Wqkv``, ``attn.Wo``, ``ffn.Wi``, ``ffn.Wo``) of every
block by ``LoRALinear`` (W x + s·B A x, s = α/r; B = 0 at start); ``save_adapter`` writes
``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's key names
(``base_model.model.<module>.lora_A.weight``), which ``model.lora_mixer.load_peft_adapters`` and
``load_adapter`` read back. A recursive block is shared by its G applications, so is its adapter.

Shapes: T tokens (flat, unpadded), B examples, D hidden, C classes.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.classification import POOLINGS, ClassificationHead, pool
from model.config import ModelConfig
from model.lora_mixer import MixtureLinear
from model.modernalbert import ModernAlbertModel
from model.routing import RoutingRecorder

TARGETS = ("attn.Wqkv", "attn.Wo", "ffn.Wi", "ffn.Wo")


class LoRALinear(nn.Linear):
    """nn.Linear + one LoRA adapter; ``weight`` keeps the plain projection's key."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=False)
        self.weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank

    def forward(self, x: torch.Tensor, *_) -> torch.Tensor:
        return F.linear(x, self.weight) + (x @ self.lora_A.t()) @ (self.scale * self.lora_B).t()


class TaskClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, tasks: dict[str, int], pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: allowed: {', '.join(POOLINGS)}")
        self.cfg, self.pooling = cfg, pooling
        self.model = ModernAlbertModel(cfg)
        self.tasks = list(tasks)
        self.heads = nn.ModuleDict({t: ClassificationHead(cfg.hidden_size, n, cfg.norm_eps) for t, n in tasks.items()})
        for head in self.heads.values():
            head.init_weights(cfg.init_std)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                task_ids: torch.Tensor, recorder: RoutingRecorder | None = None) -> list[torch.Tensor]:
        """Logits per example (a list: tasks have different numbers of classes); ``recorder`` receives
        the routed modules' auxiliary losses."""
        h_TD, _ = self.model(input_ids, cu_seqlens, max_seqlen, recorder=recorder)
        pooled_BD = pool(h_TD, cu_seqlens, self.pooling)
        out: list[torch.Tensor | None] = [None] * len(task_ids)
        for t, name in enumerate(self.tasks):
            rows = (task_ids == t).nonzero().squeeze(1)
            if len(rows):
                logits = self.heads[name](pooled_BD[rows])
                for i, r in enumerate(rows.tolist()):
                    out[r] = logits[i]
        return out  # type: ignore[return-value]


def block_linears(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """{"model.groups.g.block.attn.Wqkv": module, …} for the chosen projections of every block."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name.endswith(f"block.{t}") for t in targets):
            out[name] = m
    return out


def add_lora(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"--lora-targets {','.join(bad)}: allowed: {', '.join(TARGETS)}")
    names = []
    for name, m in block_linears(model, targets).items():
        if isinstance(m, MixtureLinear):
            raise ValueError(f"{name} already carries LoRA-Mixer experts")
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, LoRALinear(m, rank, alpha))
        names.append(name)
    return names


def save_adapter(model: nn.Module, out_dir: str, task_type: str = "SEQ_CLS") -> None:
    from safetensors.torch import save_file

    loras = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not loras:
        raise ValueError("the model has no LoRA adapter")
    first = next(iter(loras.values()))
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for n, m in loras.items():
        tensors[f"base_model.model.{n}.lora_A.weight"] = m.lora_A.detach().contiguous()
        tensors[f"base_model.model.{n}.lora_B.weight"] = m.lora_B.detach().contiguous()
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": task_type, "r": first.rank, "lora_alpha": first.alpha,
           "target_modules": sorted({n.split("block.", 1)[1] for n in loras}), "lora_dropout": 0.0,
           "bias": "none", "fan_in_fan_out": False, "use_rslora": False}
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)


def load_adapter(model: nn.Module, adapter_dir: str) -> None:
    """Add the adapter's LoRA layers to ``model`` and load its tensors (strict)."""
    from safetensors.torch import load_file

    with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    add_lora(model, tuple(cfg["target_modules"]), cfg["r"], float(cfg["lora_alpha"]))
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    loras = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    expected = {f"base_model.model.{n}.lora_{x}.weight" for n in loras for x in "AB"}
    if set(sd) != expected:
        raise ValueError(f"adapter {adapter_dir}: keys do not match the model "
                         f"(missing {sorted(expected - set(sd))[:2]}, unexpected {sorted(set(sd) - expected)[:2]})")
    with torch.no_grad():
        for n, m in loras.items():
            m.lora_A.copy_(sd[f"base_model.model.{n}.lora_A.weight"])
            m.lora_B.copy_(sd[f"base_model.model.{n}.lora_B.weight"])
