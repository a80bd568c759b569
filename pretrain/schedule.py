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


def warmup_warning(steps: int, lr: float, cfg: ScheduleConfig) -> str | None:
    """One line when a run of ``steps`` ends inside its warm-up (never reaching the stable phase or the decay,
    e.g. train.steps=5 with the default warm-up), saying at which lr and how to change it; None otherwise."""
    if not cfg.warmup_steps or steps > cfg.warmup_steps:
        return None
    last = wsd_factor(steps - 1, steps, cfg) * lr
    where = "inside" if steps < cfg.warmup_steps else "at the end of"
    fix = steps // 10
    return (
        f"warning: train.steps={steps} ends {where} its warm-up (schedule.warmup_steps={cfg.warmup_steps}): the "
        f"last step runs at lr {last:.2e} ({steps}/{cfg.warmup_steps} of optim.lr={lr:g}) and the lr never decays; "
        f"set schedule.warmup_steps={fix} ({'no warm-up' if fix == 0 else 'a tenth of the run'}) or another value "
        f"below {steps}"
    )
