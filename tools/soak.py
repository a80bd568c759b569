"""Kill-anywhere soak test: a training run SIGKILLed from outside again and again ends where an
uninterrupted run ends.

    python tools/soak.py --out runs/soak                    # both phases, ~10 minutes on 2 CPUs
    python tools/soak.py --out runs/soak --phases same --kills 8 --seed 3

Each phase trains the ``tiny`` preset for ``--steps`` steps (checkpoint every ``--every``) twice:
once uninterrupted (the reference, on 2 processes), once through a series of faults, each followed
by a relaunch of the same command:

- SIGKILL of the launcher and all its processes (torchrun, workers, loader workers: as a node
  failure would), in turn: inside a random step (a random fraction of a step after a random step
  was logged), the moment a checkpoint write is seen in progress (a ``.tmp_step_…`` folder exists),
  or at a random moment of the start-up (process group, checkpoint verification and load), or
- SIGTERM to the launcher and all its processes at a random step, as SLURM does at preemption or at
  the time limit: the run must save at the next step boundary and exit 75 (no step lost), or
- (once per phase) a byte flipped in the newest checkpoint between two launches: the resume must
  verify it, set it aside and fall back to the previous one, and
- (once per phase) a full disk at the next checkpoint (``MODERNALBERT_ENOSPC_AT_SAVE`` on the last
  rank): the run must stop with exit 2, its temp dir removed and ``latest`` unchanged.

Phase ``same`` relaunches on 2 processes every time: the final weights must equal the reference's bit
for bit. Phase ``mixed`` relaunches on 1 or 2 processes at random with the same global batch: float
sums then run in another order (~1e-7 relative per step), which the unstable stretches of training
(loss spikes) amplify, so the final weights cannot match bit for bit. Its yardstick is a third run,
uninterrupted on 1 process: the soaked run must end no further from the reference than
``--baseline-factor`` times that run's distance; the losses of the first ``--early-steps`` steps
(before the amplification) are compared too. Writes ``soak.json`` and ``soak.md`` (a table of every fault) to
``--out``; exits 1 when a phase fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EARLY = 30  # --early-steps


def _build_shards(out: str) -> str:
    from data_prep.build_shards import BuildConfig, build
    from data_prep.corpus import SAMPLE_CORPUS_DIR

    data = os.path.join(out, "shards")
    if not os.path.isfile(os.path.join(data, "index.json")):
        build(
            BuildConfig(
                inputs=[SAMPLE_CORPUS_DIR],
                seq_len=128,
                vocab_size=4000,
                shard_mb=0.3,
                val_fraction=0.05,
                tokenizer_sample_mb=1.0,
            ),
            data,
            workers=0,
            progress=False,
        )
    return data


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux: parent ids from /proc/<pid>/stat)."""
    from pretrain.torchrun import children_by_parent

    children = children_by_parent()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


class Launch:
    """One launch of the training command (its output appended to a log file)."""

    def __init__(self, nproc: int, args: list[str], log_path: str, env: dict | None = None) -> None:
        launcher = (
            [sys.executable, "-m", "pretrain.torchrun", "--standalone", f"--nproc-per-node={nproc}"]
            if nproc > 1
            else [sys.executable]
        )
        self.log = open(log_path, "a", encoding="utf-8")
        self.log.write(f"\n===== launch on {nproc} process(es) at {time.strftime('%H:%M:%S')}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            [*launcher, "-m", "pretrain.train", *args],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.started = time.monotonic()

    def kill(self) -> None:
        """SIGKILL the launcher and every descendant. torchrun starts each worker in a session of its own,
        so a process-group kill would leave the workers running: the tree is frozen (SIGSTOP, so nothing
        new is spawned), then killed."""
        tree = _tree(self.proc.pid)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            tree = sorted(set(tree) | set(t for p in tree for t in _tree(p)))
            for pid in tree:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.proc.wait()
        self.log.close()

    def signal_tree(self, sig: int) -> None:
        """``sig`` to the launcher and every descendant at once (SLURM signals every process of a step)."""
        for pid in _tree(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        rc = self.proc.wait()
        self.log.close()
        return rc


def _train_args(data: str, run_dir: str, a: argparse.Namespace) -> list[str]:
    # the shipped tiny preset (router jitter on, one loader worker per rank); only the batch is smaller
    return [
        "--config",
        "pretrain/configs/tiny.yaml",
        f"data.dir={data}",
        f"run_dir={run_dir}",
        f"train.steps={a.steps}",
        f"checkpoint.every={a.every}",
        "checkpoint.keep=3",
        "train.micro_batch_size=8",
        "train.log_every=1",
        "eval.every=0",
        "log.progress_bar=off",
    ]


def _ckpt_state(run_dir: str) -> dict:
    from pretrain.checkpoint import latest_checkpoint

    ckpt = os.path.join(run_dir, "checkpoints")
    names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
    latest = latest_checkpoint(ckpt)
    return {
        "latest": os.path.basename(latest) if latest else None,
        "temp_left": sorted(n for n in names if n.startswith(".tmp_")),
        "set_aside": sorted(n for n in names if n.startswith("corrupt-")),
    }


def _records(run_dir: str) -> list[dict]:
    """metrics.jsonl's records (none without the file); a line cut short by a kill is skipped."""
    path, out = os.path.join(run_dir, "metrics.jsonl"), []
    if os.path.isfile(path):
        for line in open(path, encoding="utf-8"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _last_step(run_dir: str) -> int:
    records = _records(run_dir)
    return records[-1]["step"] if records else 0


def _final_weights(run_dir: str) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from pretrain.checkpoint import latest_checkpoint

    dest = os.path.join(run_dir, "final.pt")
    dcp_to_torch_save(latest_checkpoint(os.path.join(run_dir, "checkpoints")), dest)
    return torch.load(dest, weights_only=False)["model"]


def _kill_during_write(launch: Launch, ckpt_dir: str, limit_s: float) -> bool:
    """SIGKILL as soon as a checkpoint write is seen in progress; False if the run ended first."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and launch.proc.poll() is None:
        if os.path.isdir(ckpt_dir) and any(n.startswith(".tmp_") for n in os.listdir(ckpt_dir)):
            launch.kill()
            return True
        time.sleep(0.001)
    return False


def _flip_newest_checkpoint(run_dir: str) -> str | None:
    from pretrain.checkpoint import step_dirs

    dirs = step_dirs(os.path.join(run_dir, "checkpoints"))
    if len(dirs) < 2:
        return None
    victim = os.path.join(dirs[0], "__0_0.distcp")
    raw = bytearray(open(victim, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(raw))
    return os.path.basename(dirs[0])


def phase(name: str, data: str, a: argparse.Namespace, rng: random.Random) -> dict:
    import torch

    base = os.path.join(a.out, name)
    ref_dir, run_dir = os.path.join(base, "reference"), os.path.join(base, "soaked")
    for d in (ref_dir, run_dir):
        subprocess.run(["rm", "-rf", d], check=True)
        os.makedirs(d)
    t0 = time.monotonic()
    rc = Launch(2, _train_args(data, ref_dir, a), os.path.join(ref_dir, "log.txt")).wait()
    if rc:
        sys.exit(f"{name}: the reference run failed (exit {rc}); see {ref_dir}/log.txt")
    ref_s = time.monotonic() - t0
    print(f"[{name}] reference: {a.steps} steps in {ref_s:.0f} s", flush=True)

    faults, corrupt_at = [], rng.randrange(1, a.kills)  # the fault index that flips a byte first
    enospc_at = rng.choice([k for k in range(1, a.kills) if k != corrupt_at])  # the one full-disk fault
    args, log = _train_args(data, run_dir, a), os.path.join(run_dir, "log.txt")
    for k in range(a.kills):
        nproc = 2 if name == "same" else rng.choice((1, 2))
        record = {"fault": k + 1, "processes": nproc, "before": _ckpt_state(run_dir)}
        if k == corrupt_at:
            record["flipped_byte_in"] = _flip_newest_checkpoint(run_dir)
        kind = "enospc" if k == enospc_at else ("step", "write", "start", "sigterm")[k % 4]
        env = None
        if kind == "enospc":  # the resume point is the newest intact checkpoint; saves fall on multiples of
            # `every` (a preemption may have saved in between)
            resume = int((record["before"]["latest"] or "step_0").split("_")[1])
            next_save = min((resume // a.every + 1) * a.every, a.steps)
            env = {"MODERNALBERT_ENOSPC_AT_SAVE": f"{next_save}:{nproc - 1}"}
        record["kind"] = kind
        logged_before = _last_step(run_dir)
        launch = Launch(nproc, args, log, env)
        if kind == "enospc":
            rc = launch.wait()
            record["exit"] = rc
            record["kill"] = (
                f"full disk at the step-{next_save} save: exit {rc}"
                if next_save <= a.steps
                else f"none: the run ended before step {next_save} (exit {rc})"
            )
        elif kind == "write":
            hit = _kill_during_write(launch, os.path.join(run_dir, "checkpoints"), limit_s=4 * ref_s)
            record["kill"] = "during a checkpoint write" if hit else "none: the run finished first"
        elif kind == "start":  # start-up, process-group set-up, checkpoint verification and load
            delay = rng.uniform(0.5, 5.0)
            time.sleep(delay)
            finished = launch.proc.poll() is not None
            launch.kill()
            record["kill"] = "none: the run finished first" if finished else f"{delay:.1f} s after launch"
        else:  # inside a step: a random step ahead (leaving room for the faults still to come), then a
            # random fraction of a step later (forward, backward, optimizer, logging)
            done = _last_step(run_dir)
            left = sum(1 for j in range(k, a.kills) if j % 4 != 2) + 1
            target = done + rng.randint(1, max(1, (a.steps - done) // left))
            while _last_step(run_dir) < target and launch.proc.poll() is None:
                time.sleep(0.005)
            extra = rng.uniform(0.0, 0.3)
            time.sleep(extra)
            finished = launch.proc.poll() is not None
            if kind == "sigterm":
                launch.signal_tree(signal.SIGTERM)
                try:
                    rc = launch.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    launch.kill()
                    rc = None
                launch.log.close()
                record["exit"] = rc
                record["kill"] = (
                    "none: the run finished first"
                    if finished
                    else f"SIGTERM to the tree {extra:.2f} s after step {target} was logged: exit {rc}"
                )
            else:
                launch.kill()
                record["kill"] = (
                    "none: the run finished first" if finished else f"{extra:.2f} s after step {target} was logged"
                )
        record["after"] = _ckpt_state(run_dir)
        # the steps the next launch must redo: logged by this launch, but after its newest checkpoint
        saved = int((record["after"]["latest"] or "step_0").split("_")[1])
        record["steps_lost"] = max(0, max(_last_step(run_dir), logged_before) - saved)
        faults.append(record)
        print(
            f"[{name}] fault {k + 1} ({kind}): {record['kill']} on {nproc} proc; checkpoint "
            f"{record['before']['latest']} -> {record['after']['latest']}; steps lost {record['steps_lost']}; "
            f"temp dirs left {record['after']['temp_left']}",
            flush=True,
        )
    nproc = 2 if name == "same" else rng.choice((1, 2))
    rc = Launch(nproc, args, log).wait()
    final = _ckpt_state(run_dir)
    result = {
        "phase": name,
        "steps": a.steps,
        "every": a.every,
        "reference_s": round(ref_s, 1),
        "faults": faults,
        "final_launch": {"processes": nproc, "exit": rc, **final},
    }
    if rc:
        result.update(ok=False, why=f"the final launch exited {rc}; see {log}")
        return result
    # the faults that end a run by design must end it as designed
    wrong = [
        f"fault {f['fault']} ({f['kind']}): exit {f.get('exit')}"
        for f in faults
        if (f["kind"] == "sigterm" and not f["kill"].startswith("none") and f.get("exit") != 75)
        or (
            f["kind"] == "enospc"
            and not f["kill"].startswith("none")
            and (f.get("exit") != 2 or f["after"]["latest"] != f["before"]["latest"] or f["after"]["temp_left"])
        )
    ]
    if wrong:
        result.update(ok=False, why="; ".join(wrong))
        return result
    ref, got = _final_weights(ref_dir), _final_weights(run_dir)
    diff = _max_diff(ref, got)
    equal = ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    result.update(
        bitwise_equal=equal,
        max_abs_diff=diff,
        tensors=len(ref),
        early_loss_rel_diff=_early_loss_diff(ref_dir, run_dir, a.early_steps),
    )
    if name == "same":
        result["ok"] = equal
    else:
        # 1 and 2 processes sum in another order: ~1e-7 per step, which an unstable stretch of training
        # (loss spikes) amplifies. The yardstick is how far an uninterrupted 1-process run ends up.
        one_dir = os.path.join(base, "reference-1proc")
        subprocess.run(["rm", "-rf", one_dir], check=True)
        os.makedirs(one_dir)
        if Launch(1, _train_args(data, one_dir, a), os.path.join(one_dir, "log.txt")).wait():
            sys.exit(f"{name}: the 1-process reference failed; see {one_dir}/log.txt")
        baseline = _max_diff(ref, _final_weights(one_dir))
        result.update(
            world_size_baseline=baseline,
            baseline_early_loss_rel_diff=_early_loss_diff(ref_dir, one_dir, a.early_steps),
            ok=diff <= max(a.tolerance, a.baseline_factor * baseline),
        )
    print(
        f"[{name}] final weights: bitwise equal {equal}, max |diff| {diff:.3g}"
        + (f" (uninterrupted 1 vs 2 processes: {result['world_size_baseline']:.3g})" if name == "mixed" else "")
        + f" -> {'PASS' if result['ok'] else 'FAIL'}",
        flush=True,
    )
    return result


def _max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _early_loss_diff(ref_dir: str, run_dir: str, steps: int) -> float:
    """Max relative difference of the logged losses over the first ``steps`` steps (every logging of a step)."""

    def losses(d: str) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in _records(d):
            out.setdefault(r["step"], []).append(r["loss"])
        return out

    ref, got = losses(ref_dir), losses(run_dir)
    return max((abs(x - ref[s][0]) / abs(ref[s][0]) for s in ref if s <= steps for x in got.get(s, [])), default=0.0)


def _markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        verdict = (
            "bit-for-bit equal" if r.get("bitwise_equal") else f"max abs diff {r.get('max_abs_diff', float('nan')):.3g}"
        )
        if r.get("why"):
            verdict = f"not compared: {r['why']}"
        if "world_size_baseline" in r:
            verdict += (
                f" (two uninterrupted runs on 1 and on 2 processes: {r['world_size_baseline']:.3g}); losses of "
                f"the first {EARLY} steps within {r['early_loss_rel_diff']:.2g} relative (1 vs 2 processes: "
                f"{r['baseline_early_loss_rel_diff']:.2g})"
            )
        lines += [
            f"**Phase `{r['phase']}`** ({r['steps']} steps, checkpoint every {r['every']}; reference "
            f"{r['reference_s']} s): final weights {verdict} — **{'PASS' if r['ok'] else 'FAIL'}**",
            "",
            "| fault | kind | processes | what happened | newest checkpoint before → after | steps lost | "
            "temp dir left | byte flipped in |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in r["faults"]:
            lines.append(
                f"| {f['fault']} | {f.get('kind', '?')} | {f['processes']} | {f['kill']} | "
                f"{f['before']['latest']} → {f['after']['latest']} | {f.get('steps_lost', '?')} | "
                f"{', '.join(f['after']['temp_left']) or '—'} | {f.get('flipped_byte_in') or '—'} |"
            )
        fl = r["final_launch"]
        lines += [
            f"| final | — | {fl['processes']} | runs to the end, exit {fl['exit']} | {fl['latest']} | — | "
            f"{', '.join(fl['temp_left']) or '—'} | set aside: {', '.join(fl['set_aside']) or '—'} |",
            "",
        ]
        kinds: dict[str, list[dict]] = {}
        for f in r["faults"]:
            kinds.setdefault(f.get("kind", "?"), []).append(f)
        lines += [
            "| fault kind | faults | survived (final weights as above) | steps lost (total) |",
            "|---|---|---|---|",
        ]
        for kind, fs in kinds.items():
            lines.append(
                f"| {kind} | {len(fs)} | {len(fs) if r['ok'] else 'see verdict'} | "
                f"{sum(f.get('steps_lost', 0) for f in fs)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--data", help="shards (default: a small build of the shipped corpus under --out)")
    p.add_argument("--phases", nargs="+", choices=("same", "mixed"), default=["same", "mixed"])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--every", type=int, default=5, help="checkpoint interval in steps")
    p.add_argument("--kills", type=int, default=8, help="faults per phase (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault schedule")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="max abs weight difference always accepted, phase mixed"
    )
    p.add_argument(
        "--baseline-factor",
        type=float,
        default=2.0,
        help="phase mixed passes when its weight difference is at most this many times that of two "
        "uninterrupted runs on 1 and 2 processes",
    )
    p.add_argument("--early-steps", type=int, default=30, help="the stable stretch whose losses are compared")
    a = p.parse_args()
    global EARLY
    EARLY = a.early_steps
    if a.kills < 2:
        p.error("--kills must be >= 2")
    os.makedirs(a.out, exist_ok=True)
    data = a.data or _build_shards(a.out)
    rng = random.Random(a.seed)
    results = [phase(name, data, a, rng) for name in a.phases]
    with open(os.path.join(a.out, "soak.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": a.seed, "results": results}, f, indent=1)
    md = _markdown(results)
    with open(os.path.join(a.out, "soak.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
