"""The routing bookkeeping of LoRA-Mixer fine-tuning, from outside the model: which routed applications weigh
a projection's experts, which experts a batch chose, and each task's routing shares averaged over training
(what ``tools/merge_mixer.py --method ema`` folds the experts with).

Names: a projection is ``…groups.G.block.attn.Wqkv|Wo`` (whatever wraps the encoder: ``block_key`` keeps the
part from ``groups.``, the key results.json records), a routed application ``layer{i}.attn`` or, for Wo's own
router under per-projection routing, ``layer{i}.attn_o`` (``model.routing.RoutingRecorder``).
"""

from __future__ import annotations

import contextlib

import torch

from finetune.model import TaskClassifier
from model.config import ModelConfig
from model.lora_mixer import MixtureLinear
from model.routing import RoutingRecorder


def block_key(name: str) -> str:
    """A module or parameter name from ``groups.`` on (``model.groups.1.block.attn.Wo`` → ``groups.1.block.attn.Wo``):
    the same key for a bare encoder, a classifier and a saved mixer."""
    i = name.find("groups.")
    if i < 0:
        raise ValueError(f"{name!r} is not inside an encoder group (no 'groups.')")
    return name[i:]


def attn_stats(recorder: RoutingRecorder) -> list[dict]:
    """The statistics of every routed attention application (both routers of a block with per_projection)."""
    return [st for name, st in recorder.stats.items() if ".attn" in name]


def projection_applications(name: str, cfg: ModelConfig) -> list[str]:
    """The routed applications (``RoutingRecorder`` names, ``layer{i}.attn``) whose router weighs the experts of
    projection ``name`` (``...groups.G.block.attn.Wqkv|Wo``): its shared block's G applications; Wo follows
    ``attn_o`` under per_projection routing."""
    group = int(block_key(name).split(".")[1])
    kind = "attn_o" if name.endswith("Wo") and cfg.attn_experts.route == "per_projection" else "attn"
    return [f"layer{i}.{kind}" for i in range(group * cfg.group_depth, (group + 1) * cfg.group_depth)]


def chosen_experts(clf: TaskClassifier, recorder: RoutingRecorder) -> dict[str, torch.Tensor]:
    """Per attention-expert projection: [E] True where its router sent any token of the batch to expert j
    (over the applications of the projection's group, ``projection_applications``)."""
    out = {}
    for name, m in clf.named_modules():
        if not isinstance(m, MixtureLinear):
            continue
        counts = [
            recorder.stats[app]["tokens_per_expert"]
            for app in projection_applications(name, clf.cfg)
            if app in recorder.stats
        ]
        out[name] = torch.stack(counts).sum(0) > 0 if counts else torch.ones(m.lora_A.shape[0], dtype=torch.bool)
    return out


class RoutingShareEMA:
    """Per task and attention router, an exponential moving average over the training steps of the share of
    the task's routed tokens each expert gets (top-k choices, as ``expert_share`` counts them; a shared
    block's G applications pooled): the weights ``tools/merge_mixer.py --method ema`` folds the experts with,
    taken from training alone (the scored splits' routing never decides a merge). A task's first step sets its
    average; steps without the task leave it. Forward hooks on the routers, from outside the model."""

    def __init__(self, clf: TaskClassifier, num_tasks: int, decay: float) -> None:
        self.routers = {n: m for n, m in clf.named_modules() if n.endswith((".attn.router", ".attn.router_o"))}
        self.num_tasks, self.decay = num_tasks, decay
        self.ema: dict[str, torch.Tensor] = {}  # router name -> [tasks, E] shares
        self.steps = torch.zeros(num_tasks, dtype=torch.long)  # steps that saw each task
        self.task_T: torch.Tensor | None = None
        self._counts: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def tracking(self):
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.routers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str):
        def hook(module, args, r) -> None:
            if self.task_T is None:  # a forward outside a training step (none in the stages)
                return
            idx_TK = r.topk_idx_TK.detach()
            c = torch.zeros(self.num_tasks, r.probs_TE.shape[1], dtype=torch.float64, device=idx_TK.device)
            c.index_put_(
                (self.task_T[:, None].expand_as(idx_TK), idx_TK), torch.ones(idx_TK.shape, dtype=c.dtype), True
            )
            self._counts[name] = self._counts[name] + c if name in self._counts else c

        return hook

    def step(self) -> None:
        """Fold the step's counts into the averages."""
        if not self._counts:
            return
        seen = next(iter(self._counts.values())).sum(-1) > 0  # every router routes the same tokens
        self.steps = self.steps.to(seen.device)  # the routers' device: no host read until the end
        fresh = (self.steps == 0)[:, None]
        for name, c in self._counts.items():
            share = c / c.sum(-1, keepdim=True).clamp_min(1)
            prev = self.ema.get(name, share)
            avg = torch.where(fresh, share, self.decay * prev + (1 - self.decay) * share)
            self.ema[name] = torch.where(seen[:, None], avg, prev)
        self.steps += seen.long()
        self._counts, self.task_T = {}, None

    def projection_shares(self, task: int) -> dict[str, list[float]]:
        """Task ``task``'s averaged shares per routed projection (``...attn.Wqkv|Wo``): Wqkv and, with shared
        routing, Wo follow ``attn.router``; Wo follows ``attn.router_o`` under per-projection routing."""
        out: dict[str, list[float]] = {}
        for name, ema in self.ema.items():
            block = block_key(name).rsplit(".", 1)[0]  # groups.G.block.attn
            shares = [round(float(x), 4) for x in ema[task] / ema[task].sum().clamp_min(1e-12)]
            if name.endswith("router_o"):
                out[f"{block}.Wo"] = shares  # Wo's own router wins whatever the order
            else:
                out[f"{block}.Wqkv"] = shares
                out.setdefault(f"{block}.Wo", shares)
        return out
