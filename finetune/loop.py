"""The one fine-tuning loop of ``finetune/`` and ``evaluation/`` (GLUE, SQuAD 2.0, BEIR, task LoRAs and
LoRA-Mixer stages): epochs of batches, each batch's loss through the shared update rule
(``finetune/optim.py``: AdamW, linear warm-up and decay, clipping), and the epoch means of what the caller
logs. What differs between the runners — the batches, the loss, what happens after an epoch — comes in
as three functions; the optimizer, schedule, step count, clipping and bookkeeping live here only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finetune.optim import FinetuneOptimizer
from finetune.progress import Progress
from config_check import check


@dataclass(frozen=True)
class FitConfig:
    """How long and how fast: ``epochs`` of ``steps_per_epoch`` optimizer steps at peak ``lr``."""

    lr: float
    epochs: int
    steps_per_epoch: int  # the schedule's length is epochs × this (the batches of an epoch may not know it)
    weight_decay: float = 0.01
    clip: float = 1.0

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        check(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "must be >= 0")


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches of an epoch over ``examples`` (the last one short)."""
    return -(-examples // batch_size)


def fit(
    module: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    cfg: FitConfig,
    epoch_batches: Callable[[int], Iterable[Any]],
    step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: str = "fine-tuning",
) -> list[dict[str, float]]:
    """Train ``params`` of ``module``; returns each epoch's means of the logged parts.

    ``epoch_batches(e)``: the batches of epoch e (0-based; the caller seeds its order). ``step_loss(batch)``:
    (the loss to minimise, the parts to log: name → scalar tensor). ``after_epoch(e, means)``: logging or a
    held-out evaluation (it may switch the module to eval: the next epoch switches it back). ``progress``
    names the run in the progress shown during an epoch (``finetune/progress.py``: a bar on a terminal, else
    a line on stderr every 10 s with the batches done and the running mean of the first logged part).
    """
    opt = FinetuneOptimizer(list(params), cfg.lr, max(1, cfg.epochs * cfg.steps_per_epoch), cfg.weight_decay, cfg.clip)
    history = []
    for epoch in range(cfg.epochs):
        module.train()
        sums: dict[str, float] = {}
        n = 0
        with Progress(cfg.steps_per_epoch, f"{progress} epoch {epoch + 1}/{cfg.epochs}") as bar:
            for batch in epoch_batches(epoch):
                loss, parts = step_loss(batch)
                opt.step(loss)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())  # one host sync per step: fine at this scale
                n += 1
                first = next(iter(sums), None)
                bar.update(1, f"{first} {sums[first] / n:.4f}" if first is not None else "")
        means = {k: v / max(n, 1) for k, v in sums.items()}
        history.append(means)
        if after_epoch is not None:
            after_epoch(epoch, means)
    return history
