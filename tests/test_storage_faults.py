"""A full disk or a read-only run_dir: one line naming the path, the errno text and the size, exit 2, and the
earlier checkpoints as they were (2 ranks, the shipped tiny preset, through ``python -m pretrain.torchrun``).

The real faults come from a small tmpfs, which only root can mount; elsewhere the ENOSPC case is injected
at the checkpoint's write call (``MODERNALBERT_ENOSPC_AT_SAVE``) and the read-only case is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, wrapped_cmd, wrapped_pretrain

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _torchrun(run_dir, shards_dir, steps, env=None):
    return wrapped_pretrain(
        2,
        [
            "--config",
            "pretrain/configs/tiny.yaml",
            f"data.dir={shards_dir}",
            f"run_dir={run_dir}",
            f"train.steps={steps}",
            "train.micro_batch_size=8",
            "train.global_batch_tokens=2048",
            "checkpoint.every=2",
            "eval.every=0",
        ],
        env,
    )


@contextlib.contextmanager
def _tmpfs(path, size: str, read_only: bool = False):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _check_disk_full_outcome(r, run_dir, shards_dir, tmp_path):
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _errors(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith(
        f"error: checkpoint {run_dir}/checkpoints/step_00000004: cannot be written: No space left on device ("
    ), lines[0]
    assert re.search(
        r"it needs about \d+\.\d MiB \(the previous checkpoint's size\), [\d.]+ (B|KiB|MiB|GiB|TiB) free there",
        lines[0],
    ), lines[0]
    assert "The temporary .tmp_step_00000004 was removed; earlier checkpoints and 'latest' are untouched" in lines[0]
    ckpt = run_dir / "checkpoints"
    assert sorted(os.listdir(ckpt)) == ["latest", "step_00000002"]
    assert (ckpt / "latest").read_text().strip() == "step_00000002"
    # once there is room again (here: a copy on the ordinary disk), the run resumes from it and finishes
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    again = _torchrun(moved, shards_dir, 6)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir}" not in again.stdout and "resumed from " in again.stdout
    assert "step_00000002 at step 2" in again.stdout


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(shards_dir, tmp_path):
    # 8 MiB: the step-2 checkpoint (4.8 MiB) fits, the step-4 one does not
    with _tmpfs(tmp_path / "fs", "8m") as fs:
        run_dir = fs / "run"
        r = _torchrun(run_dir, shards_dir, 6)
        assert "warning: " in r.stdout and "the save of step 4 will probably fail" in r.stdout, r.stdout[-2000:]
        _check_disk_full_outcome(r, run_dir, shards_dir, tmp_path)


def test_an_injected_enospc_on_one_rank_stops_both_the_same_way(shards_dir, tmp_path):
    """Where no tmpfs can be mounted (not root), the same path through an ENOSPC raised at the write call
    of rank 1 only: rank 0 must learn of it and stop with the same line."""
    run_dir = tmp_path / "run"
    r = _torchrun(run_dir, shards_dir, 6, env={"MODERNALBERT_ENOSPC_AT_SAVE": "4:1"})
    _check_disk_full_outcome(r, run_dir, shards_dir, tmp_path)


def test_a_read_only_run_dir_is_one_line(shards_dir, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as fs:
        r = _torchrun(fs / "run", shards_dir, 4)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = _errors(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert lines[0].startswith(f"error: run_dir {fs}/run: cannot be written: Read-only file system ("), lines[0]


def test_shards_truncated_in_place_under_a_running_job_stop_it_with_one_line(shards_dir, tmp_path):
    """Shards cut short while the loader workers have them open (they used to be mmapped: SIGBUS, reported
    by PyTorch as "insufficient shared memory"); the run stops through the collective shard-fault path."""
    import json
    import time

    data = tmp_path / "shards"
    shutil.copytree(shards_dir, data)
    run_dir = tmp_path / "run"
    cmd = wrapped_cmd(
        2,
        [
            "--config",
            "pretrain/configs/tiny.yaml",
            f"data.dir={data}",
            f"run_dir={run_dir}",
            "train.steps=400",
            "train.micro_batch_size=8",
            "train.global_batch_tokens=2048",
            "checkpoint.every=0",
            "eval.every=0",
            "train.log_every=1",
        ],
    )
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.01)
    for entry in json.loads((data / "index.json").read_text())["splits"]["train"]["shards"]:
        path = data / entry["file"]
        os.truncate(path, path.stat().st_size // 3)  # in place: the open descriptors see it
    out, err = proc.communicate(timeout=300)
    lines = _errors(err)
    assert proc.returncode == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err and "shared memory" not in err, err[-3000:]
    assert lines[0].startswith("error: shard train-") and (
        "changed on disk while open" in lines[0] or "corrupt" in lines[0]
    ), lines[0]
