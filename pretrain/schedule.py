"""Learning-rate schedule: warmup–stable–decay (WSD), as a multiplier of optim.lr."""

from __future__ import annotations

from pretrain.config import ScheduleConfig


def wsd_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """LR multiplier for optimizer step ``step`` (0-based): linear warmup to 1, constant, then a
    linear decay to ``min_lr_ratio`` over the last ``decay_fraction`` of the run."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = int(round(cfg.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if decay_steps == 0 or step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
