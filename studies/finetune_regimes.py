"""Task LoRAs against the LoRA-Mixer regimes, on the same tasks, model and seeds: table, routing heatmap.

    python studies/finetune_regimes.py --model runs/replication/native/b --glue-dir GLUE_DIR \\
        --tasks SST-2 MRPC STS-B RTE --seeds 0,1,2 --out runs/regimes -- --max-train 1000 --max-eval 500
    python studies/finetune_regimes.py --model runs/quickstart/native --tasks data/finetune/sentiment \\
        data/finetune/topic --seeds 0 --out runs/regimes-local

Per seed (every run is ``python -m finetune.train``, so every regime sees the same data and code):
  lora        one LoRA + head per task (single-task reference)
  multitask   one shared LoRA, one head per task, on the mixed training sets
  plug        LoRA-Mixer regime (ii): that seed's task LoRAs as frozen experts, only the routers train
  joint       LoRA-Mixer regime (i): domain-forced stage (--forced-epochs) then routed stage with the
              RSL and expert preservation; the same total number of epochs as the others
  plug-pp, joint-pp (with --per-projection): the same with Wo routed on its own input
  plug-sup, joint-sup (with --router-ce-routed W > 0): the same with the routers also supervised while they
              route (cross-entropy to each task's own expert, weight W; not in the paper)
  joint-topK  (with --joint-top-k K ...): joint with top-K routing in the routed stage and at inference
  joint-chosen (with --preserve-chosen): joint with the preservation over the experts chosen per batch
  plug-folded, joint-folded (unless --no-folded): each task's classifier made of that mixer by
              ``tools/merge_mixer.py`` (the experts added into Wqkv/Wo, weighted by the task's routing
              shares averaged over training; --fold-method): what routing buys over one merged adapter per task
Extra arguments after ``--`` go to every run (e.g. ``-- --max-train 1000 --lr 1e-3``). Runs are cached
under OUT (a run whose results.json exists is not repeated). Output: OUT/regimes.md (table: each task's
score on its report split — test where the task has one, else dev — as the median over seeds and the
range; the average; its seed-mean with a 95 % bootstrap interval; the constant predictor; paired differences
between regimes scored on the same resampled rows, ``evaluation.compare``; trainable parameters; routing
matrices), OUT/regimes.json, OUT/routing.png (the routing matrix of each mixer, mean over seeds: share of
each task's routed tokens per expert) and OUT/routing_layers.png (the same per routed application).
Targets checked (issue 14): plug-and-play routes > 60 % of each task's tokens to its own adapter and
stays within 2 points of the single-task LoRAs on the average; joint ≥ multi-task LoRA on the average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


import numpy as np

from data_prep.glue_data import TASKS_SYNTAX, GlueDataError
from model.native_format import InputError
from finetune import train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TITLES = {
    "lora": "single-task LoRAs",
    "multitask": "multi-task LoRA",
    "plug": "LoRA-Mixer (ii) plug-and-play",
    "joint": "LoRA-Mixer (i) joint, staged",
    "plug-pp": "LoRA-Mixer (ii) plug-and-play, per-projection",
    "joint-pp": "LoRA-Mixer (i) joint, staged, per-projection",
    "plug-sup": "LoRA-Mixer (ii) plug-and-play, supervised routers",
    "joint-sup": "LoRA-Mixer (i) joint, staged, supervised routers",
    "joint-chosen": "LoRA-Mixer (i) joint, staged, preservation over the chosen experts",
    "plug-folded": "LoRA-Mixer (ii) plug-and-play, experts folded in per task (tools/merge_mixer.py)",
    "joint-folded": "LoRA-Mixer (i) joint, experts folded in per task (tools/merge_mixer.py)",
}
# paired differences reported (row, the row it is measured against), where both ran
PAIRS = (
    ("plug", "lora"),
    ("joint", "multitask"),
    ("multitask", "lora"),
    ("plug-pp", "plug"),
    ("joint-pp", "joint"),
    ("plug-pp", "lora"),  # the chosen lever against the reference the targets name
    ("joint-pp", "multitask"),
    ("plug-sup", "plug"),
    ("joint-sup", "joint"),
    ("joint-chosen", "joint"),
    ("joint-top2", "joint"),
    ("joint-top3", "joint"),
    ("plug-folded", "plug"),
    ("joint-folded", "joint"),
)


def title(regime: str) -> str:
    """Row title; ``joint-topK`` rows (--joint-top-k) are named from K."""
    if regime.startswith("joint-top"):
        return f"LoRA-Mixer (i) joint, staged, top-{regime[len('joint-top') :]} routing"
    return TITLES[regime]


def run(args: list[str], out: str, log) -> dict:
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        t0 = time.time()
        if train.main([*args, "--out", out]):
            raise SystemExit(f"error: finetune.train failed for {out}")
        log(f"  {out}: {time.time() - t0:.0f} s")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def seed_runs(a, seed: int, names: list[str], extra: list[str], log) -> dict[str, dict]:
    """Every regime for one seed: {regime: {"scores": {task: score}, "params": n, "matrix": rows|None}}."""
    base = ["--model", a.model, "--seed", str(seed), *(["--glue-dir", a.glue_dir] if a.glue_dir else []), *extra]
    root = os.path.join(a.out, f"seed{seed}")

    def scores(res: dict, task: str) -> float:
        return res["results"][task][res["tasks"][task]["report"]]["score"]

    out = {}
    singles = {}
    for task, name in zip(a.tasks, names):
        singles[name] = run(
            [*base, "--tasks", task, "--mode", "lora", "--epochs", str(a.epochs)],
            os.path.join(root, f"lora_{name}"),
            log,
        )
    out["lora"] = {
        "scores": {n: scores(r, n) for n, r in singles.items()},
        "params": sum(r["trainable_parameters"] for r in singles.values()),
        "matrix": None,
        "runs": [os.path.join(root, f"lora_{n}") for n in names],
    }
    adapters = [os.path.join(root, f"lora_{n}") for n in names]
    regimes = {
        "multitask": ["--mode", "multitask", "--epochs", str(a.epochs)],
        "plug": ["--mode", "mixer-plug", "--adapters", *adapters, "--epochs", str(a.epochs)],
        "joint": [
            "--mode",
            "mixer-joint",
            "--forced-epochs",
            str(a.forced_epochs),
            "--epochs",
            str(a.epochs - a.forced_epochs),
        ],
    }
    if a.per_projection:
        regimes["plug-pp"] = [*regimes["plug"], "--route", "per_projection"]
        regimes["joint-pp"] = [*regimes["joint"], "--route", "per_projection"]
    if a.router_ce_routed > 0:
        sup = ["--router-ce-routed", str(a.router_ce_routed)]
        regimes["plug-sup"], regimes["joint-sup"] = [*regimes["plug"], *sup], [*regimes["joint"], *sup]
    for k in a.joint_top_k:
        regimes[f"joint-top{k}"] = [*regimes["joint"], "--top-k", str(k)]
    if a.preserve_chosen:
        regimes["joint-chosen"] = [*regimes["joint"], "--preserve-over", "chosen"]
    for regime, args in regimes.items():
        res = run([*base, "--tasks", *a.tasks, *args], os.path.join(root, regime), log)
        out[regime] = {
            "scores": {n: scores(res, n) for n in names},
            "params": res["trainable_parameters"],
            "matrix": res.get("routing_matrix"),
            "layers": {n: res["results"][n].get("expert_share_per_layer") for n in names},
            "seconds": res["seconds"],
            "runs": [os.path.join(root, regime)],
        }
    for regime in [r for r in ("plug", "joint") if a.folded]:  # each task's classifier, its experts folded in
        runs = [
            fold_task(os.path.join(root, regime), n, os.path.join(root, f"{regime}-folded", n), a.fold_method)
            for n in names
        ]
        out[f"{regime}-folded"] = {
            "scores": {n: r["score"] for n, r in zip(names, runs)},
            "params": out[regime]["params"],
            "matrix": None,
            "runs": [os.path.join(root, f"{regime}-folded", n) for n in names],
        }
    return out


def fold_task(run: str, task: str, out: str, method: str) -> dict:
    """``tools/merge_mixer.py RUN --task TASK --method METHOD`` (cached per method): the task's report-split
    score after the fold."""
    report = os.path.join(out, "merge_report.json")
    cached = None
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as f:
            cached = json.load(f)
    if cached is None or cached["method"] != method:
        sys.path.insert(0, os.path.join(REPO, "tools"))
        import merge_mixer

        if merge_mixer.main([run, "--task", task, "--method", method, "--out", out, "--overwrite"]):
            raise SystemExit(f"error: tools/merge_mixer.py failed for {run} --task {task}")
    with open(report, encoding="utf-8") as f:
        rep = json.load(f)
    with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
        split = json.load(f)["tasks"][task]["report"]
    return {"score": rep["result"][split], "routed": rep["routed"][split]}


def heatmap(matrices: dict[str, np.ndarray], names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4), squeeze=False)
    for ax, (regime, m) in zip(axes[0], matrices.items()):
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(
                    j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8
                )
        ax.set_xticks(range(len(names)), [f"E{j}\n({n})" for j, n in enumerate(names)], fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(title(regime).replace("LoRA-Mixer ", ""), fontsize=8)
        ax.set_xlabel("expert (adapter / forced task)", fontsize=7)
    axes[0][0].set_ylabel("task (its routed tokens)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def layer_heatmap(layers: dict[str, dict[str, dict[str, list[float]]]], names: list[str], path: str) -> None:
    """Per mixer regime and task: the share of the task's routed tokens per expert (columns) at each routed
    application (rows: ``layer{i}.attn``, and ``.attn_o`` with per-projection routing), mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(layers)
    fig, axes = plt.subplots(len(regimes), len(names), figsize=(2.6 * len(names), 2.8 * len(regimes)), squeeze=False)
    for r, regime in enumerate(regimes):
        for t, task in enumerate(names):
            ax = axes[r][t]
            rows = layers[regime][task]
            m = np.array(list(rows.values()))
            ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="w" if m[i, j] < 0.6 else "k",
                    )
            ax.set_xticks(range(len(names)), [f"E{j}" for j in range(len(names))], fontsize=6)
            ax.set_yticks(range(len(rows)), [k.replace("layer", "L") for k in rows], fontsize=6)
            ax.set_title(f"{title(regime).replace('LoRA-Mixer ', '')}\n{task}'s tokens", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def mean_layers(per_seed: dict, regime: str, names: list[str]) -> dict | None:
    """The per-layer routing shares of a regime, mean over seeds: task → application → [E]."""
    seeds = [s for s in per_seed if per_seed[s][regime].get("layers")]
    if not seeds or any(v is None for v in per_seed[seeds[0]][regime]["layers"].values()):
        return None
    return {
        n: {
            k: np.mean([per_seed[s][regime]["layers"][n][k] for s in seeds], 0).round(4).tolist()
            for k in per_seed[seeds[0]][regime]["layers"][n]
        }
        for n in names
    }


def intervals(per_seed: dict, regimes: list[str], names: list[str]) -> dict | None:
    """Each regime's average with a 95 % bootstrap interval, the constant predictor's, and the paired
    differences of ``PAIRS``: every regime (all its seeds) scored on the same resampled evaluation rows
    (``evaluation.compare``). None where a run has no predictions.json (runs of older code)."""
    from evaluation.compare import all_draws, load_predictions, merge_predictions, paired
    from scoring.intervals import percentile_ci

    try:
        recs = [
            merge_predictions([load_predictions(d) for s in per_seed for d in per_seed[s][r]["runs"]]) for r in regimes
        ]
    except InputError:
        return None
    d = all_draws(recs, names)
    point, draws = d["average"]
    out = {
        "average": {
            r: {"point": float(point[i]), "ci95": list(percentile_ci(draws[i]))} for i, r in enumerate(regimes)
        },
        "constant": float(point[-1]),
        "constant_tasks": {t: float(p[-1]) for t, (p, _) in d["tasks"].items()},
        "pairs": {},
    }
    for x, y in PAIRS:
        if x in regimes and y in regimes:
            out["pairs"][f"{x} - {y}"] = paired(point, draws, regimes.index(x), regimes.index(y))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        prog="studies/finetune_regimes.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="native model directory")
    p.add_argument(
        "--tasks", nargs="+", required=True, help=f"task directories, or GLUE names with --glue-dir; {TASKS_SYNTAX}"
    )
    p.add_argument("--glue-dir")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every regime (joint: forced + routed)")
    p.add_argument("--forced-epochs", type=int, default=1, help="joint: of --epochs, the domain-forced ones")
    p.add_argument("--per-projection", action="store_true", help="also the per-projection routing rows")
    p.add_argument(
        "--no-folded",
        dest="folded",
        action="store_false",
        help="skip the folded rows (each task's classifier made of the mixer by tools/merge_mixer.py: the "
        "experts added into the projections with the task's routing shares)",
    )
    p.add_argument(
        "--fold-method",
        choices=("ema", "routing", "uniform"),
        default="ema",
        help="the folded rows' expert weights (tools/merge_mixer.py --method): training's moving-average routing "
        "shares (default), the report split's, or uniform",
    )
    p.add_argument(
        "--router-ce-routed",
        type=float,
        default=0.0,
        help="> 0: also the rows with supervised routers (finetune.train --router-ce-routed W)",
    )
    p.add_argument(
        "--joint-top-k",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also a joint row per K with top-K routing in the routed stage and at inference "
        "(finetune.train --top-k K; the other rows keep --top-k from the extra arguments, default 1)",
    )
    p.add_argument(
        "--preserve-chosen",
        action="store_true",
        help="also a joint row whose expert preservation covers only the experts chosen per batch "
        "(finetune.train --preserve-over chosen)",
    )
    a = p.parse_args(argv)
    try:
        a.tasks = train.resolve_tasks(a.tasks, a.glue_dir)  # as finetune.train reads them: sst2,mrpc = SST-2 MRPC
    except GlueDataError as e:
        p.error(str(e))
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not 0 <= a.forced_epochs < a.epochs:
        p.error(f"--forced-epochs {a.forced_epochs}: must be in [0, --epochs={a.epochs})")
    bad_k = [k for k in a.joint_top_k if not 1 <= k <= len(a.tasks)]
    if bad_k:
        p.error(f"--joint-top-k {bad_k[0]}: must be in [1, {len(a.tasks)}] (one expert per task)")
    names = [os.path.basename(os.path.normpath(t)) for t in a.tasks]
    os.makedirs(a.out, exist_ok=True)
    per_seed = {s: seed_runs(a, s, names, extra, print) for s in seeds}
    regimes = list(per_seed[seeds[0]])
    table = {}
    for r in regimes:
        task_scores = {n: [per_seed[s][r]["scores"][n] for s in seeds] for n in names}
        avgs = [float(np.mean([per_seed[s][r]["scores"][n] for n in names])) for s in seeds]
        mats = [per_seed[s][r]["matrix"] for s in seeds if per_seed[s][r]["matrix"]]
        table[r] = {
            "tasks": {n: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for n, v in task_scores.items()},
            "average": {"median": float(np.median(avgs)), "min": min(avgs), "max": max(avgs), "per_seed": avgs},
            "params": per_seed[seeds[0]][r]["params"],
            "matrix": np.mean(mats, 0).tolist() if mats else None,
            "layers": mean_layers(per_seed, r, names) if r != "lora" else None,
        }
    ci = intervals(per_seed, regimes, names)
    targets = {}
    for plug in (r for r in table if r.startswith("plug") and table[r]["matrix"]):  # the routed rows
        diag = np.diag(np.array(table[plug]["matrix"]))
        targets[f"{plug}_own_adapter_share"] = dict(zip(names, diag.round(3).tolist()))
        targets[f"{plug}_routes_own_adapter_over_60pct"] = bool((diag > 0.6).all())
        gap = 100 * (table[plug]["average"]["median"] - table["lora"]["average"]["median"])
        targets[f"{plug}_minus_single_task_points"] = round(gap, 2)
        targets[f"{plug}_within_2_points"] = bool(gap >= -2.0)
    for joint in (r for r in table if r.startswith("joint")):
        d = 100 * (table[joint]["average"]["median"] - table["multitask"]["average"]["median"])
        targets[f"{joint}_minus_multitask_points"] = round(d, 2)
        targets[f"{joint}_at_least_multitask"] = bool(d >= 0)
    if ci:
        for pair, v in ci["pairs"].items():
            targets[f"{pair} (paired)"] = {
                "points": round(100 * v["diff"], 2),
                "ci95": [round(100 * x, 2) for x in v["diff_ci95"]],
                "verdict": "resolved" if v["resolved"] else "not resolved",
            }
    lines = [
        "| regime | trainable params | "
        + " | ".join(names)
        + " | average (median) | average per seed min–max | seed-mean average [95 % CI] |",
        "|---|---|" + "---|" * (len(names) + 3),
    ]
    for r, t in table.items():
        cells = [
            f"{100 * t['tasks'][n]['median']:.1f} ({100 * t['tasks'][n]['min']:.1f}–{100 * t['tasks'][n]['max']:.1f})"
            for n in names
        ]
        lines.append(
            f"| {title(r)} | {t['params']:,} | "
            + " | ".join(cells)
            + f" | **{100 * t['average']['median']:.1f}** | {100 * t['average']['min']:.1f}–"
            f"{100 * t['average']['max']:.1f} | "
            + (
                f"{100 * ci['average'][r]['point']:.1f} [{100 * ci['average'][r]['ci95'][0]:.1f}, "
                f"{100 * ci['average'][r]['ci95'][1]:.1f}] |"
                if ci
                else "— |"
            )
        )
    if ci:
        lines.append(
            "| constant predictor | 0 | "
            + " | ".join(f"{100 * ci['constant_tasks'][n]:.1f}" for n in names)
            + f" | {100 * ci['constant']:.1f} | | |"
        )
        lines += ["", "| paired difference (average, points) | difference [95 % CI] | verdict |", "|---|---|---|"]
        for pair, v in ci["pairs"].items():
            lo, hi = v["diff_ci95"]
            verdict = "resolved" if v["resolved"] else "not resolved (the interval includes 0)"
            lines.append(f"| {pair} | {100 * v['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {verdict} |")
    lines.append("")
    for r, t in table.items():
        if t["matrix"]:
            lines.append(
                f"Routing, {title(r)} (rows: tasks; columns: experts {', '.join(names)}): "
                + "; ".join(f"{n} [{', '.join(f'{x:.2f}' for x in row)}]" for n, row in zip(names, t["matrix"]))
            )
    lines += ["", "Targets: " + json.dumps(targets)]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "regimes.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(a.out, "regimes.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "tasks": names,
                "seeds": seeds,
                "extra_args": extra,
                "table": table,
                "intervals": ci,
                "targets": targets,
                "per_seed": per_seed,
            },
            f,
            indent=1,
        )
    mats = {r: np.array(t["matrix"]) for r, t in table.items() if t["matrix"]}
    if mats:
        heatmap(mats, names, os.path.join(a.out, "routing.png"))
    layers = {r: t["layers"] for r, t in table.items() if t["layers"]}
    if layers:
        layer_heatmap(layers, names, os.path.join(a.out, "routing_layers.png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
