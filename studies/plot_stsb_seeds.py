"""One dot per fine-tuning seed of STS-B (full training set, test split): which rows fail, and how often.

    python studies/plot_stsb_seeds.py --rows "b=R/b,R/seed1/b" "c=R/c,R/seed1/c" --out studies/results/x.png

Each ``--rows`` entry is NAME=DIR[,DIR...]: ``evaluation.glue`` output directories (their ``results.json``)
that scored STS-B; every seed of every directory becomes a dot at its test score (×100, the mean of Pearson
and Spearman), and a bar marks the row's median. ``--split dev`` plots dev instead. A directory without
STS-B: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def seed_scores(dirs: list[str], split: str) -> list[tuple[int, float]]:
    """(seed, score ×100) for every STS-B seed of ``dirs``."""
    out = []
    for d in dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            task = json.load(f)["tasks"].get("STS-B")
        if task is None:
            raise ValueError(f"{d}/results.json has no STS-B")
        out += [(r["seed"], 100 * r[split]["score"]) for r in task["per_seed"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", required=True, help="NAME=DIR[,DIR...]")
    p.add_argument("--split", choices=("test", "dev"), default="test")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        rows = {n: seed_scores(d.split(","), a.split) for n, d in (r.split("=", 1) for r in a.rows)}
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.55 * len(rows)))
    for i, (name, pts) in enumerate(reversed(list(rows.items()))):
        ys = [s for _, s in pts]
        ax.scatter(ys, [i] * len(ys), s=30, zorder=3)
        ax.plot([np.median(ys)] * 2, [i - 0.3, i + 0.3], color="k", lw=1.5)
        ax.text(101, i, f"{len(ys)} seed{'s' if len(ys) > 1 else ''}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), list(reversed(list(rows))))
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"STS-B {a.split} score ×100 per fine-tuning seed (bar: median)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out, dpi=120)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
