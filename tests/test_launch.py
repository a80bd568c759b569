"""Launchers: slurm/pretrain_120m.sh under stub sbatch/srun/scontrol, and pretrain/launch.py (submitit).

The stubs stay for what a one-host SLURM cannot show: a 4-node allocation's command line (rendezvous on
the first host, node count) and a 20,000-host list. Everything one host can show (a run to the end,
requeue after each kind of signal, a hung rank, user errors, array builds, submitit on SLURM) runs
against real daemons in tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

STUBS = {
    # sbatch: what a cluster would do, minus the cluster: SLURM variables from the #SBATCH headers, then run
    "sbatch": r"""
        script="$1"; shift
        grep '^#SBATCH' "$script" > "$STUB_LOG/sbatch.headers"
        nodes=$(sed -n 's/^#SBATCH --nodes=//p' "$script")
        SLURM_JOB_ID=4242 SLURM_NNODES="$nodes" SLURM_JOB_NODELIST="gpu-node-[07-10]" SLURM_GPUS_ON_NODE=8 \
            SLURM_SUBMIT_DIR="$PWD" bash "$script" "$@"
    """,
    "srun": r"""
        printf '%s\n' "$@" > "$STUB_LOG/srun.args"
    """,
    "scontrol": r"""
        if [ "$1 $2" = "show hostnames" ]; then
            printf 'gpu-node-07\ngpu-node-08\ngpu-node-09\ngpu-node-10\n'
            for i in $(seq "${STUB_EXTRA_HOSTS:-0}"); do echo "gpu-node-x$i"; done
        fi
        if [ "$1" = requeue ]; then echo "$2" >> "$STUB_LOG/requeued"; fi
    """,
}


@pytest.fixture
def stub_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\nset -eu\n" + textwrap.dedent(body))
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _sbatch(stub_path, tmp_path, **env):
    full = {
        **os.environ,
        "PATH": f"{stub_path}:{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path),
        "RUN_DIR": str(tmp_path / "run"),
        **env,
    }
    (tmp_path / "run").mkdir(exist_ok=True)
    return subprocess.run(
        ["sbatch", "slurm/pretrain_120m.sh", "optim.lr=1e-4", "log.wandb=offline"],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_slurm_script_builds_the_torchrun_command_from_slurm_variables(stub_path, tmp_path):
    r = _sbatch(stub_path, tmp_path)
    assert r.returncode == 0, r.stderr
    headers = (tmp_path / "sbatch.headers").read_text().split("\n")
    for h in (
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=24:00:00",
    ):
        assert h in headers
    assert (tmp_path / "srun.args").read_text().splitlines() == [
        "--kill-on-bad-exit=1",
        "--ntasks-per-node=1",
        "bash",
        "-c",
        'trap "" USR1; exec "$@"',
        "ignore-usr1",
        "python",
        "-m",
        "pretrain.torchrun",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-node-07:29500",
        "--rdzv-id=4242",
        "-m",
        "pretrain.train",
        "--config",
        "pretrain/configs/120m.yaml",
        f"run_dir={tmp_path / 'run'}",
        "optim.lr=1e-4",
        "log.wandb=offline",
    ]
    assert not (tmp_path / "requeued").exists()


def test_slurm_script_reads_a_large_allocations_host_list(stub_path, tmp_path):
    """A reader that stops after the first host (| head -n 1) let SIGPIPE kill the script (exit 141)."""
    r = _sbatch(stub_path, tmp_path, STUB_EXTRA_HOSTS="20000")
    assert r.returncode == 0, r.stderr
    assert "--rdzv-endpoint=gpu-node-07:29500" in (tmp_path / "srun.args").read_text().splitlines()


def test_the_torchrun_wrapper_ignores_usr1_and_workers_can_still_handle_it():
    code = "import signal; print(signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN)"
    r = subprocess.run(
        ["bash", "-c", 'trap "" USR1; exec "$@"', "ignore-usr1", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "True"


@pytest.mark.distributed
def test_launch_local_runs_a_tiny_job_to_completion(shards_dir, tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.launch",
            "--cluster",
            "local",
            "--tasks-per-node",
            "2",
            "--config",
            "pretrain/configs/tiny.yaml",
            f"run_dir={run_dir}",
            f"data.dir={shards_dir}",
            "train.steps=4",
            "train.micro_batch_size=8",
            "train.global_batch_tokens=2048",
            "data.num_workers=0",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"finished: {run_dir}" in r.stdout and "done: 4 steps" in r.stdout
    steps = [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"


def test_launch_rejects_a_bad_config_before_submitting(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.launch",
            "--config",
            "pretrain/configs/tiny.yaml",
            f"run_dir={tmp_path}",
            "parallel.ep=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: parallel.ep=0: must be >= 1"
    assert not (tmp_path / "submitit").exists()


@pytest.mark.distributed
def test_submitit_preemption_saves_requeues_and_resumes(shards_dir, tmp_path):
    """submitit's preemption signal mid-run: the ranks save, submitit requeues, the job resumes and ends."""
    submitit = pytest.importorskip("submitit")
    from pretrain.launch import TrainJob

    run_dir = tmp_path / "run"
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    overrides = [
        f"run_dir={run_dir}",
        f"data.dir={shards_dir}",
        "train.steps=40",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "data.num_workers=0",
        "checkpoint.every=0",
    ]
    os.environ["OMP_NUM_THREADS"] = "1"
    job = executor.submit(TrainJob(f"{REPO}/pretrain/configs/tiny.yaml", overrides))
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    # the preemption signal to every task, as SLURM sends it (submitit's local controller does not forward it)
    tasks = subprocess.run(["pgrep", "-P", str(job._process.pid)], capture_output=True, text=True).stdout.split()
    assert len(tasks) == 2
    for pid in tasks:
        os.kill(int(pid), getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))
    assert job.results() == [str(run_dir), str(run_dir)]
    out, err = job.task(0).stdout(), job.task(0).stderr()
    assert "preempted: saved" in err and "Requeued job" in out
    assert "resumed from" in out and "done: 40 steps" in out
    # the ranks stopped right after the saved step, so every step appears exactly once
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 41))


def test_slurm_scripts_outside_slurm_say_so_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for script in ("slurm/pretrain_120m.sh", "slurm/pretrain_50m.sh"):
        r = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "not inside a SLURM job" in r.stderr and "unbound variable" not in r.stderr
