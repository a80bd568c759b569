"""What a launch leaves in its run_dir: a failed resume changes nothing, and the logs hold each step once."""

from __future__ import annotations

import json
import os

import pytest

from conftest import TINY_BUILD, pretrain, wrapped_pretrain
from data_prep.build_shards import BuildConfig, build

pytestmark = [pytest.mark.slow]


def _args(run_dir, shards_dir, steps, extra=()):
    # the shipped tiny preset; a small batch for speed
    return [
        f"data.dir={shards_dir}",
        f"run_dir={run_dir}",
        f"train.steps={steps}",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "checkpoint.every=4",
        "eval.every=4",
        "eval.max_batches=2",
        "schedule.warmup_steps=3",
        "train.log_every=1",
        *extra,
    ]


def _snapshot(run_dir) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, run_dir)] = open(path, "rb").read()
    return out


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in open(path)]


@pytest.mark.distributed
def test_logs_hold_each_step_once_after_a_kill_and_relaunch(shards_dir, tmp_path):
    killed = pretrain(2, _args(tmp_path, shards_dir, 10), env={"MODERNALBERT_KILL_AFTER_STEP": "7"})
    assert killed.returncode != 0
    assert _steps(tmp_path / "metrics.jsonl") == list(range(1, 8))  # steps 5-7 came after the step-4 checkpoint
    r = pretrain(2, _args(tmp_path, shards_dir, 10))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "logs: 3 records after step 4 (written before the relaunch) moved to *.superseded.jsonl" in r.stdout
    assert _steps(tmp_path / "metrics.jsonl") == list(range(1, 11))
    assert _steps(tmp_path / "metrics.superseded.jsonl") == [5, 6, 7]
    assert _steps(tmp_path / "eval.jsonl") == [0, 4, 8, 10]


def test_a_failed_resume_leaves_the_run_dir_as_it_was(shards_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    r = pretrain(1, _args(run_dir, shards_dir, 4))
    assert r.returncode == 0, r.stderr[-3000:]
    before = _snapshot(run_dir)
    # a changed model: the checkpoint cannot load; the message's advice (the run's config.yaml) must still hold
    r = pretrain(1, _args(run_dir, shards_dir, 8, ["model.mol.num_experts=4"]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert "cannot be loaded into this run" in r.stderr and "Resume with the run's config.yaml" in r.stderr
    assert _snapshot(run_dir) == before
    # another shard build (same tokenizer and vocabulary, another split): one line naming the data
    other = str(tmp_path_factory.mktemp("other_shards"))
    build(BuildConfig(**{**TINY_BUILD, "val_fraction": 0.1}), other, workers=0, progress=False)
    r = pretrain(1, _args(run_dir, other, 8))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert "its data position does not fit this run: loader state belongs to other data" in r.stderr
    assert "Traceback" not in r.stderr
    assert _snapshot(run_dir) == before
    # the run's own config.yaml resumes it
    r = pretrain(1, ["--config", str(run_dir / "config.yaml"), "train.steps=8"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step_00000004 at step 4" in r.stdout


def test_a_second_launch_on_a_live_run_dir_is_refused_and_a_dead_runs_lock_is_taken_over(shards_dir, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    from conftest import REPO

    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pretrain.train",
            "--config",
            "pretrain/configs/tiny.yaml",
            *_args(tmp_path, shards_dir, 400),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.05)
        before = _snapshot(tmp_path)
        # 2 ranks through the wrapper users run: rank 0 decides, both stop, exit 2
        second = wrapped_pretrain(
            2, ["--config", "pretrain/configs/tiny.yaml", *_args(tmp_path, shards_dir, 400)], timeout=300
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.count("\n") == 1, second.stderr
        assert (
            f"error: run_dir {tmp_path} is in use by a live run (host {socket.gethostname()}, pid {first.pid}, since "
        ) in second.stderr
        assert first.poll() is None  # the live run goes on
        assert _snapshot(tmp_path)["config.yaml"] == before["config.yaml"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # the holder died without releasing: the next launch takes over, says so, and resumes
    third = pretrain(1, _args(tmp_path, shards_dir, 8))
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        f"note: took over the lock of a run that ended without releasing it (host {socket.gethostname()}, "
        f"pid {first.pid}, since " in third.stdout
    )
    assert (tmp_path / ".lock").read_text() == ""  # released at the clean end
