"""The share of tokens each MoL expert gets, as a moving average over training (merge weights).

``tools/merge_experts.py --method ema`` weighs each expert's delta by how much training used it. A
20-batch calibration count after training measures the final router on a few batches; this average is
taken over the run itself, at every optimizer step, from the routing counts every rank already sums
(all ranks, all micro-batches, top-k assignments over each application of the group's shared block):

    share_g(t) = counts_g(t) / Σ counts_g(t)          ema_g ← decay · ema_g + (1 − decay) · share_g(t)

(the first step sets ema_g = share_g). ``train.routing_ema_decay`` (default 0.99: about the last 100
steps weigh most). It is training state: saved in trainer.json (component ``routing_ema``), restored on
resume, so an interrupted run ends with the same average; ``tools/consolidate_checkpoint.py`` records it
in the native model's history.
"""

from __future__ import annotations

from torch.distributed.checkpoint.stateful import Stateful

from model.config import ModelConfig


class RoutingShareEMA(Stateful):
    optional_state = True  # checkpoints written before it existed resume with a fresh average

    def __init__(self, cfg: ModelConfig, decay: float) -> None:
        self.groups = tuple(cfg.mol.groups)
        self.depth = cfg.group_depth
        self.decay = decay
        self.updates = 0
        self.ema: dict[int, list[float]] = {}

    def update(self, load: dict[str, list[int]]) -> None:
        """One optimizer step's global routing counts (``"layer{i}.ffn"`` → tokens per expert)."""
        for g in self.groups:
            rows = [
                load[k] for k in (f"layer{i}.ffn" for i in range(g * self.depth, (g + 1) * self.depth)) if k in load
            ]
            if not rows:
                continue
            counts = [sum(col) for col in zip(*rows)]
            total = sum(counts)
            if total == 0:
                continue
            share = [c / total for c in counts]
            old = self.ema.get(g)
            self.ema[g] = share if old is None else [self.decay * o + (1 - self.decay) * s for o, s in zip(old, share)]
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "groups": {str(g): v for g, v in self.ema.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.ema = {int(g): [float(x) for x in v] for g, v in state["groups"].items()}
