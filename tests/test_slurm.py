"""The slurm/ scripts against a real one-host SLURM (slurmctld + slurmd + munged from Debian's slurm-wlm).

``scripts/slurm_local.sh`` installs the packages when missing (root and apt-get; ``.ci/run`` installs them
first) and starts the daemons for this module; without them the module skips, saying why. The jobs run
the scripts unedited, with the GPU headers overridden on the sbatch command line as a user on a CPU node
would (``--gpus-per-node=0 --cpus-per-task=2 --time=10``), on 2 processes with the tiny model, one loader
worker per rank and router jitter on. What a one-host SLURM cannot show (several nodes: the host list,
the rendezvous on the first node) stays with the stub tests in ``tests/test_launch.py``.

A requeued job waits about 1.5 minutes for its BeginTime; the tests release it at once
(``scontrol update JobId=N StartTime=now``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, final_weights

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SCRIPT = os.path.join(REPO, "scripts", "slurm_local.sh")
STEPS = 40
# the overrides of every training job: pretrain_50m.sh's config with the tiny model on the test shards
TRAIN = [
    "model.preset=tiny",
    f"train.steps={STEPS}",
    "train.micro_batch_size=8",
    "train.global_batch_tokens=2048",
    "train.log_every=1",
    "data.num_workers=1",
    "checkpoint.every=0",
    "eval.every=0",
    "parallel.collective_timeout_s=10",  # the hang stage; no step of these runs comes near it
]
SBATCH = ["--gpus-per-node=0", "--cpus-per-task=2", "--time=10"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The daemons for this module; yields the environment for sbatch/scontrol (SLURM_CONF)."""
    if shutil.which("bash") is None or not sys.platform.startswith("linux"):
        pytest.skip("a one-host SLURM needs Linux")
    r = subprocess.run(["bash", SCRIPT, "install"], capture_output=True, text=True, timeout=900)
    if r.returncode:
        pytest.skip(f"no SLURM here: {r.stderr.strip()}")
    state = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", SCRIPT, "start", str(state)], capture_output=True, text=True, timeout=120)
    if r.returncode:
        pytest.skip(f"SLURM did not start: {r.stderr.strip()}")
    env = {
        **os.environ,
        "SLURM_CONF": str(state / "slurm.conf"),
        "VENV": sys.prefix,  # the job shell activates the interpreter running these tests
        "OMP_NUM_THREADS": "1",
        "GPUS_PER_NODE": "2",
    }
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        subprocess.run(["bash", SCRIPT, "stop", str(state)], capture_output=True, timeout=60)


def _sbatch(env, script: str, args: list[str], log, extra_env=None, sbatch=SBATCH) -> int:
    r = subprocess.run(
        ["sbatch", "--parsable", *sbatch, f"--output={log}", script, *args],
        cwd=REPO,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().split(";")[0])


def _job(env, job: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(env, job: int, done, what: str, timeout: float = 240) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(env, job)
        if done(info):
            return info
        # a job this cluster can never run (more CPUs than the host has, ...) waits forever: say why now
        assert info.get("Reason") not in ("PartitionConfig", "ReqNodeNotAvail", "BadConstraints"), info
        time.sleep(0.2)
    raise AssertionError(f"job {job}: {what} not reached in {timeout} s: {_job(env, job)}")


def _finished(env, job: int, timeout: float = 240) -> dict[str, str]:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    return _wait(env, job, lambda i: i.get("JobState") in ended, "the end", timeout)


def _requeued(env, job: int, restarts: int) -> None:
    """Wait for the job's ``restarts``-th requeue, then let it start at once instead of after BeginTime."""
    _wait(env, job, lambda i: int(i.get("Restarts", 0)) >= restarts and i.get("JobState") == "PENDING", "a requeue")
    # slurmd revokes the previous run's credential with a whole-second time stamp: a start in that same second
    # is refused ("Job credential revoked") and ends the job. SLURM's own BeginTime wait avoids it; so does this.
    time.sleep(1.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True, capture_output=True)


def _last_step(run_dir) -> int:
    try:
        lines = open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _at_step(env, job: int, run_dir, step: int) -> None:
    deadline = time.time() + 180
    while time.time() < deadline and not (_job(env, job).get("JobState") == "RUNNING" and _last_step(run_dir) >= step):
        time.sleep(0.05)
    assert _last_step(run_dir) >= step, f"job {job} did not reach step {step}: {_job(env, job)}"


def _rank_pid(rank: int) -> int:
    """The training process of ``rank`` (RANK=… in its environment; not one of its loader workers, which
    inherit that environment, nor torchrun), among this host's processes."""
    from pretrain.torchrun import children_by_parent

    found = set()
    for pid in subprocess.run(["pgrep", "-f", "pretrain.train"], capture_output=True, text=True).stdout.split():
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in environ):
            found.add(int(pid))
    children = children_by_parent()
    ranks = [pid for pid in found if not any(pid in children.get(other, []) for other in found)]
    assert len(ranks) == 1, f"RANK={rank}: expected one training process, found {sorted(found)}"
    return ranks[0]


@pytest.fixture(scope="module")
def uninterrupted(slurm, shards_dir, tmp_path_factory):
    """``sbatch slurm/pretrain_50m.sh`` run to its end: the weights every interrupted job must reach."""
    base = tmp_path_factory.mktemp("uninterrupted")
    run_dir = base / "run"
    job = _sbatch(
        slurm, "slurm/pretrain_50m.sh", [f"data.dir={shards_dir}", *TRAIN], base / "job.out", {"RUN_DIR": str(run_dir)}
    )
    info = _finished(slurm, job)
    log = (base / "job.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert f"done: {STEPS} steps" in log
    return final_weights(run_dir)


def test_sbatch_pretrain_runs_to_completion(uninterrupted):
    assert uninterrupted  # the fixture asserts the job's state, exit code and last line


def test_every_way_slurm_interrupts_a_job_it_requeues_and_resumes_bitwise(slurm, shards_dir, tmp_path, uninterrupted):
    """One job, interrupted five times in turn as SLURM and its users do; each time it must save (or, for the
    hang, keep its last checkpoint), requeue itself and resume, ending on the uninterrupted job's weights:
      1. USR1 to the job steps (``#SBATCH --signal=USR1@120`` at the time limit, or a preemption),
      2. ``scontrol requeue`` (SIGTERM to every process of the job),
      3. USR1 to the batch shell only (``#SBATCH --signal=B:USR1@…``, ``scancel --batch``),
      4. USR1 to the batch shell and the steps (``scancel --full``),
      5. one rank frozen with SIGSTOP: the others end the job after parallel.collective_timeout_s (10 s)."""
    run_dir = tmp_path / "run"
    log = tmp_path / "job.out"
    job = _sbatch(slurm, "slurm/pretrain_50m.sh", [f"data.dir={shards_dir}", *TRAIN], log, {"RUN_DIR": str(run_dir)})

    def scancel(*how):
        subprocess.run(["scancel", *how, str(job)], env=slurm, check=True, capture_output=True)

    stages = [
        (4, lambda: scancel("--signal=USR1")),
        (10, lambda: subprocess.run(["scontrol", "requeue", str(job)], env=slurm, check=True, capture_output=True)),
        (16, lambda: scancel("--signal=USR1", "--batch")),
        (22, lambda: scancel("--signal=USR1", "--full")),
        (28, lambda: os.kill(_rank_pid(1), signal.SIGSTOP)),
    ]
    for restarts, (step, interrupt) in enumerate(stages, start=1):
        _at_step(slurm, job, run_dir, step)
        t0 = time.time()
        interrupt()
        _requeued(slurm, job, restarts)
        took = time.time() - t0
        if restarts == 5:  # the hang: 10 s of waiting, 5 s of grace for the report, torchrun's 30 s to kill it
            assert took < 75, took
    info = _finished(slurm, job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 5, text[-4000:]
    assert text.count("resumed from") == 5 and f"done: {STEPS} steps" in text, text[-4000:]
    # the script requeues after USR1 (1, 3, 4) and the hang (5); after SIGTERM (2) SLURM requeued by itself
    assert text.count("requeueing job") == 4, text[-4000:]
    assert "hang: no progress for 10 s in step" in text and "rank(s) 1 did not report" in text, text[-4000:]
    assert (run_dir / "hang" / "rank0.txt").exists()
    assert "Traceback" not in text, text[-4000:]
    got = final_weights(run_dir)
    for k in uninterrupted:
        assert torch.equal(got[k], uninterrupted[k]), k


@pytest.mark.parametrize(
    "bad, named",
    [("train.steps=0", "train.steps"), ("data.dir=/nonexistent/shards", "/nonexistent/shards")],
    ids=["bad-config", "missing-data"],
)
def test_a_user_error_ends_the_job_with_exit_2_one_line_and_no_requeue(slurm, shards_dir, tmp_path, bad, named):
    args = [f"data.dir={shards_dir}", *TRAIN, bad]
    job = _sbatch(slurm, "slurm/pretrain_50m.sh", args, tmp_path / "job.out", {"RUN_DIR": str(tmp_path / "run")})
    info = _finished(slurm, job)
    text = (tmp_path / "job.out").read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0" and info["Restarts"] == "0", text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], text
    assert "Traceback" not in text and "requeueing" not in text, text


def test_an_sbatch_array_builds_shards_byte_identical_to_one_machine(slurm, shards_dir, tmp_path):
    """``sbatch slurm/build_shards.sh`` as a real 3-task array (2 run at once on this host's 2 CPUs)."""
    from test_build_shards import _TINY_CLI, _dir_files

    out = tmp_path / "shards"
    job = _sbatch(
        slurm,
        "slurm/build_shards.sh",
        ["--out", str(out), *_TINY_CLI],
        tmp_path / "task-%a.out",
        sbatch=["--array=0-2", "--cpus-per-task=1", "--time=10"],
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        states = subprocess.run(
            ["squeue", "-h", "-j", str(job)], env=slurm, capture_output=True, text=True
        ).stdout.strip()
        if not states:
            break
        time.sleep(0.5)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("task-*.out")))
    assert len(list(tmp_path.glob("task-*.out"))) == 3, logs
    assert _dir_files(str(out)) == _dir_files(shards_dir), logs  # no bookkeeping left, every byte equal


def test_submitit_launch_on_slurm_requeues_on_its_signal_and_resumes(slurm, shards_dir, tmp_path, uninterrupted):
    """``python -m pretrain.launch --cluster slurm``: submitit's own sbatch script and signal (USR2 to the
    tasks, as at its time limit); rank 0 hands the signal to submitit, which requeues; the job resumes."""
    pytest.importorskip("submitit")
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.launch",
            "--cluster",
            "slurm",
            "--nodes",
            "1",
            "--tasks-per-node",
            "2",
            "--gpus-per-node",
            "0",
            "--cpus-per-task",
            "1",
            "--timeout-min",
            "10",
            "--config",
            "pretrain/configs/50m.yaml",
            f"run_dir={run_dir}",
            f"data.dir={shards_dir}",
            *TRAIN,
        ],
        cwd=REPO,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    job = int(re.search(r"submitted job (\d+)", r.stdout).group(1))
    _at_step(slurm, job, run_dir, 5)
    subprocess.run(["scancel", "--signal=USR2", str(job)], env=slurm, check=True, capture_output=True)
    _requeued(slurm, job, 1)
    info = _finished(slurm, job)
    logs = "\n".join(p.read_text() for p in (run_dir / "submitit").glob("*_0_log.*"))
    assert info["JobState"] == "COMPLETED", logs[-4000:]
    assert "preempted: saved" in logs and "resumed from" in logs and f"done: {STEPS} steps" in logs, logs[-4000:]
    got = final_weights(run_dir)
    for k in uninterrupted:
        assert torch.equal(got[k], uninterrupted[k]), k
