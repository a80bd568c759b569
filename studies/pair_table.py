"""One table of GLUE runs scored on the same rows, with paired differences and shares of a reference's margin.

    python studies/pair_table.py --runs a=runs/glue/a b=runs/glue/b c=runs/glue/c --reference a \\
        --pairs b-c b-a --out studies/results/replication_full/table

Each run is an ``evaluation.glue`` output directory (its ``predictions.json``), or several joined by commas
when one model's tasks or seeds were fine-tuned in separate runs (``b=runs/glue/b,runs/glue3/b``: merged by
``evaluation.compare.merge_predictions``, which refuses runs that scored other rows); every run and the constant
predictor are scored once on the same bootstrap resamples (``evaluation.compare.all_draws``), so each
difference's interval is paired, and each row's average as a share of the reference's average and of the
reference's margin above the constant predictor gets an interval from the same draws (each draw resamples the
rows and each run's seeds). A difference is "resolved" only when its 95 % interval excludes 0. Rows with several
seeds also get each seed's score per task, since a seed mean can hide a failed seed.
Output: OUT.md (scores ×100), OUT.json (scores as fractions) and OUT.png (each row's share of the margin).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="studies/pair_table.py", description=__doc__)
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="NAME=DIR[,DIR...]: the evaluation.glue output directories (several: one model's runs merged)",
    )
    p.add_argument("--reference", required=True, help="the NAME whose margin the shares are of (e.g. the teacher)")
    p.add_argument("--pairs", nargs="*", default=[], help="A-B: the paired differences to report")
    p.add_argument("--out", required=True, help="output path without extension (.md and .json are written)")
    a = p.parse_args(argv)
    from evaluation.compare import all_draws, diff_cell, load_predictions, margin_share, merge_predictions, paired
    from scoring.intervals import percentile_ci
    from data_prep.glue_data import TASKS
    from fileio import write_json
    from model.native_format import InputError

    try:
        bad = [r for r in a.runs if "=" not in r]
        if bad:
            raise InputError(f"--runs: {bad[0]!r} is not NAME=DIR[,DIR...]")
        runs = dict(r.split("=", 1) for r in a.runs)
        names = list(runs)
        if a.reference not in runs:
            raise InputError(f"{a.reference!r} is not among --runs ({', '.join(names)})")
        pair_names = [split_pair(p, names) for p in a.pairs]
        preds = [merge_predictions([load_predictions(d) for d in runs[n].split(",")]) for n in names]
        scored = [set(r["tasks"]) for r in preds]
        tasks = [t for t in TASKS if all(t in s for s in scored)]  # GLUE's order, whatever order the runs had
        left_out = sorted(set().union(*scored) - set(tasks))
        if left_out:
            print(f"note: left out {', '.join(left_out)}: not scored by every run", file=sys.stderr)
        draws = all_draws(preds, tasks)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = list(draws["tasks"])
    ref = names.index(a.reference)
    const = len(names)  # all_draws puts the constant predictor last
    rows = {}
    for i, n in enumerate([*names, "constant"]):
        rows[n] = {t: float(draws["tasks"][t][0][i]) for t in tasks}
        rows[n]["average"] = float(draws["average"][0][i])
        if i < const:
            rows[n]["share"] = margin_share(*draws["average"], i, ref)
            point, avg_draws = draws["average"]  # the row's average over the reference's, on the same draws
            lo, hi = percentile_ci(avg_draws[i] / avg_draws[ref])
            rows[n]["of_reference"] = {"ratio": float(point[i] / point[ref]), "ci95": [lo, hi]}
    pairs = {}
    for x, y in pair_names:
        i, j = names.index(x), names.index(y)
        pairs[f"{x} - {y}"] = {t: paired(*draws["tasks"][t], i, j) for t in tasks}
        pairs[f"{x} - {y}"]["average"] = paired(*draws["average"], i, j)
    lines = [
        "| row | "
        + " | ".join(tasks)
        + f" | average | of {a.reference}'s average [95 % CI] | share of {a.reference}'s margin [95 % CI] |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for n, r in rows.items():
        share = r.get("share")
        cell = (
            f"{100 * share['share']:.0f} % [{100 * share['ci95'][0]:.0f}, {100 * share['ci95'][1]:.0f}]"
            if share
            else ""
        )
        of = r.get("of_reference")
        of_cell = f"{100 * of['ratio']:.1f} % [{100 * of['ci95'][0]:.1f}, {100 * of['ci95'][1]:.1f}]" if of else ""
        lines.append(
            f"| {n} | "
            + " | ".join(f"{100 * r[t]:.1f}" for t in tasks)
            + f" | {100 * r['average']:.1f} | {of_cell} | {cell} |"
        )
    per_seed = {n: seed_table(preds[i], tasks) for i, n in enumerate(names)}
    spread = {n: t for n, t in per_seed.items() if any(len(v) > 1 for v in t.values())}
    if spread:  # a seed mean can hide a failed seed: each seed's score on all rows
        lines += ["", "Each seed's score (×100, all rows; seeds in order):", ""]
        lines += [
            f"- {n}: "
            + "; ".join(
                f"{t} " + " / ".join(f"{100 * x:.1f}" for x in t_scores.values()) for t, t_scores in tab.items()
            )
            for n, tab in spread.items()
        ]
    lines += ["", "| paired difference | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    for name, d in pairs.items():
        lines.append(f"| {name} | " + " | ".join(diff_cell(d[t]) for t in [*tasks, "average"]) + " |")
    md = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".md", "w", encoding="utf-8") as f:
        f.write(md)
    write_json(
        a.out + ".json", {"runs": runs, "reference": a.reference, "rows": rows, "pairs": pairs, "per_seed": per_seed}
    )
    plot(rows, a.reference, a.out + ".png")
    print(md)
    return 0


def split_pair(pair: str, names: list[str]) -> tuple[str, str]:
    """``A-B`` → (A, B), where A and B are run names that may contain hyphens themselves (``b-e-ema``): the one
    hyphen at which both sides are among ``names``."""
    from model.native_format import InputError

    splits = [(pair[:i], pair[i + 1 :]) for i, ch in enumerate(pair) if ch == "-"]
    found = [(x, y) for x, y in splits if x in names and y in names]
    if len(found) != 1:
        why = "ambiguous" if found else "not two of"
        raise InputError(f"--pairs {pair}: {why} the --runs names ({', '.join(names)}) joined by '-'")
    return found[0]


def seed_table(pred: dict, tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per task, each seed's score on all the report split's rows."""
    import numpy as np

    from evaluation.compare import seed_scores

    out = {}
    for t in tasks:
        rec = pred["tasks"][t]
        split = rec["report_split"]
        scores = seed_scores(rec, split, np.arange(len(rec["splits"][split]["gold"])))
        out[t] = {seed: float(x) for seed, x in zip(rec["splits"][split]["seeds"], scores)}
    return out


def plot(rows: dict, reference: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in rows if "share" in rows[n]]
    share = [100 * rows[n]["share"]["share"] for n in names]
    err = [
        [s - 100 * rows[n]["share"]["ci95"][0] for n, s in zip(names, share)],
        [100 * rows[n]["share"]["ci95"][1] - s for n, s in zip(names, share)],
    ]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), share, xerr=err, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"share of {reference}'s margin over the constant predictor, % [95 % CI]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
