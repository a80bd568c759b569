"""A picture of a training run, drawn from its own logs: one PNG.

    python tools/plot_run.py runs/quickstart/tiny                  # -> runs/quickstart/tiny/plot.png
    python tools/plot_run.py runs/50m --out plots/50m.png

Panels: the loss (train every step, val from eval.jsonl), MLM accuracy (train/val), learning rate, gradient
norm, tokens/s and MFU, and per routed layer (one line each) the expert load as max/mean tokens per expert
(1 is perfectly even) and the router's mean per-token entropy (nats; dotted: ln E, the most even). The
performance and routing fields are logged on log steps (``train.log_every``) only; a field the run never
logged leaves its panel saying "not logged" (MFU on CPU, routing without MoL).

RUN_DIR is a run directory of either engine (FSDP2 or DeepSpeed write the same logs). A resumed run's
logs hold each step once: the relaunch moves the records it repeats to ``*.superseded.jsonl``, which are
not drawn. A log that still repeats steps (logs of several launches concatenated by hand) is read by the
same rule: a record at step s follows a resume from step s-1, so it replaces every earlier record from
step s on. A line cut short by a kill is skipped.

For interactive zoom and several runs side by side, log to W&B, the richer view (``log.wandb=offline``,
uploaded later with ``wandb sync``, or ``online``); TensorBoard would be the other, but the logger writes
no TensorBoard event files.
Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

from model.native_format import InputError


@dataclass
class Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)


@dataclass
class RunSeries:
    """Everything the picture draws, step by step; a series that was never logged is empty."""

    train_loss: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    train_accuracy: Series = field(default_factory=Series)
    val_accuracy: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    grad_norm: Series = field(default_factory=Series)
    tokens_per_s: Series = field(default_factory=Series)
    mfu: Series = field(default_factory=Series)
    expert_load: dict[str, Series] = field(default_factory=dict)  # layer ("layer2.ffn") -> max/mean tokens per expert
    router_entropy: dict[str, Series] = field(default_factory=dict)  # layer -> mean per-token entropy, nats
    num_experts: dict[str, int] = field(default_factory=dict)  # layer -> E (the entropy panel's ln E)
    skipped: int = 0  # unreadable lines (torn by a kill) and records replaced by a later launch's


def latest_records(lines) -> tuple[list[dict], int]:
    """The records of a JSONL log in step order, each step's latest: a record at step s replaces the earlier
    records from s on (the launch that wrote it resumed from s-1; pretrain/logger.py: supersede_records keeps
    the same ones). Returns (records, lines skipped: unreadable or replaced)."""
    kept: dict[int, dict] = {}  # in step order: each record either extends it or cuts its tail first
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            skipped += 1
            continue
        if kept and step <= next(reversed(kept)):
            replaced = [s for s in kept if s >= step]
            for s in replaced:
                del kept[s]
            skipped += len(replaced)
        kept[step] = record
    return list(kept.values()), skipped


def _read(path: str) -> tuple[list[dict], int]:
    if not os.path.isfile(path):
        return [], 0
    try:
        with open(path, encoding="utf-8") as f:
            return latest_records(f)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _per_layer(record: dict, key: str) -> list[tuple[str, object]]:
    value = record.get(key)
    return list(value.items()) if isinstance(value, dict) else []


def parse_run(run_dir: str) -> RunSeries:
    """The series of ``run_dir``'s metrics.jsonl and eval.jsonl (InputError when there are no metrics)."""
    if not os.path.isdir(run_dir):
        raise InputError(f"{run_dir}: no such directory")
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    metrics, skipped = _read(metrics_path)
    if not metrics:
        raise InputError(f"{run_dir}: no training records ({metrics_path} is missing or empty): not a run directory?")
    evals, skipped_eval = _read(os.path.join(run_dir, "eval.jsonl"))
    if not evals:  # an eval.jsonl lost or deleted: the training records carry the evaluations after step 0 too
        evals = [r for r in metrics if "val_loss" in r]
    run = RunSeries(skipped=skipped + skipped_eval)
    scalars = {
        "loss": run.train_loss,
        "mlm_accuracy": run.train_accuracy,
        "lr": run.lr,
        "grad_norm": run.grad_norm,
        "tokens_per_s": run.tokens_per_s,
        "mfu": run.mfu,
    }
    for r in metrics:
        step = int(r["step"])
        for key, series in scalars.items():
            value = _number(r.get(key))
            if value is not None:
                series.add(step, value)
        for layer, counts in _per_layer(r, "tokens_per_expert"):
            if isinstance(counts, list) and counts and all(_number(c) is not None for c in counts) and sum(counts):
                # the console line's "load max/mean"
                run.expert_load.setdefault(layer, Series()).add(step, max(counts) * len(counts) / sum(counts))
                run.num_experts[layer] = len(counts)
        for layer, logged in _per_layer(r, "router_entropy"):
            nats = _number(logged)
            if nats is not None:
                run.router_entropy.setdefault(layer, Series()).add(step, nats)
    for r in evals:
        for key, series in (("val_loss", run.val_loss), ("val_accuracy", run.val_accuracy)):
            value = _number(r.get(key))
            if value is not None:
                series.add(int(r["step"]), value)
    return run


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError("matplotlib is not installed: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed (a cluster node, a terminal)
    import matplotlib.pyplot as plt

    return plt


def _engine(run_dir: str) -> str:
    """The engine named in the run's config.yaml ("" when there is none to read)."""
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
            return str((yaml.safe_load(f) or {}).get("engine", ""))
    except (OSError, AttributeError, ValueError, yaml.YAMLError):  # only the title goes without it
        return ""


def _not_logged(ax, why: str) -> None:
    ax.text(0.5, 0.5, f"not logged\n({why})", ha="center", va="center", transform=ax.transAxes, color="0.45")
    ax.set_yticks([])


def draw(run: RunSeries, out: str, title: str) -> None:
    """Write the picture of ``run`` to ``out`` (PNG)."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 2, figsize=(12, 13), sharex=True, layout="constrained")
    fig.suptitle(title)
    (loss, acc), (lr, gnorm), (tps, mfu), (load, entropy) = axes

    def lines(ax, name: str, parts: list[tuple[str, Series, str]], why: str, ylabel: str = "") -> None:
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        drawn = [(label, s, style) for label, s, style in parts if s.steps]
        if not drawn:
            _not_logged(ax, why)
            return
        for label, s, style in drawn:
            ax.plot(s.steps, s.values, style, label=label, markersize=4)
        if any(label for label, _, _ in drawn):
            ax.legend(fontsize="small")

    lines(loss, "loss", [("train", run.train_loss, "-"), ("val", run.val_loss, "o-")], "no loss")
    lines(acc, "MLM accuracy", [("train", run.train_accuracy, "-"), ("val", run.val_accuracy, "o-")], "no accuracy")
    lines(lr, "learning rate", [("", run.lr, "-")], "no lr")
    lines(gnorm, "gradient norm (before clipping)", [("", run.grad_norm, "-")], "no grad_norm")
    lines(tps, "throughput, all ranks", [("", run.tokens_per_s, ".-")], "no tokens_per_s", "tokens/s")
    lines(mfu, "MFU", [("", run.mfu, ".-")], "no known peak: CPU, or set log.peak_tflops")
    if run.mfu.steps:
        from matplotlib.ticker import PercentFormatter

        mfu.yaxis.set_major_formatter(PercentFormatter(1.0))
    routed = sorted(run.expert_load)
    lines(load, "expert load, max/mean per layer", [(k, run.expert_load[k], ".-") for k in routed], "no routed layers")
    if run.expert_load:
        load.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
    layers = sorted(run.router_entropy)
    why = "no routed layers" if not run.expert_load else "a run logged before router_entropy was"
    lines(entropy, "router entropy per layer, nats", [(k, run.router_entropy[k], ".-") for k in layers], why)
    for e in sorted({run.num_experts[k] for k in layers if k in run.num_experts}):
        entropy.axhline(math.log(e), color="0.5", linestyle=":", linewidth=1)
        entropy.annotate(
            f"ln {e}", (0.99, math.log(e)), xycoords=("axes fraction", "data"), color="0.45", ha="right", va="top"
        )
    for ax in axes[-1]:
        ax.set_xlabel("step")
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise InputError(f"{out}: cannot be written ({e})") from None
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/plot_run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="the run directory (its metrics.jsonl, eval.jsonl, config.yaml)")
    p.add_argument("--out", help="the PNG to write (default: RUN_DIR/plot.png)")
    a = p.parse_args(argv)
    out = a.out or os.path.join(a.run_dir, "plot.png")
    try:
        run = parse_run(a.run_dir)
        engine = _engine(a.run_dir)
        last = run.train_loss.steps[-1] if run.train_loss.steps else 0
        title = f"{os.path.abspath(a.run_dir)}: step {last}" + (f", engine {engine}" if engine else "")
        draw(run, out, title)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = f" ({run.skipped} superseded or unreadable log lines skipped)" if run.skipped else ""
    print(f"plotted {len(run.train_loss.steps)} steps of {a.run_dir}{note} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
