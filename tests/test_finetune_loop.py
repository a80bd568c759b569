"""finetune/loop.py: the one fine-tuning loop (GLUE, SQuAD, BEIR and finetune.train run through it)."""

from __future__ import annotations

import pytest
import torch

from finetune.loop import FitConfig, fit, steps_per_epoch
from finetune.optim import linear_warmup_decay


def test_fit_runs_the_schedule_over_every_step_and_reports_epoch_means(monkeypatch):
    import finetune.loop as loop

    used = []

    class Recording(loop.FinetuneOptimizer):
        def step(self, loss):
            used.append(self.sched.get_last_lr()[0])
            super().step(loss)

    monkeypatch.setattr(loop, "FinetuneOptimizer", Recording)
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    x, y = torch.randn(10, 4), torch.randn(10, 1)
    per_epoch = steps_per_epoch(10, 4)  # 4 + 4 + 2
    seen, lrs, modes = [], [], []

    def epoch_batches(e):
        return [list(range(s, min(s + 4, 10))) for s in range(0, 10, 4)]

    def step_loss(idx):
        modes.append(module.training)
        loss = torch.nn.functional.mse_loss(module(x[idx]), y[idx])
        seen.append(float(loss))
        return loss, {"mse": loss, "twice": 2 * loss}

    def after_epoch(e, means):
        lrs.append(e)
        module.eval()  # a held-out evaluation: the next epoch must train again

    history = fit(
        module, list(module.parameters()), FitConfig(0.1, 2, per_epoch), epoch_batches, step_loss, after_epoch
    )
    assert per_epoch == 3 and lrs == [0, 1] and all(modes)
    assert [h["mse"] for h in history] == pytest.approx([sum(seen[:3]) / 3, sum(seen[3:]) / 3])
    assert [h["twice"] for h in history] == pytest.approx([2 * h["mse"] for h in history])
    # one schedule over both epochs' 6 steps (warm-up 1 step, then linear decay), not one per epoch
    f = linear_warmup_decay(6)
    assert used == pytest.approx([0.1 * f(s) for s in range(6)]) and used[0] > used[3] > used[5] > 0


@pytest.mark.parametrize(
    "field,value,message", [("lr", 0.0, "lr=0.0: must be > 0"), ("epochs", -1, "epochs=-1: must be >= 0")]
)
def test_fit_config_names_the_bad_field(field, value, message):
    kw = {"lr": 1e-4, "epochs": 1, "steps_per_epoch": 1, field: value}
    with pytest.raises(ValueError, match=message):
        FitConfig(**kw)
