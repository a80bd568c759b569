"""Preemption as a cluster delivers it: SIGTERM/SIGINT to the launcher, the ranks and their loader workers.

SLURM signals every process of a job step at preemption or at the time limit (then SIGKILL after
KillWait); Ctrl-C signals the terminal's whole process group. Whatever subset of the job's processes a
signal reaches, the run must save at the next step boundary, print one line, exit 75 through
``python -m pretrain.torchrun``, and a relaunch must continue bit for bit. The runs use the shipped
``tiny`` preset (one loader worker per rank, router jitter on) on 2 ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, final_weights, wrapped_cmd

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 30


def _cmd(run_dir, shards_dir, extra=()) -> list[str]:
    return wrapped_cmd(
        2,
        [
            "--config",
            "pretrain/configs/tiny.yaml",
            f"data.dir={shards_dir}",
            f"run_dir={run_dir}",
            f"train.steps={STEPS}",
            "train.micro_batch_size=8",
            "train.global_batch_tokens=2048",
            "train.log_every=1",
            "checkpoint.every=0",
            "eval.every=0",
            *extra,
        ],
    )


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _wait_for_records(metrics, n: int) -> None:
    """Until the run has logged ``n`` steps (or 180 s have passed)."""
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        time.sleep(0.005)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards_dir):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(_cmd(run_dir, shards_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return final_weights(str(run_dir))


def _signal_mid_run(run_dir, shards_dir, sig, who: str, extra=()) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        _cmd(run_dir, shards_dir, extra),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run_dir / "metrics.jsonl"
    _wait_for_records(metrics, 2)
    tree = _descendants(proc.pid)
    assert len(tree) >= 4, f"expected launcher + 2 ranks + their loader workers, found {tree}"
    targets = {"launcher": [proc.pid], "tree": [proc.pid, *tree], "group": None, "ranks and workers": tree}[who]
    if targets is None:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C: the whole process group at once
    else:
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# validation every step, 20 batches of it (most of each step's time): a signal then mostly lands inside
# validation, whose loader workers get it too. Validation changes no weight: the uninterrupted run is the same.
DURING_VALIDATION = ("eval.every=1", "eval.max_batches=20")


@pytest.mark.parametrize(
    "sig, who, extra",
    [
        (signal.SIGTERM, "tree", ()),
        (signal.SIGTERM, "launcher", ()),
        (signal.SIGTERM, "ranks and workers", ()),
        (signal.SIGINT, "group", ()),
        (signal.SIGTERM, "tree", DURING_VALIDATION),
    ],
    ids=["sigterm-tree", "sigterm-launcher", "sigterm-ranks-workers", "sigint-group", "sigterm-tree-validating"],
)
def test_a_signal_to_any_part_of_the_job_saves_exits_75_and_resumes_bitwise(
    uninterrupted, shards_dir, tmp_path, sig, who, extra
):
    r = _signal_mid_run(tmp_path, shards_dir, sig, who, extra)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 75, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "SignalException" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("preempted: saved "), r.stderr[-3000:]
    stopped = int((tmp_path / "preempted").read_text())
    assert 2 <= stopped < STEPS and f"after step {stopped};" in lines[0]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    # the requeue: the same command again continues from there, bit for bit
    again = subprocess.run(
        _cmd(tmp_path, shards_dir, extra), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step_{stopped:08d}" in again.stdout and not (tmp_path / "preempted").exists()
    got = final_weights(str(tmp_path))
    for k in uninterrupted:
        assert torch.equal(got[k], uninterrupted[k]), k


def test_a_rank_killed_outright_stops_the_job_quickly_with_one_line(shards_dir, tmp_path):
    """SIGKILL (the OOM killer, a node failure) gives no chance to save: the other ranks must not hang in
    their next collective, and the job ends with one line naming the rank and the signal."""
    proc = subprocess.Popen(
        _cmd(tmp_path, shards_dir), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "metrics.jsonl"
    _wait_for_records(metrics, 2)
    ranks = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(ranks) == 2
    t0 = time.time()
    os.kill(max(ranks), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    took = time.time() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 137, err[-3000:]
    assert took < 40, took  # bounded: the launcher's 30 s grace at most (README)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("torchrun: rank ") and lines[0].endswith("was killed by SIGKILL (exit status 137)")


def test_a_frozen_rank_ends_the_job_after_the_collective_timeout_and_a_relaunch_resumes_bitwise(
    uninterrupted, shards_dir, tmp_path
):
    """Rank 0 frozen by SIGSTOP (a stuck GPU or filesystem): rank 1 waits parallel.collective_timeout_s in its
    next collective, then reports in one line that rank 0 did not arrive, leaves its stacks in run_dir/hang/
    and exits 76; the relaunch resumes from the last checkpoint and ends on the uninterrupted run's weights.
    Rank 0 is the one frozen because it is the usual reporter: the report must not need it (torchrun's agent
    holds the store)."""
    extra = ("parallel.collective_timeout_s=5", "checkpoint.every=5")
    proc = subprocess.Popen(
        _cmd(tmp_path, shards_dir, extra),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    _wait_for_records(metrics, 7)
    ranks = {}
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        ranks[next(int(e[5:]) for e in environ if e.startswith(b"RANK="))] = int(pid)
    t0 = time.time()
    os.kill(ranks[0], signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(ranks[0], signal.SIGKILL)
    took = time.time() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 76, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("hang: no progress for 5 s in step ") and "rank(s) 0 did not report" in lines[0]
    assert took < 5 + 5 + 30 + 20, took  # the timeout, the report's grace, torchrun's 30 s to kill the frozen rank
    stacks = (tmp_path / "hang" / "rank1.txt").read_text()
    assert "no progress for 5 s" in stacks and "pretrain/train.py" in stacks
    assert not (tmp_path / "hang" / "rank0.txt").exists()  # frozen: it could not write
    again = subprocess.run(
        _cmd(tmp_path, shards_dir, extra), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
    got = final_weights(str(tmp_path))
    for k in uninterrupted:
        assert torch.equal(got[k], uninterrupted[k]), k
