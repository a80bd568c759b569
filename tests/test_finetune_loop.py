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


class _Stream:
    """A text stream that says whether it is a terminal (pytest's captured stderr is not one)."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_progress_is_a_line_every_interval_off_a_terminal_and_a_bar_on_one(monkeypatch):
    from finetune.progress import Progress

    monkeypatch.setenv("MODERNALBERT_PROGRESS_S", "0")  # a line per update
    log = _Stream(tty=False)
    with Progress(4, "SST-2 seed 0 epoch 1/3", stream=log) as p:
        for i in range(4):
            p.update(1, f"loss {0.7 - i / 10:.4f}")
    lines = log.text.splitlines()
    assert len(lines) == 4 and "\r" not in log.text
    assert lines[0].startswith("SST-2 seed 0 epoch 1/3: 1/4 batches (25%), loss 0.7000, 0 s, about 0 s left")
    assert lines[-1].startswith("SST-2 seed 0 epoch 1/3: 4/4 batches (100%), loss 0.4000, ") and "left" not in lines[-1]
    unknown = _Stream(tty=False)  # total 0: a count without a share (it divided by zero)
    with Progress(0, "streaming", "texts", stream=unknown) as p:
        p.update(3)
    assert unknown.text.startswith("streaming: 3 texts, 0 s")

    monkeypatch.delenv("MODERNALBERT_PROGRESS_S")  # the default: every 10 s, so a fast loop prints nothing
    quiet = _Stream(tty=False)
    with Progress(4, "x", stream=quiet) as p:
        p.update(4)
    assert quiet.text == ""

    term = _Stream(tty=True)  # a terminal: tqdm's bar (carriage returns), cleared at the end
    with Progress(4, "encoding 4 documents", "texts", stream=term) as p:
        p.update(2)
        p.update(2)
        assert type(p.bar).__name__ == "tqdm" and p.bar.n == 4  # drawn at most every 0.1 s (tqdm's mininterval)
    assert term.text.startswith("\rencoding 4 documents:") and "/4 [" in term.text and term.text.endswith("\r")


def test_fit_shows_its_progress_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv("MODERNALBERT_PROGRESS_S", "0")
    module = torch.nn.Linear(2, 1)
    x = torch.randn(6, 2)

    def step_loss(idx):
        loss = module(x[idx]).square().mean()
        return loss, {"loss": loss}

    fit(
        module,
        list(module.parameters()),
        FitConfig(1e-2, 2, 3),
        lambda e: [[0, 1], [2, 3], [4, 5]],
        step_loss,
        None,
        "demo",
    )
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert [x.split(",")[0] for x in lines] == [
        f"demo epoch {e}/2: {b}/3 batches ({b / 3:.0%})" for e in (1, 2) for b in (1, 2, 3)
    ], lines
    assert all(" loss " in x for x in lines)
