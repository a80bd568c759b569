"""The one fine-tuning update rule of ``finetune/`` and ``evaluation/`` (GLUE, SQuAD, BEIR): AdamW with
weight decay 0.01, the learning rate warmed up linearly over the first 10 % of the steps and then decayed
linearly to 0, the gradient norm clipped at 1.0. Pretraining has its own (``pretrain/schedule.py``)."""

from __future__ import annotations

import torch


def linear_warmup_decay(steps: int):
    """LR multiplier for optimizer step s (0-based) of ``steps``: warm-up over the first tenth."""
    warm = max(1, steps // 10)
    return lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1e-9)))


class FinetuneOptimizer:
    def __init__(
        self, params: list[torch.nn.Parameter], lr: float, steps: int, weight_decay: float = 0.01, clip: float = 1.0
    ) -> None:
        self.params, self.clip = list(params), clip
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, linear_warmup_decay(max(1, steps)))

    def step(self, loss: torch.Tensor) -> None:
        """Backward, clip, update, advance the schedule."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
