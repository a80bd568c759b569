"""Which distillation objective keeps the teacher's sentence-pair skill? Chosen on dev and held-out train only.

    python studies/distill_objectives.py --glue-dir ../shared/data/glue --out runs/distill-objectives

Every variant distils the replication's default student (b) with ``studies/replicate_glue.py --rows b
--skip-glue``: the same corpus, shards, init and token budget (``--steps`` × 4,096 tokens), one change to
the objective (``pretrain/distill.py``):
  base         hidden-state cosine on each group's output (2 of them) + MLM weight 1 (today's default)
  application  hidden-state cosine on every application's output (6: the teacher's 6 layers)
  relation     base + MiniLMv2 self-attention relations of the last layer (weight 1)
  app+rel      application + relation
  mlm0.1       base with MLM weight 0.1
  mlm0         base with MLM weight 0 (the teacher alone)
  lower        base from the init whose shared blocks copy teacher layers 0 and 1 (``--layer-select lower``)
  even         base from the init whose shared blocks copy teacher layers 0 and 5 (``--layer-select even``)
and each distinct init undistilled (step 0) as the reference. ``--layer-select`` sets every other variant's
init (default: the replication's), so the objectives can be compared again on the chosen init.
Scored without any reported split (issue 43):
  sts-dev      zero-shot STS-B **dev** Spearman ×100 (``evaluation.embedding_sts``; test is not encoded)
  holdout      STS-B and MRPC fine-tuned on 80 % of a seeded stratified training subset (``--probe-train``
               rows per task), scored on the held-out 20 % (``evaluation.glue --holdout-only``: dev and
               test are never scored); per task and their mean
The constant predictor's held-out scores frame the probe (0 for STS-B's correlation; MRPC's majority
class); every variant is compared with base and with its step 0 on the same held-out rows and bootstrap
resamples (paired; "not resolved" where the interval includes 0). Stages are cached under OUT (the corpus
and shards are built once, in OUT/data, and linked into each variant's directory). Output: OUT/objectives.md,
OUT/objectives.json, OUT/objectives.png.
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

VARIANTS = {
    "base": ("hidden cosine on group outputs, MLM 1 (default)", []),
    "application": ("hidden cosine on every application", ["--hidden-at", "application"]),
    "relation": ("base + attention relations (weight 1)", ["--relation-weight", "1"]),
    "app+rel": ("application + relations", ["--hidden-at", "application", "--relation-weight", "1"]),
    "mlm0.1": ("base, MLM weight 0.1", ["--mlm-weight", "0.1"]),
    "mlm0": ("base, MLM weight 0", ["--mlm-weight", "0"]),
    "lower": ("base, init from teacher layers 0, 1", ["--layer-select", "lower"]),
    "even": ("base, init from teacher layers 0, 5", ["--layer-select", "even"]),
}
INIT_VARIANTS = ("lower", "even")  # variants that change the init, not the objective
PROBE_TASKS = ("STS-B", "MRPC")


def sh(cmd: list[str], log: str) -> None:
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "a", encoding="utf-8") as f:
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def distil(name: str, a: argparse.Namespace) -> tuple[str, str]:
    """The variant's distilled student and step-0 init (native directories), built or cached."""
    out = os.path.join(a.out, name)
    os.makedirs(out, exist_ok=True)
    data = os.path.join(a.out, "data")
    for sub in ("corpus", "shards"):  # built once: the first variant's, linked into the others
        mine, shared = os.path.join(out, sub), os.path.join(data, sub)
        if os.path.isdir(shared) and not os.path.lexists(mine):
            os.symlink(shared, mine)
    native = os.path.join(out, "native", "b")
    if not os.path.isfile(os.path.join(native, "config.json")):
        cmd = [sys.executable, "studies/replicate_glue.py", "--glue-dir", a.glue_dir, "--out", out, "--rows", "b"]
        cmd += ["--skip-glue", "--steps", str(a.steps), *VARIANTS[name][1]]
        if name not in INIT_VARIANTS and a.layer_select:
            cmd += ["--layer-select", a.layer_select]
        if a.smoke:
            cmd.append("--smoke")
        t0 = time.time()
        sh(cmd, os.path.join(a.out, f"{name}.log"))
        print(f"  {name}: distilled in {time.time() - t0:.0f} s", flush=True)
    if not os.path.exists(os.path.join(data, "shards")) and not a.smoke:
        os.makedirs(data, exist_ok=True)
        for sub in ("corpus", "shards"):
            os.rename(os.path.join(out, sub), os.path.join(data, sub))
            os.symlink(os.path.join(data, sub), os.path.join(out, sub))
    return native, os.path.join(out, "init", "b")


def probe(path: str, out: str, a: argparse.Namespace) -> dict:
    res_path = os.path.join(out, "results.json")
    if not os.path.isfile(os.path.join(out, "predictions.json")):  # older probes lack it: paired needs it
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [sys.executable, "-m", "evaluation.glue", path, "--glue-dir", a.glue_dir, "--out", out, "--tasks"]
        cmd += [*PROBE_TASKS, "--holdout-only", "--max-train", str(a.probe_train), "--holdout", "0.2"]
        cmd += ["--seeds", "0", "--epochs", "3", "--lr", "1e-4", "--threads", "2"]
        sh(cmd, out + ".log")
    with open(res_path, encoding="utf-8") as f:
        res = json.load(f)
    sel = {t: res["tasks"][t]["selection"] for t in PROBE_TASKS}
    scores = {t: sel[t]["grid"][0]["holdout_score"] for t in PROBE_TASKS}
    out = {**scores, "mean": sum(scores.values()) / len(scores)}
    if all("holdout_constant_score" in sel[t] for t in PROBE_TASKS):  # the same slices for every variant
        const = {t: sel[t]["holdout_constant_score"] for t in PROBE_TASKS}
        out["constant"] = {**const, "mean": sum(const.values()) / len(const)}
    return out


def paired_holdout(rows: dict, out: str) -> dict:
    """Every variant minus the reference (base, else the first distilled row) and minus its step 0, on the
    same held-out rows and bootstrap resamples (``evaluation.compare``); {} when a probe predates the
    held-out predictions (``evaluation.glue --holdout-only`` writes them since 2026-12-07)."""
    from evaluation.compare import all_draws, load_predictions, paired
    from model.native_format import InputError

    names = list(rows)
    try:
        recs = [load_predictions(os.path.join(out, "probe", probe_slug(n))) for n in names]
    except InputError:
        return {}
    d = all_draws(recs, list(PROBE_TASKS))
    draws = {**d["tasks"], "mean": d["average"]}
    distilled = [n for n in names if not n.startswith("step 0")]
    ref = "base" if "base" in names else (distilled[0] if distilled else None)
    step0 = next((s for s in names if s.startswith("step 0")), None)
    out_pairs = {}
    for n in distilled:
        for other in (ref, step0):
            if other and other != n:
                i, j = names.index(n), names.index(other)
                out_pairs[f"{n} - {other}"] = {t: paired(*draws[t], i, j) for t in draws}
    return out_pairs


def probe_slug(name: str) -> str:
    return name.replace(" ", "").replace("(", "-").replace(")", "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="studies/distill_objectives.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--glue-dir", required=True)
    p.add_argument("--out", default="runs/distill-objectives")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=120, help="pretraining steps per variant (4,096 tokens each)")
    p.add_argument(
        "--probe-train", type=int, default=2000, help="training rows per probe task (80 %% fit, 20 %% held out)"
    )
    p.add_argument(
        "--layer-select",
        default="",
        choices=("", "average", "even", "lower"),
        help="the init of every variant but lower and even (studies/replicate_glue.py --layer-select; "
        "default: the replication's)",
    )
    p.add_argument("--smoke", action="store_true", help="the shipped corpus, 4 steps, a 40-row probe: machinery only")
    a = p.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; allowed: {', '.join(VARIANTS)}")
    if a.smoke:
        a.probe_train = 40
    a.out = os.path.abspath(a.out)  # the links to OUT/data must resolve from each variant's directory
    os.makedirs(a.out, exist_ok=True)
    from evaluation.embedding_sts import zero_shot_sts
    from fileio import write_json

    rows: dict[str, dict] = {}
    for name in names:
        native, init = distil(name, a)
        # variants with the same init share one step-0 row (same seed and arguments, the same weights)
        init_name = name if name in INIT_VARIANTS else (a.layer_select or "default")
        step0 = "step 0" if init_name == "default" else f"step 0 ({init_name})"
        if step0 not in rows:
            rows[step0] = {"what": f"the {init_name} init, undistilled", "path": init}
        rows[name] = {"what": VARIANTS[name][0], "path": native}
    for name, r in rows.items():
        t0 = time.time()
        r["sts_dev"] = zero_shot_sts(r["path"], a.glue_dir, splits=("dev",))["dev"]["spearman"]
        r["holdout"] = probe(r["path"], os.path.join(a.out, "probe", probe_slug(name)), a)
        r["seconds_scoring"] = round(time.time() - t0, 1)
        print(f"  {name}: sts-dev {r['sts_dev']:.1f}, holdout {r['holdout']}", flush=True)
    lines = [
        "| variant | objective | zero-shot STS-B dev Spearman | STS-B held-out (Pearson+Spearman)/2 | "
        "MRPC held-out (acc+F1)/2 | held-out mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        h = r["holdout"]
        lines.append(
            f"| {name} | {r['what']} | {r['sts_dev']:.1f} | {100 * h['STS-B']:.1f} | {100 * h['MRPC']:.1f} | "
            f"{100 * h['mean']:.1f} |"
        )
    const = next((r["holdout"]["constant"] for r in rows.values() if "constant" in r["holdout"]), None)
    if const:
        lines.append(
            f"| constant predictor | majority / mean label of the fit rows | 0.0 | {100 * const['STS-B']:.1f} | "
            f"{100 * const['MRPC']:.1f} | {100 * const['mean']:.1f} |"
        )
    pairs = paired_holdout(rows, a.out)
    if pairs:
        lines += [
            "",
            "| paired difference on the held-out rows (×100) | STS-B | MRPC | mean |",
            "|---|---|---|---|",
        ]
        from evaluation.compare import diff_cell

        for name, d in pairs.items():
            lines.append(f"| {name} | " + " | ".join(diff_cell(d[t]) for t in [*PROBE_TASKS, "mean"]) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "objectives.md"), "w", encoding="utf-8") as f:
        f.write(md)
    write_json(os.path.join(a.out, "objectives.json"), {"args": vars(a), "rows": rows, "paired": pairs})
    plot(rows, os.path.join(a.out, "objectives.png"))
    print(md)
    return 0


def plot(rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.5), sharey=True)
    axes[0].barh(range(len(names)), [rows[n]["sts_dev"] for n in names], color="#4c72b0")
    axes[0].set_title("zero-shot STS-B dev Spearman ×100")
    axes[1].barh(range(len(names)), [100 * rows[n]["holdout"]["mean"] for n in names], color="#dd8452")
    axes[1].set_title("fine-tuned STS-B + MRPC, held-out train slice")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
