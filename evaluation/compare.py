"""Paired differences between two GLUE runs scored on the same examples, and shares of a reference's margin.

    python -m evaluation.compare runs/glue/b runs/glue/c
    python -m evaluation.compare runs/glue/b runs/glue/c --reference runs/glue/teacher --out runs/b_vs_c.json

Each RUN is an ``evaluation.glue`` output directory (its ``predictions.json``). The two runs must have
scored the same evaluation rows (same subsets, same subset seed: checked through the gold labels). Per
task, on its report split (test where there is one, else dev), every bootstrap draw resamples the rows
once and scores both runs on that same resample, so the interval is of the difference itself (paired),
which is sharper than comparing two unpaired intervals; each draw also resamples each run's seeds, so the
interval covers the fine-tuning seeds' spread as well as the rows'. Each task draws its own resamples
(``scoring.intervals.task_seed``); the average's draws average the tasks' draws. A difference is
**resolved** only when its 95 % interval excludes 0.

With ``--reference R`` (e.g. the teacher), each run's share of R's margin above the constant predictor,
(avg_run − avg_constant) / (avg_R − avg_constant), gets an interval from the same draws.

Output: a markdown table on stdout; ``--out FILE.json`` keeps the numbers. Runs that did not score the
same rows: one line naming the task, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from data_prep.glue_data import GlueDataError, task_names
from fileio import write_json
from model.native_format import InputError
from scoring.intervals import DRAWS, percentile_ci, task_seed
from scoring.metrics import task_metrics, task_score


def load_predictions(run: str) -> dict:
    path = os.path.join(run, "predictions.json") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise InputError(f"{run}: no predictions.json (written by python -m evaluation.glue since 2026-12-07)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def merge_predictions(runs: list[dict]) -> dict:
    """One predictions record from several (other seeds, other tasks) of the same rows: e.g. the seeds of a
    fine-tuning regime, or single-task runs that together cover the tasks. Gold labels must agree."""
    if not runs:
        raise InputError("no runs to merge")
    if len({r["subset_seed"] for r in runs}) != 1:
        raise InputError("the runs used different subset seeds")
    out: dict = {"subset_seed": runs[0]["subset_seed"], "tasks": {}}
    for run in runs:
        for task, rec in run["tasks"].items():
            have = out["tasks"].setdefault(task, {**{k: v for k, v in rec.items() if k != "splits"}, "splits": {}})
            for split, sp in rec["splits"].items():
                dst = have["splits"].setdefault(split, {"gold": sp["gold"], "seeds": {}})
                if dst["gold"] != sp["gold"]:
                    raise InputError(f"{task}: the runs did not score the same {split} rows")
                clash = set(dst["seeds"]) & set(sp["seeds"])
                if clash:
                    raise InputError(f"{task} {split}: seed {sorted(clash)[0]} appears in two runs")
                dst["seeds"].update(sp["seeds"])
    return out


def seed_scores(rec: dict, split: str, idx: np.ndarray) -> np.ndarray:
    """Each seed's score on rows ``idx`` [S]."""
    gold = np.asarray(rec["splits"][split]["gold"])[idx]
    scores = []
    for pred in rec["splits"][split]["seeds"].values():
        m = task_metrics(tuple(rec["metrics"]), np.asarray(pred)[idx], gold)
        scores.append(task_score(m, tuple(rec["main"])))
    return np.asarray(scores, np.float64)


def _seed_mean_score(rec: dict, split: str, idx: np.ndarray) -> float:
    return float(seed_scores(rec, split, idx).mean())


def _constant_score(rec: dict, split: str, idx: np.ndarray) -> float:
    gold = np.asarray(rec["splits"][split]["gold"])[idx]
    if {"pearson", "spearman"} & set(rec["metrics"]):
        return 0.0  # a constant regression prediction: its correlations are 0 by convention
    m = task_metrics(tuple(rec["metrics"]), np.full(len(gold), rec["constant"]), gold)
    return task_score(m, tuple(rec["main"]))


def task_draws(runs: list[dict], task: str, subset_seed: int, draws: int = DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """Per run (and the constant predictor, last): the score on all rows [R+1] and on each resample [R+1, draws];
    every run is scored on the same resamples of the rows. Each draw also resamples each run's seeds (with
    replacement, independently per run, from a stream of its own so the rows' resamples stay the same): a run's
    draw is the mean over its drawn seeds, so a seed that failed widens the interval as a bad row does.
    The point is the mean over all seeds on all rows. One seed: rows only."""
    recs = [r["tasks"][task] for r in runs]
    split = recs[0]["report_split"]
    gold = recs[0]["splits"][split]["gold"]
    for r in recs[1:]:
        if r["splits"].get(split, {}).get("gold") != gold:
            raise InputError(f"{task}: the runs did not score the same {split} rows (different subsets or data)")
    n = len(gold)
    rng = np.random.default_rng(task_seed(subset_seed, task))
    seed_rng = np.random.default_rng([task_seed(subset_seed, task), 1])  # the seeds' resamples
    full = np.arange(n)
    point = np.array([_seed_mean_score(r, split, full) for r in recs] + [_constant_score(recs[0], split, full)])
    out = np.empty((len(recs) + 1, draws))
    for d in range(draws):
        idx = rng.integers(0, n, n)
        drawn: dict[int, float] = {}  # one run passed twice (a reference that is also a row) draws once
        for i, r in enumerate(recs):
            if id(r) not in drawn:
                s = seed_scores(r, split, idx)
                drawn[id(r)] = s[seed_rng.integers(0, len(s), len(s))].mean() if len(s) > 1 else s[0]
            out[i, d] = drawn[id(r)]
        out[-1, d] = _constant_score(recs[0], split, idx)
    return point, out


def all_draws(runs: list[dict], tasks: list[str] | None = None) -> dict:
    """Every run (and the constant predictor, last) scored on the same resamples: per task and for the
    average over tasks, the score on all rows ``point`` [R+1] and on each resample ``draws`` [R+1, draws]."""
    if len({r["subset_seed"] for r in runs}) != 1:
        raise InputError("the runs used different --subset-seed values: they did not score the same rows")
    common = [t for t in runs[0]["tasks"] if all(t in r["tasks"] for r in runs)]
    tasks = tasks or common
    missing = [t for t in tasks if t not in common]
    if missing or not tasks:
        raise InputError(f"tasks not scored by every run: {missing or 'none in common'}")
    per_task = {t: task_draws(runs, t, runs[0]["subset_seed"]) for t in tasks}
    return {
        "tasks": per_task,
        "average": (
            np.mean([p for p, _ in per_task.values()], axis=0),
            np.mean([d for _, d in per_task.values()], axis=0),  # each resample's average over tasks
        ),
    }


def diff_cell(d: dict) -> str:
    """A ``paired`` result as a table cell (×100): ``+1.5 [+0.6, +2.5]``, marked where it is not resolved."""
    lo, hi = d["diff_ci95"]
    mark = "" if d["resolved"] else " (not resolved)"
    return f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}"


def paired(point: np.ndarray, draws: np.ndarray, i: int, j: int) -> dict:
    """Run i minus run j on the same resamples: the difference, its 95 % interval, and whether it excludes 0."""
    lo, hi = percentile_ci(draws[i] - draws[j])
    return {"diff": float(point[i] - point[j]), "diff_ci95": [lo, hi], "resolved": bool(lo > 0 or hi < 0)}


def margin_share(point: np.ndarray, draws: np.ndarray, i: int, ref: int) -> dict:
    """Run i's share of run ``ref``'s margin above the constant predictor (the last row), with its interval."""
    share = (draws[i] - draws[-1]) / (draws[ref] - draws[-1])
    return {"share": float((point[i] - point[-1]) / (point[ref] - point[-1])), "ci95": list(percentile_ci(share))}


def compare(a: dict, b: dict, reference: dict | None = None, tasks: list[str] | None = None) -> dict:
    """Run a minus run b per task and on the average (paired), and with ``reference`` each one's share of
    its margin above the constant predictor."""
    runs = [a, b] + ([reference] if reference else [])
    d = all_draws(runs, tasks)
    per_task = {}
    for t, (point, draws) in d["tasks"].items():
        pr = paired(point, draws, 0, 1)
        per_task[t] = {
            "a": point[0],
            "b": point[1],
            "constant": point[-1],
            "diff": pr["diff"],
            "diff_ci95": pr["diff_ci95"],
        }
    point, draws = d["average"]
    out = {
        "tasks": per_task,
        "average": {"a": point[0], "b": point[1], "constant": point[-1], **paired(point, draws, 0, 1)},
    }
    if reference:
        for i, k in enumerate(("a", "b")):
            ms = margin_share(point, draws, i, 2)
            out["average"][f"share_{k}"], out["average"][f"share_{k}_ci95"] = ms["share"], ms["ci95"]
        out["average"]["reference"] = point[2]
    return out


def markdown(res: dict, name_a: str, name_b: str) -> str:
    rows = [
        f"| task | {name_a} | {name_b} | constant | difference [95 % paired CI] |",
        "|---|---|---|---|---|",
    ]
    for t, r in list(res["tasks"].items()) + [("**average**", res["average"])]:
        lo, hi = r["diff_ci95"]
        rows.append(
            f"| {t} | {100 * r['a']:.2f} | {100 * r['b']:.2f} | {100 * r['constant']:.2f} | "
            f"{100 * r['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] |"
        )
    avg = res["average"]
    rows.append("")
    verdict = "resolved (its interval excludes 0)" if avg["resolved"] else "not resolved (its interval includes 0)"
    rows.append(f"average difference: {verdict}")
    if "share_a" in avg:
        for k, name in (("a", name_a), ("b", name_b)):
            lo, hi = avg[f"share_{k}_ci95"]
            share = 100 * avg[f"share_{k}"]
            rows.append(f"share of the reference's margin, {name}: {share:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_a", help="evaluation.glue output directory (or its predictions.json)")
    p.add_argument("run_b", help="the run to subtract, scored on the same rows")
    p.add_argument("--reference", help="a third run (e.g. the teacher) for shares of its margin")
    p.add_argument("--tasks", nargs="+", help="a subset of the tasks the runs share (default: all of them)")
    p.add_argument("--out", help="write the numbers as JSON here")
    a = p.parse_args(argv)
    try:
        runs = [load_predictions(x) for x in (a.run_a, a.run_b)]
        ref = load_predictions(a.reference) if a.reference else None
        res = compare(*runs, ref, task_names(a.tasks) if a.tasks else None)
    except (InputError, GlueDataError) as e:
        print(f"evaluation.compare: {e}", file=sys.stderr)
        return 2
    print(markdown(res, os.path.basename(os.path.normpath(a.run_a)), os.path.basename(os.path.normpath(a.run_b))))
    if a.out:
        write_json(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
