"""Sequence classifiers on a pretrained ModernALBERT encoder, with LoRA adapters in PEFT format.

``TaskClassifier`` = the native encoder (``.model``, the same module path as in
``ModernAlbertForMaskedLM``, so adapter keys match the LoRA-Mixer's) + one head per task
(``model.classification.ClassificationHead``, the head the HF export and the GLUE runner use, on the
mean of the example's last hidden states or on its [CLS] state; one output for a regression task). Tasks in a batch
may differ: each example uses its own
task's head.

``add_block_lora`` puts PEFT LoRA layers (``peft.inject_adapter_in_model``: W x + s·B A x, s = α/r; B = 0 at
start) on chosen projections (``attn.Wqkv``, ``attn.Wo``, ``ffn.Wi``, ``ffn.Wo``) of every block;
``save_adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT saves them
(``base_model.model.<module>.lora_A.weight``), which ``model.lora_mixer.load_peft_adapters`` and
``load_adapter`` read back. A recursive block is shared by its G applications, so is its adapter.
LoRA-Mixer's routed experts (``model/lora_mixer.py``) stay the project's own: ``save_mixer`` writes a mixer's
encoder (its experts and routers in the plain projections' model) as a native model directory, which
``tools/merge_mixer.py`` turns into one task's classifier, routed or with the experts folded in.

Shapes: T tokens (flat, unpadded), B examples, D hidden, C classes.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from model.classification import POOLINGS, ClassificationHead, pool
from model.config import ModelConfig
from model.lora_mixer import MixtureLinear
from model.modernalbert import ModernAlbertModel
from model.routing import RoutingRecorder

TARGETS = ("attn.Wqkv", "attn.Wo", "ffn.Wi", "ffn.Wo")


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

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        task_ids: torch.Tensor,
        recorder: RoutingRecorder | None = None,
        expert_ids_T: torch.Tensor | None = None,
        route_targets_T: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Logits per example (a list: tasks have different numbers of outputs); ``recorder`` receives
        the routed modules' auxiliary losses; ``expert_ids_T`` forces the LoRA-Mixer routing per token,
        ``route_targets_T`` only supervises the routers (cross-entropy to that expert)."""
        h_TD, _ = self.model(
            input_ids,
            cu_seqlens,
            max_seqlen,
            recorder=recorder,
            expert_ids_T=expert_ids_T,
            route_targets_T=route_targets_T,
        )
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


PEFT_PREFIX = "base_model.model."  # how a PeftModel's saved adapter names its tensors


def inject_lora(model: nn.Module, target_modules: list[str], rank: int, alpha: float) -> None:
    """The project's one LoRA injection (fine-tuning here, the GLUE runner's any-family backends): PEFT's
    ``inject_adapter_in_model`` with rank ``rank``, scale α/r, no dropout, no bias, on the modules whose
    names are or end with one of ``target_modules``. ``save_adapter`` writes the result in PEFT's format."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, bias="none")
    inject_adapter_in_model(cfg, model)


def add_block_lora(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """LoRA (``inject_lora``) on ``targets`` of every block; returns the adapted modules' names."""
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"--lora-targets {','.join(bad)}: allowed: {', '.join(TARGETS)}")
    names = list(block_linears(model, targets))
    for name in names:
        if isinstance(model.get_submodule(name), MixtureLinear):
            raise ValueError(f"{name} already carries LoRA-Mixer experts")
    inject_lora(model, names, rank, alpha)
    return names


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and not isinstance(m, MixtureLinear)}


def save_adapter(model: nn.Module, out_dir: str, task_type: str = "SEQ_CLS") -> None:
    from peft import get_peft_model_state_dict

    from model.native_format import save_safetensors

    loras = _lora_layers(model)
    if not loras:
        raise ValueError("the model has no LoRA adapter")
    first = next(iter(loras.values()))
    r, lora_alpha = first.r["default"], first.lora_alpha["default"]
    os.makedirs(out_dir, exist_ok=True)
    tensors = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_safetensors(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": task_type,
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": sorted({n.split("block.", 1)[1] for n in loras}),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)


def load_adapter(model: nn.Module, adapter_dir: str) -> None:
    """Add the adapter's LoRA layers to ``model`` and load its tensors (strict)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    add_block_lora(model, tuple(cfg["target_modules"]), cfg["r"], float(cfg["lora_alpha"]))
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    expected = {f"{PEFT_PREFIX}{n}.lora_{x}.weight" for n in _lora_layers(model) for x in "AB"}
    if set(sd) != expected:
        raise ValueError(
            f"adapter {adapter_dir}: keys do not match the model "
            f"(missing {sorted(expected - set(sd))[:2]}, unexpected {sorted(set(sd) - expected)[:2]})"
        )
    result = set_peft_model_state_dict(model, {k[len(PEFT_PREFIX) :]: v for k, v in sd.items()})
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter {adapter_dir}: tensors not loaded: {result.unexpected_keys[:2]}")


def save_mixer(
    clf: TaskClassifier, base_rest: dict[str, torch.Tensor], doc: dict, base_dir: str, out_dir: str, history: dict
) -> None:
    """A LoRA-Mixer's encoder as a native model directory (``load_native`` reads it back with its routed
    attention experts): ``config.json``'s model carries ``attn_experts``; the base model's MLM head
    (``base_rest``: its tensors outside ``model.``), tokenizer and sentence-transformers files are kept, with
    ``doc`` its config.json. The task heads are not in it (``heads.safetensors``)."""
    from fileio import OutputDir
    from model.native_format import copy_sentence_files, save_native, tokenizer_record

    state = dict(base_rest)
    state.update({f"model.{k}": v for k, v in clf.model.state_dict().items()})
    tok_path, _ = tokenizer_record(base_dir, doc)
    with OutputDir(out_dir, overwrite=True) as tmp:
        save_native(tmp, state, clf.cfg, tok_path, doc.get("data_dir"), [*doc.get("history", []), history])
        copy_sentence_files(base_dir, tmp)
