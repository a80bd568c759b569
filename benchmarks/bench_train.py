"""Pretraining throughput: tokens/s of ``pretrain.train`` with 1 vs N processes, in one run.

    python benchmarks/bench_train.py --data runs/quickstart/shards --steps 40 --nprocs 1 2

Each configuration is a real training run (FSDP2 when N > 1, gloo on CPU) with validation off; the
rate is the mean of the logged tokens/s after the first ``--warmup`` steps (also TFLOP/s, MFU where the
peak is known, peak memory, the median and longest step time over the logged records, and, with
``parallel.compile=true``, the run's graph/graph-break line). Prints a Markdown table; ``--json FILE`` appends the rows
(``scripts/gpu_check.sh`` collects them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(nproc: int, args: argparse.Namespace, run_dir: str) -> dict:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
        "-m",
        "pretrain.train",
        "--config",
        args.config,
        f"data.dir={args.data}",
        f"run_dir={run_dir}",
        f"train.steps={args.steps}",
        f"train.log_every={args.log_every}",
        "eval.every=0",
        "checkpoint.every=0",
        f"data.num_workers={args.num_workers}",
        *args.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"nproc={nproc} failed:\n{r.stderr[-3000:]}")
    recs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    timed = [x for x in recs if "tokens_per_s" in x and x["step"] > args.warmup]
    if not timed:
        sys.exit(f"nproc={nproc}: no logged step after --warmup {args.warmup}; raise --steps")
    mean = lambda key: sum(x[key] for x in timed) / len(timed)  # noqa: E731
    step_s = sorted(x["step_s"] for x in timed)
    compiled = [line for line in r.stdout.splitlines() if line.startswith("compile: ")]
    return {
        "step_s_median": step_s[len(step_s) // 2],
        "step_s_max": step_s[-1],
        "compile": compiled[-1][len("compile: ") :] if compiled else None,
        "tokens_per_s": mean("tokens_per_s"),
        "tflops": mean("tflops_per_device"),
        "loss": recs[-1]["loss"],
        "mfu": mean("mfu") if all("mfu" in x for x in timed) else None,
        "memory_gib": max(x.get("memory_gib", 0.0) for x in timed),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/quickstart/shards")
    p.add_argument("--config", default="pretrain/configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5, help="steps per logged record (each one a host sync)")
    p.add_argument("--label", default="", help="a name for this configuration in --json")
    p.add_argument("--json", help="append one JSON line per row to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            rows.append((n, run(n, args, os.path.join(tmp, f"n{n}"))))
    base = rows[0][1]["tokens_per_s"]
    print("| processes | tokens/s | TFLOP/s per process | MFU | peak memory GiB | vs first | loss at last step |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        print(
            f"| {n} | {r['tokens_per_s']:,.0f} | {r['tflops']:.4f} | {mfu} | {r['memory_gib']:.2f} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['loss']:.4f} |"
        )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for n, r in rows:
                f.write(
                    json.dumps(
                        {"label": args.label, "config": args.config, "processes": n, "overrides": args.overrides, **r}
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
