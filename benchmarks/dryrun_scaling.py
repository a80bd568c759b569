"""The scaling table of the dry run: presets x expert parallelism x world size, predicted on one CPU machine.

    python benchmarks/dryrun_scaling.py [--presets 50m 120m] [--ep 1 8] [--world-sizes 8 64 256 512 1024]
        [--hardware h100] [--mfu M] [--out runs/dryrun-scaling]

Each point is one ``python -m pretrain.dryrun`` (a fresh process: one simulated process group each) on
the preset's shipped config. The global batch stays the config's (1 M tokens); where the config's
micro-batch would leave a rank without a whole micro-batch, it shrinks to the samples per rank (the
table says so). Writes OUT/scaling.json, OUT/scaling.md and OUT/scaling.png: memory per GPU, bytes per
collective kind, predicted tokens/s, MFU, scaling efficiency against the 8-GPU row, and the first
world size at which FSDP's gathers and reduce-scatters, or the expert-parallel all-to-alls, take
longer than the compute under the cost model (``pretrain/configs/hardware.yaml``). The simulations
(OUT/<preset>-ep<EP>-n<N>.json) do not depend on the hardware and are kept: a rerun with another
``--hardware`` or ``--mfu`` only re-prices them (``--mfu`` writes scaling-mfu<M>.md/.png beside).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 1024
GIB = 1 << 30


def point(preset: str, ep: int, world: int, hardware: str, mfu: float | None, out: str) -> dict:
    import yaml

    cfg_path = os.path.join(REPO, "pretrain", "configs", f"{preset}.yaml")
    with open(cfg_path, encoding="utf-8") as f:
        train = yaml.safe_load(f)["train"]
    samples = train["global_batch_tokens"] // SEQ_LEN
    micro = min(train["micro_batch_size"], max(1, samples // world))
    overrides = [f"parallel.ep={ep}", f"train.micro_batch_size={micro}", "data.dir=/nonexistent"]
    path = os.path.join(out, f"{preset}-ep{ep}-n{world}.json")
    if not os.path.isfile(path):  # the simulation does not depend on the hardware: cached across --hardware
        cmd = [
            sys.executable,
            "-m",
            "pretrain.dryrun",
            "--config",
            cfg_path,
            "--world-size",
            str(world),
            "--seq-len",
            str(SEQ_LEN),
            "--gpu-memory-gb",
            "1e9",
            "--no-reference",
            "--json",
            path,
            *overrides,
        ]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if r.returncode:
            sys.exit(f"{preset} ep {ep} N {world}: {r.stderr.strip().splitlines()[-1]}")
    with open(path, encoding="utf-8") as f:
        measured = json.load(f)
    # priced here, on --hardware (pretrain.dryrun's own pricing, on the stored measurements)
    from pretrain.config import load_config
    from pretrain.cost_model import load_hardware
    from pretrain.dryrun import gpu_precision, plan

    cfg = gpu_precision(load_config(cfg_path, overrides))
    rep = plan(cfg, world, 8, SEQ_LEN, load_hardware(hardware, mfu=mfu), measured["probe_tokens"], measured["measured"])
    rep.update(
        preset=preset,
        micro_changed=micro != train["micro_batch_size"],
        mfu_assumed=load_hardware(hardware, mfu=mfu).mfu,
        dry_run_seconds=measured["dry_run_seconds"],
    )
    return rep


def table(points: list[dict]) -> list[str]:
    # collective columns: MiB on the wire per GPU and step
    lines = [
        "| preset | EP | GPUs | micro-batch × accum | memory/GPU GiB (activations) | all-gather MiB | "
        "reduce-scatter MiB | all-to-all MiB | all-reduce MiB | step ms (compute / FSDP / a2a) | "
        "tokens/s | MFU | efficiency vs 8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for p in points:
        key = (p["preset"], p["ep"])
        pred = p["prediction"]
        base.setdefault(key, pred["tokens_per_s_per_gpu"] if p["world_size"] == 8 else None)
        eff = pred["tokens_per_s_per_gpu"] / base[key] if base.get(key) else float("nan")
        by_kind = {}
        for c in p["collectives"]:
            by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + c["wire_bytes"]
        mib = {k: by_kind.get(k, 0) / 2**20 for k in ("all_gather", "reduce_scatter", "all_to_all", "all_reduce")}
        m = p["memory_bytes"]
        lines.append(
            f"| {p['preset']} | {p['ep']} | {p['world_size']} | "
            f"{p['micro_batch_size']}{'*' if p['micro_changed'] else ''}"
            f" × {p['accumulation_steps']} | {m['total'] / GIB:.1f} ({m['activations'] / GIB:.1f}) | "
            f"{mib['all_gather']:,.0f} | {mib['reduce_scatter']:,.0f} | {mib['all_to_all']:,.0f} | "
            f"{mib['all_reduce']:,.2f} | {1e3 * pred['step_s']:,.1f} ({1e3 * pred['compute_s']:,.1f} / "
            f"{1e3 * pred['fsdp_comm_s']:,.1f} / {1e3 * pred['ep_comm_s']:,.1f}) | {pred['tokens_per_s']:,.0f} | "
            f"{100 * pred['mfu']:.1f} % | {100 * eff:.1f} % |"
        )
    return lines


def crossovers(points: list[dict]) -> list[str]:
    out = []
    for key in dict.fromkeys((p["preset"], p["ep"]) for p in points):
        rows = [p for p in points if (p["preset"], p["ep"]) == key]
        pred = [(p["world_size"], p["prediction"]) for p in rows]
        fsdp = next((n for n, q in pred if q["fsdp_comm_s"] > q["compute_s"]), None)
        a2a = next((n for n, q in pred if q["ep_comm_s"] > q["compute_s"]), None)
        top = rows[-1]["world_size"]
        out.append(
            f"- {key[0]}, EP {key[1]}: FSDP gathers + reduce-scatters exceed the compute "
            f"{f'from N = {fsdp}' if fsdp else f'at no N up to {top}'}; all-to-alls "
            f"{f'from N = {a2a}' if a2a else (f'at no N up to {top}' if key[1] > 1 else 'none (EP 1)')}"
        )
    return out


def plot(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in dict.fromkeys((p["preset"], p["ep"]) for p in points):
        rows = [p for p in points if (p["preset"], p["ep"]) == key]
        n = [p["world_size"] for p in rows]
        axes[0].plot(
            n, [p["prediction"]["tokens_per_s_per_gpu"] for p in rows], marker="o", label=f"{key[0]} EP {key[1]}"
        )
        axes[1].plot(
            n,
            [p["prediction"]["fsdp_comm_s"] / p["prediction"]["compute_s"] for p in rows],
            marker="o",
            label=f"{key[0]} EP {key[1]} FSDP",
        )
        if key[1] > 1:
            axes[1].plot(
                n,
                [p["prediction"]["ep_comm_s"] / p["prediction"]["compute_s"] for p in rows],
                marker="x",
                linestyle="--",
                label=f"{key[0]} EP {key[1]} all-to-all",
            )
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs (global batch fixed at 1 M tokens)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("predicted tokens/s per GPU")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("communication time / compute time")
    fig.suptitle(
        f"pretrain.dryrun scaling ({points[0]['hardware']}, MFU {points[0]['mfu_assumed']:.3f}; "
        "cost model of pretrain/configs/hardware.yaml)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/dryrun_scaling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["50m", "120m"])
    p.add_argument("--ep", type=int, nargs="+", default=[1, 8])
    p.add_argument("--world-sizes", type=int, nargs="+", default=[8, 64, 256, 512, 1024])
    p.add_argument("--hardware", default="h100")
    p.add_argument("--mfu", type=float, default=None, help="override the hardware's assumed MFU")
    p.add_argument("--out", default="runs/dryrun-scaling")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    points, started = [], time.time()
    for preset in a.presets:
        for ep in a.ep:
            for n in sorted(a.world_sizes):
                t = time.time()
                points.append(point(preset, ep, n, a.hardware, a.mfu, a.out))
                print(f"{preset} ep {ep} N {n}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    with open(os.path.join(a.out, "scaling.json"), "w", encoding="utf-8") as f:
        json.dump(points, f, indent=1)
    lines = [
        *table(points),
        "",
        *crossovers(points),
        "",
        "\\* micro-batch lowered to the samples per rank (1 024 samples of 1 024 tokens per step).",
    ]
    with open(
        os.path.join(a.out, "scaling.md" if a.mfu is None else f"scaling-mfu{a.mfu:g}.md"), "w", encoding="utf-8"
    ) as f:
        f.write("\n".join(lines) + "\n")
    plot(points, os.path.join(a.out, "scaling.png" if a.mfu is None else f"scaling-mfu{a.mfu:g}.png"))
    print("\n".join(lines))
    print(f"({len(points)} dry runs in {time.time() - started:.0f} s; {a.out}/scaling.png)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
