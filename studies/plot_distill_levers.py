"""Table and plot of a distillation-lever study: several ``replicate_glue.py --rows b`` runs side by side.

    python studies/plot_distill_levers.py runs/levers/base runs/levers/hw5 ... [--sts sts.json] --out levers.png

Each argument is one ``replicate_glue.py`` OUT directory: its ``replication.json``, and the run's
``runs/b/metrics.jsonl`` for the hidden-state distance (averaged over the last 10 steps). ``--sts`` is an
``evaluation.embedding_sts`` JSON whose keys are those directories' ``native/b`` models. Prints a Markdown
table (the lever, validation MLM, the hidden-state distance, GLUE task medians, their average with the
per-seed range, zero-shot STS-B) and draws the averages with their per-seed ranges. The benchmark is the
runs; this only reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def lever(args: dict) -> str:
    parts = [f"{args['steps']} steps"]
    if args.get("hidden_weight", 1.0) != 1.0:
        parts.append(f"hidden weight {args['hidden_weight']:g}")
    if args.get("pooled_weight", 0.0):
        parts.append(f"pooled weight {args['pooled_weight']:g}")
    if args.get("teacher_layers", "0,5") != "0,5":
        parts.append(f"init layers {args['teacher_layers']}")
    if args.get("lr", 5e-4) != 5e-4:
        parts.append(f"lr {args['lr']:g}")
    if args.get("distill_layers"):
        parts.append(f"distill layers {args['distill_layers']}")
    return ", ".join(parts) if len(parts) > 1 or args["steps"] != 120 else "120 steps (defaults)"


def rows(dirs: list[str], sts: dict) -> list[dict]:
    out = []
    for d in dirs:
        with open(os.path.join(d, "replication.json"), encoding="utf-8") as f:
            doc = json.load(f)
        b = doc["rows"]["b"]
        with open(os.path.join(d, "runs", "b", "metrics.jsonl"), encoding="utf-8") as f:
            tail = [json.loads(x) for x in f if x.strip()][-10:]  # one batch is noisy: the last 10 steps
        zs = next(
            (v for k, v in sts.items() if os.path.abspath(k) == os.path.abspath(os.path.join(d, "native", "b"))), None
        )
        out.append(
            {
                "name": os.path.basename(os.path.normpath(d)),
                "lever": lever(doc["args"]),
                "val": b["val_mlm_loss"],
                "hidden": sum(r.get("distill/hidden", 0) for r in tail) / len(tail),
                "tasks": b["glue"]["task_scores"],
                "avg": b["glue"]["average"],
                "seeds": b["glue"]["average_per_seed"],
                "sts": zs["test"]["score"] if zs else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="studies/plot_distill_levers.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", help="replicate_glue.py OUT directories")
    p.add_argument("--sts", help="evaluation.embedding_sts --out JSON")
    p.add_argument("--out", required=True, help="the PNG to write")
    a = p.parse_args(argv)
    sts = {}
    if a.sts:
        with open(a.sts, encoding="utf-8") as f:
            sts = json.load(f)
    try:
        table = rows(a.runs, sts)
    except (OSError, KeyError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = list(table[0]["tasks"])
    print(
        "| run | lever | val MLM loss | hidden distance (last 10 steps) | "
        + " | ".join(tasks)
        + " | average (median) | per seed min–max | zero-shot STS-B test |"
    )
    print("|---|---|---|---|" + "---|" * (len(tasks) + 3))
    for r in table:
        hidden = f"{r['hidden']:.3f}"
        sts_cell = f"{r['sts']:.1f}" if r["sts"] is not None else "–"
        print(
            f"| {r['name']} | {r['lever']} | {r['val']:.3f} | {hidden} | "
            + " | ".join(f"{100 * r['tasks'][t]:.1f}" for t in tasks)
            + f" | **{100 * r['avg']:.1f}** | {100 * r['seeds']['min']:.1f}–{100 * r['seeds']['max']:.1f} | "
            f"{sts_cell} |"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    names = [r["name"] for r in table]
    avg = [100 * r["avg"] for r in table]
    # the average is the median of the task medians, which can lie outside the per-seed averages' range:
    # the range is drawn as its own segment, not as error bars around the bar
    axes[0].bar(names, avg, color="tab:blue")
    axes[0].vlines(
        range(len(table)),
        [100 * r["seeds"]["min"] for r in table],
        [100 * r["seeds"]["max"] for r in table],
        color="black",
        lw=2,
    )
    axes[0].set_ylabel(f"GLUE probe average ({', '.join(tasks)})")
    axes[0].set_ylim(min(avg) - 5, max(avg) + 5)
    axes[0].set_title("fine-tuned: median of task medians; black: per-seed min–max", fontsize=9)
    if any(r["sts"] is not None for r in table):
        axes[1].bar(names, [r["sts"] or 0 for r in table], color="tab:green")
        axes[1].set_ylabel("zero-shot STS-B test (cosine, ×100)")
        axes[1].set_title("no fine-tuning", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
