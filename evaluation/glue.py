"""GLUE runner: fine-tune any checkpoint on the GLUE tasks with several seeds, the same way for every model.

    python -m evaluation.glue MODEL --glue-dir GLUE_DIR --out runs/glue/mymodel
    python -m evaluation.glue MODEL --glue-source hf --tasks SST-2,RTE --out runs/glue/x   # official GLUE, online
    python -m evaluation.glue MODEL --glue-dir GLUE_DIR --mode lora --seeds 0,1,2,3,4 --out runs/glue/x-lora

MODEL is a native model directory (this project's tools write them), a HuggingFace export of one
(``tools/convert_to_hf.py``, either format), or any HuggingFace BERT-family directory (e.g. a teacher),
loaded through ``AutoModelForSequenceClassification``: every model is scored by the same code with the
same hyper-parameters. GLUE_DIR holds one folder per task (CoLA, SST-2, STS-B, MRPC, RTE; layouts in
``data_prep/glue_data.py``); ``--glue-source hf`` reads the official GLUE through HF ``datasets``.
``--tasks`` picks some, comma- or space-separated, in any case (``SST-2,RTE`` = ``sst2 rte``).

Per task and seed: a fresh head (``model.classification.ClassificationHead`` for our models; the model's own
for HF ones; one output with MSE for STS-B, trained on targets / 5 with the 5 folded back into the head
afterwards, ``--target-scale``) on the pretrained encoder; ``--mode full`` trains every weight (``--routers
frozen``: all but a MoL or LoRA-Mixer model's routers), ``--mode lora`` a PEFT LoRA on the attention
projections plus the head. AdamW, linear warm-up (10 %) and decay, ``--epochs`` over at most ``--max-train``
examples. Scored on dev, and on test where the task has a labelled one (STS-B, MRPC, RTE here). Metrics as
GLUE: CoLA Matthews corr., SST-2 accuracy, STS-B Pearson/Spearman, MRPC accuracy/F1, RTE accuracy; a task's
score is the mean of its metrics, the GLUE average the mean of the task scores (on test where there is one,
else dev), each the median over seeds.

Protocol (so rows of one comparison can be told apart): ``--max-train``/``--max-eval`` keep a seeded,
label-stratified random subset (``scoring/sampling.py``, ``--subset-seed``), the same for every model,
never the first rows of a file. Every task and the average get a constant-predictor row (the majority
training label; the mean target for STS-B, whose correlations are then 0) and a 95 % bootstrap interval
of the seed-mean score over the evaluation examples (``scoring/intervals.py``; each task draws its own
resamples, the average's interval averages the tasks' draws).

Output: OUT/results.json (every seed's metrics, medians and spread, arguments, timings),
OUT/results.md (the table) and OUT/predictions.json (gold labels and every seed's predictions per
evaluation split: two runs on the same subsets give a paired difference with ``python -m
evaluation.compare RUN_A RUN_B``). ``--save-model DIR`` keeps the first seed's fine-tuned model per task
(DIR/<task>; for a native model a native classifier directory that ``tools/convert_to_hf.py`` exports
with its head). A task directory with another layout or a malformed row: one line naming the file and
line, exit 2.

Hyper-parameter selection (``--select-lr``, ``--select-epochs``): per task, a seeded label-stratified
``--holdout`` share of the training subset is set aside; every (lr, epochs) of the grid fine-tunes on the
rest with the first seed and is scored on that slice; the best (ties: the earlier in the grid) then trains
on the whole training subset for every seed. Dev and test are not seen by the choice, so every model of a
comparison gets its own hyper-parameters without touching what is reported. The grid's holdout scores
and the choice go into results.json and results.md. ``--holdout-only`` stops there (dev and test unscored)
and writes the chosen point's held-out predictions to predictions.json (split ``holdout``), so models probed
on the same slice can be compared paired.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time

import numpy as np
import torch

from data_prep.glue_data import (
    TASKS,
    TASKS_SYNTAX,
    Example,
    GlueDataError,
    load_hf,
    load_local,
    target_scale,
    task_names,
    task_spec,
)
from scoring.intervals import bootstrap_draws, constant_scores, percentile_ci, task_seed
from scoring.metrics import summarize, task_metrics, task_score
from scoring.predictions import task_record
from scoring.sampling import holdout_split, subset_examples
from evaluation.backends import add_attention_lora, open_backend
from finetune.loop import FitConfig, fit, steps_per_epoch
from model.classification import ClassifierConfig, classification_loss
from fileio import OutputDir
from model.native_format import InputError
from config_check import flag_check

MODES = ("full", "lora")
ROUTERS = ("train", "frozen")


def freeze_routers(module: torch.nn.Module) -> int:
    """Stop every router (``model.routing.Router``: MoL's and LoRA-Mixer's) from training; the number of
    parameters frozen (0 for a model without routers, so one protocol fits every row of a comparison)."""
    from model.routing import Router

    n = 0
    for m in module.modules():
        if isinstance(m, Router):
            for p in m.parameters():
                n += p.numel() if p.requires_grad else 0
                p.requires_grad_(False)
    return n


def index_batches(n: int, batch_size: int, seed: int | None):
    order = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(order)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


@torch.no_grad()
def predict(backend, module: torch.nn.Module, rows: list[dict], batch_size: int, regression: bool) -> np.ndarray:
    module.eval()
    out = []
    # sorted by length so padded (HF) batches waste little; the order is restored below
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for idx in index_batches(len(order), batch_size, None):
        picked = [order[i] for i in idx]
        logits = backend.logits(module, backend.collate([rows[i] for i in picked])).float()
        out.append((picked, logits.squeeze(-1) if regression else logits))
    scores = np.zeros((len(rows),) if regression else (len(rows), out[0][1].shape[-1]), np.float64)
    for picked, lg in out:
        scores[picked] = lg.numpy()
    module.train()
    return scores


def fold_output_scale(module: torch.nn.Module, head_names: list[str], scale: float) -> None:
    """Multiply the one-output layer of a fresh regression head by ``scale`` (weight and bias), so a head
    trained on targets / scale predicts on the task's own scale: exact, nothing else changes."""
    names = {n.rsplit(".", 1)[0] for n in head_names}
    outs = [
        m for n, m in module.named_modules() if n in names and isinstance(m, torch.nn.Linear) and m.out_features == 1
    ]
    if len(outs) != 1:
        raise RuntimeError(
            f"regression head: expected one 1-output linear layer among {sorted(names)}, found {len(outs)}"
        )
    with torch.no_grad():
        outs[0].weight.mul_(scale)
        if outs[0].bias is not None:
            outs[0].bias.mul_(scale)


@dataclasses.dataclass(frozen=True)
class Hyper:
    """What the selection chooses per task: the peak learning rate and the number of epochs."""

    lr: float
    epochs: int


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How every task is fine-tuned and scored: the command line's choices, typed, for the library functions."""

    mode: str  # full | lora
    lr: float
    epochs: int
    batch_size: int
    eval_batch_size: int
    pooling: str
    dropout: float
    lora_rank: int
    lora_alpha: float
    target_scale: str  # max | none
    seeds: tuple[int, ...]
    subset_seed: int
    select_lr: tuple[float, ...] = ()  # empty: no selection, lr
    select_epochs: tuple[int, ...] = ()  # empty: epochs
    holdout: float = 0.2
    routers: str = "train"  # train | frozen: a MoL / LoRA-Mixer model's routers in --mode full

    def validate(self) -> "Protocol":
        """``--flag=value: allowed`` (``config_check.check``, as every config) for a value that cannot run."""
        arg = flag_check(self, InputError)

        arg("seeds", len(self.seeds) >= 1, "at least one seed (comma-separated integers)")
        for name in ("epochs", "batch_size", "eval_batch_size", "lora_rank"):
            arg(name, getattr(self, name) >= 1, "must be >= 1")
        arg("lr", self.lr > 0, "must be > 0")
        arg("lora_alpha", self.lora_alpha > 0, "must be > 0")
        arg("dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        arg("select_lr", all(x > 0 for x in self.select_lr), "positive learning rates only")
        arg("select_epochs", all(x > 0 for x in self.select_epochs), "positive epoch counts only")
        arg("holdout", 0 < self.holdout < 1, "a share strictly between 0 and 1")
        arg("routers", self.routers in ROUTERS, f"one of {', '.join(ROUTERS)}")
        return self

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "Protocol":
        """From ``parser()``'s parsed arguments (``main`` resolves the lr default and splits the lists), checked."""
        return cls(
            **{
                f.name: (
                    tuple(getattr(a, f.name))
                    if f.name in ("seeds", "select_lr", "select_epochs")
                    else getattr(a, f.name)
                )
                for f in dataclasses.fields(cls)
            }
        ).validate()


def finetune_one(
    backend,
    spec,
    data: dict[str, list[dict]],
    labels: dict[str, np.ndarray],
    a: Protocol,
    seed: int,
    log,
    hp: Hyper | None = None,
) -> tuple[dict, dict, torch.nn.Module, ClassifierConfig, int]:
    """One seed on one task (``hp``: lr and epochs, else the command line's): (metrics per eval split,
    scores per eval split, the model, its head config, trainable params)."""
    hp = hp or Hyper(a.lr, a.epochs)
    torch.manual_seed(seed)
    head = ClassifierConfig(num_labels=spec.num_labels, pooling=a.pooling, dropout=a.dropout, labels=list(spec.labels))
    module, head_names = backend.build(head)
    if a.mode == "lora":
        add_attention_lora(module, backend.family, a.lora_rank, a.lora_alpha)
        for n, p in module.named_parameters():
            p.requires_grad_("lora_" in n or n in head_names)
    elif a.routers == "frozen":
        frozen = freeze_routers(module)
        if seed == a.seeds[0]:
            log(f"    {spec.name}: {frozen:,} router parameters frozen (--routers frozen)")
    params = [p for p in module.parameters() if p.requires_grad]
    n_train = len(data["train"])
    y = torch.tensor(labels["train"], dtype=torch.float32 if spec.is_regression else torch.long)
    # Regression on [0, 1]: on STS-B's 0-5 a fresh head's MSE gradients are 5x larger (against the clip at
    # 1) and a short run spends its steps reaching the targets' mean; the scale goes back into the head below.
    scale = target_scale(spec, labels["train"]) if a.target_scale == "max" else 1.0
    if scale != 1.0:
        y = y / scale

    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = classification_loss(backend.logits(module, backend.collate([data["train"][i] for i in idx])), y[idx])
        return loss, {"loss": loss}

    fit(
        module,
        params,
        FitConfig(hp.lr, hp.epochs, steps_per_epoch(n_train, a.batch_size)),
        lambda epoch: index_batches(n_train, a.batch_size, seed * 1000 + epoch),
        step_loss,
        lambda epoch, m: log(f"    {spec.name} seed {seed} epoch {epoch + 1}/{hp.epochs}: train loss {m['loss']:.4f}"),
        progress=f"    {spec.name} seed {seed} lr {hp.lr:g}",
    )
    if scale != 1.0:
        fold_output_scale(module, head_names, scale)
    results, all_scores = {}, {}
    for split in data:
        if split == "train":
            continue
        scores = predict(backend, module, data[split], a.eval_batch_size, spec.is_regression)
        m = task_metrics(spec.metrics, scores, labels[split])
        results[split], all_scores[split] = {**m, "score": task_score(m, spec.main)}, scores
    return results, all_scores, module, head, sum(p.numel() for p in params)


def grid(a: Protocol) -> list[Hyper]:
    """The selection grid (lr-major order, which breaks ties); one point when nothing is to be selected."""
    lrs = a.select_lr or [a.lr]
    return [Hyper(lr, ep) for lr in lrs for ep in (a.select_epochs or [a.epochs])]


def select(
    backend, spec, data: dict[str, list[dict]], labels: dict[str, np.ndarray], a: Protocol, log, force: bool = False
) -> tuple[Hyper, dict, dict | None]:
    """Choose (lr, epochs) for one task on a held-out slice of its training subset (never dev or test);
    ``force``: score even a one-point grid on the slice (``--holdout-only``). Third: the chosen point's
    predictions on the slice as a predictions.json task entry (split ``holdout``), for paired comparisons
    of models probed on the same slice; None when nothing was selected."""
    points = grid(a)
    if len(points) == 1 and not force:
        return points[0], {}, None
    fit_idx, hold_idx = holdout_split(labels["train"], a.holdout, a.subset_seed + 1, spec.is_regression)
    sub = {"train": [data["train"][i] for i in fit_idx], "holdout": [data["train"][i] for i in hold_idx]}
    sub_labels = {"train": labels["train"][fit_idx], "holdout": labels["train"][hold_idx]}
    tried, held_scores = [], []
    for hp in points:
        res, scores, _, _, _ = finetune_one(backend, spec, sub, sub_labels, a, a.seeds[0], lambda *_: None, hp)
        tried.append({"lr": hp.lr, "epochs": hp.epochs, "holdout_score": res["holdout"]["score"]})
        held_scores.append(scores["holdout"])
        log(f"  {spec.name} select lr {hp.lr:g} epochs {hp.epochs}: holdout score {res['holdout']['score']:.4f}")
    best = max(range(len(tried)), key=lambda i: (tried[i]["holdout_score"], -i))  # ties: the earlier point
    chosen = points[best]
    log(f"  {spec.name} chose lr {chosen.lr:g}, {chosen.epochs} epochs ({len(fit_idx)} fit / {len(hold_idx)} holdout)")
    const = constant_scores(sub_labels["train"], len(hold_idx), spec.is_regression, spec.num_labels)
    record = task_record(
        spec.metrics,
        spec.main,
        "holdout",
        sub_labels["train"],
        spec.is_regression,
        spec.num_labels,
        {"holdout": sub_labels["holdout"]},
        {"holdout": {a.seeds[0]: held_scores[best]}},
    )
    return (
        chosen,
        {
            "fit_examples": len(fit_idx),
            "holdout_examples": len(hold_idx),
            # the trivial predictor (majority / mean label of the fit rows) on the same slice: what a score there means
            "holdout_constant_score": task_score(task_metrics(spec.metrics, const, sub_labels["holdout"]), spec.main),
            "seed": a.seeds[0],
            "grid": tried,
            "chosen": dataclasses.asdict(chosen),
        },
        record,
    )


def intervals(spec, seed_scores: list[np.ndarray], gold: np.ndarray, seed: int) -> np.ndarray:
    """Bootstrap draws of the seed-mean task score: each draw resamples the evaluation rows once for all seeds.
    ``seed`` is the run's; each task draws from its own (``task_seed``), the same for every model."""

    def score(idx):
        return float(
            np.mean([task_score(task_metrics(spec.metrics, s[idx], gold[idx]), spec.main) for s in seed_scores])
        )

    return bootstrap_draws(score, len(gold), task_seed(seed, spec.name))


def prediction_record(spec, seeds, seed_scores: list[dict], labels: dict, splits: list[str]) -> dict:
    """This task's entry in predictions.json (``scoring.predictions.task_record``)."""
    return task_record(
        spec.metrics,
        spec.main,
        report_split(spec),
        labels["train"],
        spec.is_regression,
        spec.num_labels,
        {s: labels[s] for s in splits},
        {s: {seed: sc[s] for seed, sc in zip(seeds, seed_scores)} for s in splits},
    )


def report_split(spec) -> str:
    return "test" if "test" in spec.splits else "dev"


def markdown(summary: dict) -> str:
    rows = [
        "| task | split | metric | median | min – max | seeds | seed mean [95 % CI] | constant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in summary["tasks"].items():
        for split, ms in t["summary"].items():
            for metric, s in ms.items():
                if metric == "score" and len(ms) == 2:
                    continue  # one metric: the score is that metric
                extra = " | |"
                if metric == "score" or len(ms) == 2:  # the task score's row carries its interval and baseline
                    lo, hi = t["ci95"][split]
                    extra = (
                        f" | {100 * t['seed_mean'][split]:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] | "
                        f"{100 * t['constant'][split]:.2f} |"
                    )
                rows.append(
                    f"| {name} | {split} | {metric} | {100 * s['median']:.2f} | "
                    f"{100 * s['min']:.2f} – {100 * s['max']:.2f} | {s['n']}{extra}"
                )
    avg = summary["glue_average"]
    lo, hi = avg["ci95"]
    rows.append(
        f"| **GLUE average** | {', '.join(f'{k} {v}' for k, v in avg['splits'].items())} | score | "
        f"**{100 * avg['median_of_task_medians']:.2f}** | | | {100 * avg['seed_mean']:.2f} "
        f"[{100 * lo:.2f}, {100 * hi:.2f}] | {100 * avg['constant']:.2f} |"
    )
    args = summary["args"]
    hyper = f"{args['epochs']} epochs, lr {args['lr']:g}"
    if any(t.get("selection") for t in summary["tasks"].values()):
        hyper = (
            f"lr and epochs chosen per task on a held-out {100 * args['holdout']:g} % of its training subset "
            f"(grid lr {', '.join(f'{x:g}' for x in args['select_lr'] or [args['lr']])} × epochs "
            f"{', '.join(str(x) for x in args['select_epochs'] or [args['epochs']])}; seed {args['seeds'][0]}): "
            + "; ".join(f"{n} {t['lr']:g}/{t['epochs']}" for n, t in summary["tasks"].items())
        )
    head = (
        f"Model `{summary['model']}` ({summary['backend']}), mode {args['mode']}, {hyper}, "
        f"≤ {args['max_train'] or 'all'} training examples per task (stratified, subset seed "
        f"{args['subset_seed']}), batch {args['batch_size']}, seeds {args['seeds']}. Scores ×100; a task's "
        "score is the mean of its metrics; constant: the majority training label (STS-B: the mean target).\n"
    )
    return head + "\n" + "\n".join(rows) + "\n"


def load_task_data(name: str, a) -> dict[str, list[Example]]:
    return load_local(name, a.glue_dir) if a.glue_source == "local" else load_hf(name)


def run(a: argparse.Namespace, log=print) -> dict:
    """The whole run for ``main``'s parsed arguments; the fine-tuning functions get them as a ``Protocol``."""
    proto = Protocol.from_args(a)
    tasks = [task_spec(t) for t in task_names(a.tasks)]
    raw = {spec.name: load_task_data(spec.name, a) for spec in tasks}  # every layout checked before training
    backend = open_backend(a.model)
    if a.save_model and backend.kind != "native" and a.mode == "lora":
        raise InputError("--save-model with --mode lora is for native models only")
    if a.threads:
        torch.set_num_threads(a.threads)
    summary = {"model": a.model, "backend": f"{backend.kind}/{backend.family}", "args": vars(a), "tasks": {}}
    t_all = time.time()
    draws: dict[str, np.ndarray] = {}
    predictions: dict[str, dict] = {}  # per task and split: gold and each seed's predictions (predictions.json)
    for spec in tasks:
        reg = spec.is_regression
        splits = {
            s: subset_examples(ex, a.max_train if s == "train" else a.max_eval, a.subset_seed, reg)
            for s, ex in raw[spec.name].items()
        }
        train = splits["train"]
        data = {s: backend.encode([e.texts for e in ex], a.max_len) for s, ex in splits.items()}
        labels = {s: np.array([e.label for e in ex]) for s, ex in splits.items()}
        per_seed, t0 = [], time.time()
        log(
            f"== {spec.name}: {len(train)} training examples, "
            f"{', '.join(f'{s} {len(v)}' for s, v in splits.items() if s != 'train')}"
        )
        hp, selection, held = select(backend, spec, data, labels, proto, log, force=a.holdout_only)
        if a.holdout_only:  # the held-out slice of train only: dev and test are never scored
            summary["tasks"][spec.name] = {"train_examples": len(train), "selection": selection}
            predictions[spec.name] = held
            continue
        seed_scores = []
        for i, seed in enumerate(a.seeds):
            res, scores, module, head, trainable = finetune_one(backend, spec, data, labels, proto, seed, log, hp)
            per_seed.append({"seed": seed, **res})
            seed_scores.append(scores)
            log(
                f"  {spec.name} seed {seed}: "
                + "  ".join(f"{s} " + " ".join(f"{k} {v:.4f}" for k, v in r.items()) for s, r in res.items())
            )
            if a.save_model and i == 0:
                out = os.path.join(a.save_model, spec.name)
                with OutputDir(out, overwrite=True) as tmp:
                    backend.save(
                        module,
                        head,
                        tmp,
                        {"tool": "evaluation.glue", "task": spec.name, "seed": seed, "mode": a.mode, **res},
                    )
        splits_eval = [s for s in per_seed[0] if s != "seed"]
        const = {
            s: task_score(
                task_metrics(
                    spec.metrics, constant_scores(labels["train"], len(labels[s]), reg, spec.num_labels), labels[s]
                ),
                spec.main,
            )
            for s in splits_eval
        }
        task_draws = {s: intervals(spec, [sc[s] for sc in seed_scores], labels[s], a.subset_seed) for s in splits_eval}
        draws[spec.name] = task_draws[report_split(spec)]
        predictions[spec.name] = prediction_record(spec, a.seeds, seed_scores, labels, splits_eval)
        summary["tasks"][spec.name] = {
            "train_examples": len(train),
            "trainable_parameters": trainable,
            "lr": hp.lr,
            "epochs": hp.epochs,
            "selection": selection,
            "seconds": round(time.time() - t0, 1),
            "per_seed": per_seed,
            "summary": {s: {m: summarize([r[s][m] for r in per_seed]) for m in per_seed[0][s]} for s in splits_eval},
            "seed_mean": {s: float(np.mean([r[s]["score"] for r in per_seed])) for s in splits_eval},
            "ci95": {s: list(percentile_ci(d)) for s, d in task_draws.items()},
            "constant": const,
        }
    if a.holdout_only:
        summary["seconds"] = round(time.time() - t_all, 1)
        summary["holdout_average"] = float(
            np.mean([max(g["holdout_score"] for g in t["selection"]["grid"]) for t in summary["tasks"].values()])
        )
        with OutputDir(a.out, overwrite=True) as tmp:
            with open(os.path.join(tmp, "results.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
            with open(os.path.join(tmp, "predictions.json"), "w", encoding="utf-8") as f:  # split "holdout" only
                json.dump({"subset_seed": a.subset_seed, "tasks": predictions}, f, separators=(",", ":"))
        return summary
    scores = {n: t["summary"][report_split(TASKS[n])]["score"]["median"] for n, t in summary["tasks"].items()}
    rep = {n: report_split(TASKS[n]) for n in scores}
    tasks_out = summary["tasks"]
    summary["glue_average"] = {
        "median_of_task_medians": float(np.mean(list(scores.values()))),
        "task_scores": scores,
        "splits": rep,
        "seed_mean": float(np.mean([tasks_out[n]["seed_mean"][rep[n]] for n in scores])),
        "ci95": list(percentile_ci(np.mean([draws[n] for n in scores], axis=0))),
        "constant": float(np.mean([tasks_out[n]["constant"][rep[n]] for n in scores])),
        "constant_task_scores": {n: tasks_out[n]["constant"][rep[n]] for n in scores},
    }
    # per-seed average too, for a spread of the average itself
    per_seed_avg = [
        float(np.mean([summary["tasks"][n]["per_seed"][i][report_split(TASKS[n])]["score"] for n in scores]))
        for i in range(len(a.seeds))
    ]
    summary["glue_average"]["per_seed"] = summarize(per_seed_avg)
    summary["seconds"] = round(time.time() - t_all, 1)
    with OutputDir(a.out, overwrite=True) as tmp:
        with open(os.path.join(tmp, "results.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(tmp, "results.md"), "w", encoding="utf-8") as f:
            f.write(markdown(summary))
        with open(os.path.join(tmp, "predictions.json"), "w", encoding="utf-8") as f:
            json.dump({"subset_seed": a.subset_seed, "tasks": predictions}, f, separators=(",", ":"))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.glue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="native model dir, HF export of one, or a HF BERT-family model dir")
    p.add_argument("--out", required=True, help="results directory (results.json, results.md)")
    p.add_argument(
        "--glue-source",
        choices=("local", "hf"),
        default="local",
        help="local: --glue-dir; hf: the official GLUE via HF datasets (network)",
    )
    p.add_argument("--glue-dir", help="directory with CoLA/ SST-2/ STS-B/ MRPC/ RTE/ (--glue-source local)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        metavar="TASK",
        help=f"GLUE tasks, {TASKS_SYNTAX}; from {', '.join(TASKS)} (any case, hyphen optional: sst2 = SST-2)",
    )
    p.add_argument("--mode", choices=MODES, default="full")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the median and spread are reported")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="training examples per task: a seeded label-stratified random subset (0: all)",
    )
    p.add_argument("--max-eval", type=int, default=0, help="dev/test examples, subset the same way (0: all)")
    p.add_argument(
        "--subset-seed",
        type=int,
        default=0,
        help="seed of the subsets and the bootstrap (keep it fixed across the models you compare)",
    )
    p.add_argument("--lr", type=float, default=None, help="default 5e-5 full, 5e-4 lora")
    p.add_argument(
        "--select-lr",
        default="",
        help="comma-separated learning rates to choose from per task on the held-out slice "
        "(see Hyper-parameter selection above; default: no selection, --lr)",
    )
    p.add_argument(
        "--select-epochs",
        default="",
        help="comma-separated epoch counts to choose from the same way (default: --epochs)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each task's training subset held out for the selection, label-stratified",
    )
    p.add_argument(
        "--holdout-only",
        action="store_true",
        help="score the selection grid (or --lr/--epochs) on the held-out slice of train and stop: dev and test "
        "are never scored (for choices made before a final table; results.json's selection and "
        "holdout_average, the mean over tasks of each task's best grid point; predictions.json holds the best "
        "point's predictions on the slice, split 'holdout', for paired comparisons: python -m evaluation.compare)",
    )
    p.add_argument(
        "--routers",
        choices=ROUTERS,
        default="train",
        help="--mode full on a model with routers (MoL, LoRA-Mixer): train them with the rest (default) or keep "
        "the pretrained routing (frozen); a no-op for a model without routers, so every row "
        "of a comparison can share it. --mode lora never trains them",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-len", type=int, default=128, help="tokens per example (pairs truncated longest-first)")
    p.add_argument(
        "--pooling",
        choices=("cls", "mean"),
        default="mean",
        help="our models and ModernBERT (BERT uses its own pooler)",
    )
    p.add_argument("--dropout", type=float, default=0.1, help="classifier dropout (our head)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument(
        "--target-scale",
        choices=("max", "none"),
        default="max",
        help="regression (STS-B): max trains on targets divided by the largest training target "
        "and folds that factor into the head's output layer, so predictions and a saved "
        "model are on the task's scale; none trains on the raw 0-5",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--save-model", help="keep the first seed's model per task under this directory")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``parser()``'s arguments with ``--tasks`` resolved to the tasks' names (``sst2,mrpc`` and ``SST-2 MRPC``
    alike); an unknown task stops here, exit 2, with the allowed names."""
    p = parser()
    a = p.parse_args(argv)
    try:
        a.tasks = task_names(a.tasks)
    except GlueDataError as e:
        p.error(str(e))
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        a.seeds = [int(s) for s in str(a.seeds).split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {a.seeds!r}: comma-separated integers", file=sys.stderr)
        return 2
    try:
        a.select_lr = [float(x) for x in a.select_lr.split(",") if x.strip()]
        a.select_epochs = [int(x) for x in a.select_epochs.split(",") if x.strip()]
    except ValueError:
        print(
            f"error: --select-lr {a.select_lr!r} / --select-epochs {a.select_epochs!r}: comma-separated "
            "numbers (learning rates; whole epoch counts)",
            file=sys.stderr,
        )
        return 2
    if a.glue_source == "local" and not a.glue_dir:
        print("error: --glue-dir is required with --glue-source local", file=sys.stderr)
        return 2
    a.lr = a.lr if a.lr is not None else (5e-5 if a.mode == "full" else 5e-4)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        summary = run(a)
    except (GlueDataError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.holdout_only:
        for name, t in summary["tasks"].items():
            grid_line = ", ".join(
                f"lr {g['lr']:g} x {g['epochs']} ep: {100 * g['holdout_score']:.2f}" for g in t["selection"]["grid"]
            )
            print(f"{name} (held-out {t['selection']['holdout_examples']} training rows): {grid_line}")
        print(f"held-out average {100 * summary['holdout_average']:.2f} -> {a.out}/results.json")
        return 0
    print(markdown(summary))
    print(f"-> {a.out}/results.json, results.md, predictions.json ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
