"""Plot BEIR nDCG@10 and SQuAD 2.0 F1 per model with their 95 % intervals, baselines included.

    python studies/plot_squad_beir.py --beir runs/beir/a.json [runs/beir/b.json ...] \\
        --squad runs/squad/a [runs/squad/b ...] --out studies/squad_beir.png [--label PATH=NAME ...]

``--beir`` takes ``evaluation.beir --out`` files, ``--squad`` ``evaluation.squad --out`` directories (their
results.json); each model becomes a bar with its bootstrap interval; the baseline rows (random ranking,
BM25, always "") are drawn in grey. ``--label`` renames a model path. A missing file: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beir", nargs="*", default=[])
    p.add_argument("--squad", nargs="*", default=[])
    p.add_argument("--label", nargs="*", default=[], help="PATH=NAME")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    names = dict(x.split("=", 1) for x in a.label)
    beir, squad = [], []
    try:
        for f in a.beir:
            with open(f, encoding="utf-8") as fh:
                for r in json.load(fh)["rows"]:
                    lo, hi = r["ndcg_at_10_ci95"]
                    beir.append(
                        (names.get(r["model"], r["model"]), r["ndcg_at_10"], lo, hi, r["model"].startswith("baseline"))
                    )
        for d in a.squad:
            with open(os.path.join(d, "results.json"), encoding="utf-8") as fh:
                doc = json.load(fh)
            squad.append(('baseline: always ""', doc["baseline"]["f1"], None, None, True))
            for m in doc["models"]:
                lo, hi = m["ci95_seed_mean"]["f1"]
                squad.append((names.get(m["model"], m["model"]), m["summary"]["f1"]["median"], lo, hi, False))
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (t, rows)
        for t, rows in (("BEIR SciFact nDCG@10 (test)", beir), ("SQuAD 2.0 F1 (eval articles)", squad))
        if rows
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        seen = {}
        for r in rows:  # a baseline repeated per file: once
            seen.setdefault(r[0], r)
        rows = list(seen.values())
        ys = range(len(rows))
        ax.barh(list(ys), [r[1] for r in rows], color=["0.7" if r[4] else "tab:blue" for r in rows])
        for y, r in zip(ys, rows):
            if r[2] is not None:
                ax.plot([r[2], r[3]], [y, y], color="k", lw=1.5)
            ax.text(r[3] if r[3] is not None else r[1], y, f" {r[1]:.3g}", va="center", fontsize=8)
        ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
