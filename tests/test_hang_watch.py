"""pretrain/hang_watch.py on its own: it fires only without progress, and then leaves one line, its stacks and 76.

The whole path (a frozen rank in a 2-rank run, torchrun and SLURM) is in test_preemption.py and test_slurm.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

_PROG = textwrap.dedent(
    """
    import os, sys, time
    from pretrain.hang_watch import HangWatch
    os.environ.pop("MASTER_ADDR", None)
    watch = HangWatch(1.0, sys.argv[1], rank=3, world=4)
    for i in range(int(sys.argv[2])):  # progress: re-armed well within the timeout
        watch.arm(f"step {i + 1}")
        time.sleep(0.1)
    watch.arm("step 99")
    time.sleep(float(sys.argv[3]))  # no progress
    watch.close()
    print("closed")
    """
)


def _run(tmp_path, beats: int, stall: float):
    return subprocess.run(
        [sys.executable, "-c", _PROG, str(tmp_path), str(beats), str(stall)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_steady_progress_never_fires(tmp_path):
    r = _run(tmp_path, beats=20, stall=0.5)  # 2 s of steps 0.1 s apart, then a 0.5 s pause: under 1 s
    assert r.returncode == 0 and r.stdout.strip() == "closed", r.stderr
    assert not (tmp_path / "hang").exists()


def test_no_progress_gives_one_line_the_stacks_and_exit_76(tmp_path):
    r = _run(tmp_path, beats=3, stall=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 76 and "closed" not in r.stdout, r.stderr
    # no store to ask (no MASTER_ADDR): the line says so instead of naming ranks
    assert len(lines) == 1 and lines[0].startswith("hang: no progress for 1 s in step 99; the job's store"), lines
    stacks = (tmp_path / "hang" / "rank3.txt").read_text()
    assert stacks.startswith("rank 3: no progress for 1 s in step 99") and 'File "<string>"' in stacks, stacks
