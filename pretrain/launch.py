"""Launch pretraining through submitit: on SLURM (requeued on preemption/timeout) or locally.

    python -m pretrain.launch --cluster local --tasks-per-node 2 --config pretrain/configs/tiny.yaml
    python -m pretrain.launch --cluster slurm --nodes 4 --tasks-per-node 8 --partition gpu \\
        --timeout-min 1440 --config pretrain/configs/120m.yaml

One submitit task per process (per GPU); each task sets the torch.distributed variables from the job
environment (rank 0's host is the rendezvous) and calls ``pretrain.train.train``. The config is
validated before anything is submitted.

Preemption and timeout: submitit's signal (SIGUSR2, sent ``--signal-delay-s`` before the time limit,
or by a preemption) is watched by the training loop like SIGUSR1/SIGTERM: every rank stops after the
same step and saves. Then rank 0 hands the signal back to submitit, which calls
``TrainJob.checkpoint`` and requeues the same job; the requeued job resumes from ``run_dir``.
Job logs: ``run_dir/submitit/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib

from data_prep.errors import DataPrepError
from config_check import ConfigError
from pretrain.config import load_config
from pretrain.dryrun import check_world
from pretrain.shard_cache import load_index


class TrainJob:
    """The picklable callable submitit runs in every task."""

    def __init__(self, config: str, overrides: list[str]) -> None:
        self.config, self.overrides = config, list(overrides)

    def __call__(self) -> str:
        import submitit

        from pretrain import preemption
        from pretrain.train import teardown, train

        env = submitit.JobEnvironment()
        host = "127.0.0.1" if env.cluster in ("local", "debug") else env.hostnames[0]
        os.environ.update(
            MASTER_ADDR=host,
            MASTER_PORT=str(20000 + zlib.crc32(str(env.job_id).encode()) % 20000),
            RANK=str(env.global_rank),
            LOCAL_RANK=str(env.local_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_WORLD_SIZE=str(env.num_tasks // max(1, env.num_nodes)),
        )
        usr_sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)  # USR2 unless SUBMITIT_PREEMPT_SIGNAL
        submitit_handler = signal.getsignal(usr_sig)
        cfg = load_config(self.config, self.overrides)
        agreed = False
        try:
            train(cfg, extra_signals=(usr_sig,))
            agreed = True
        except preemption.Preempted as e:
            print(str(e), file=sys.stderr, flush=True)
            if env.global_rank == 0 and callable(submitit_handler):
                signal.signal(usr_sig, submitit_handler)
                os.kill(os.getpid(), usr_sig)  # submitit: checkpoint() → requeue → exit
            return "preempted"
        finally:  # no barrier after a preemption: rank 0 may be gone into submitit's requeue by then
            teardown(agreed)
        return cfg.run_dir

    def checkpoint(self):
        """Called by submitit on rank 0 after the ranks saved: requeue the same job (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides))


def dry_run(a: argparse.Namespace, world: int) -> None:
    """The job's dry run (its own process: it starts a simulated process group); its error line if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = os.path.join(tmp, "plan.json")
        cmd = [
            sys.executable,
            "-m",
            "pretrain.dryrun",
            "--config",
            a.config,
            "--world-size",
            str(world),
            "--gpus-per-node",
            str(a.tasks_per_node),
            "--gpu-memory-gb",
            str(a.gpu_memory_gb),
            "--no-reference",
            "--json",
            plan,
            *a.overrides,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            lines = [x for x in r.stderr.strip().splitlines() if x.startswith("error: ")]
            raise ConfigError(lines[-1][len("error: ") :] if lines else f"the dry run failed:\n{r.stderr[-2000:]}")
        with open(plan, encoding="utf-8") as f:
            total = json.load(f)["memory_bytes"]["total"]
    print(
        f"dry run: {world} ranks, predicted memory per GPU {total / 2**30:.2f} GiB "
        "(python -m pretrain.dryrun shows the whole plan)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cluster",
        choices=("local", "slurm", "debug"),
        default="local",
        help="local: processes on this machine; slurm: sbatch; debug: in this process",
    )
    p.add_argument("--config", required=True, help="YAML config (pretrain/configs/*.yaml)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=1, help="processes per node (one per GPU)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: --tasks-per-node on slurm, 0 locally")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--signal-delay-s", type=int, default=120, help="preemption signal this long before the time limit")
    p.add_argument("--max-requeues", type=int, default=3, help="timeouts tolerated before giving up")
    p.add_argument("--no-wait", action="store_true", help="return after submitting (slurm never waits)")
    p.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=80,
        help="slurm: the dry run (python -m pretrain.dryrun) refuses a job predicted above this per GPU",
    )
    p.add_argument("--no-dry-run", action="store_true", help="slurm: submit without the dry run's memory check")
    p.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        if a.nodes < 1 or a.tasks_per_node < 1:
            raise ConfigError(f"--nodes={a.nodes} --tasks-per-node={a.tasks_per_node}: both must be >= 1")
        index = load_index(cfg.data.dir)  # the jobs would all fail on it, after waiting in the queue
        world = a.nodes * a.tasks_per_node
        check_world(cfg, world, index.seq_len, a.tasks_per_node)  # the dry run's checks: ep, global batch
        if a.cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise ConfigError(
                "--cluster slurm: no sbatch/srun on this machine's PATH; submit from a SLURM login "
                "node, or run here with --cluster local"
            )
        if a.cluster == "slurm" and not a.no_dry_run:
            dry_run(a, world)
    except (ConfigError, DataPrepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import submitit
    except ImportError:
        print("error: submitit is not installed (pip install submitit)", file=sys.stderr)
        return 2

    folder = os.path.join(cfg.run_dir, "submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster=a.cluster, slurm_max_num_timeout=a.max_requeues)
    gpus = a.gpus_per_node if a.gpus_per_node is not None else (a.tasks_per_node if a.cluster == "slurm" else 0)
    params = dict(
        name=f"modernalbert-{os.path.basename(os.path.abspath(cfg.run_dir))}",
        nodes=a.nodes,
        tasks_per_node=a.tasks_per_node,
        timeout_min=a.timeout_min,
    )
    if a.cluster == "slurm":
        params.update(
            gpus_per_node=gpus, slurm_signal_delay_s=a.signal_delay_s, slurm_additional_parameters={"requeue": True}
        )
        if a.cpus_per_task:
            params["cpus_per_task"] = a.cpus_per_task
        if a.partition:
            params["slurm_partition"] = a.partition
        if a.account:
            params["slurm_account"] = a.account
    executor.update_parameters(**params)
    try:
        job = executor.submit(TrainJob(a.config, a.overrides))
    except Exception as e:  # sbatch refused the job (partition, account, limits): its message says why
        print(f"error: submitting to {a.cluster} failed: {' '.join(str(e).split())[:1000]}", file=sys.stderr)
        return 1
    print(
        f"submitted job {job.job_id} ({a.cluster}, {a.nodes} x {a.tasks_per_node} tasks); logs in {folder}", flush=True
    )
    if a.cluster == "slurm" or a.no_wait:
        return 0
    try:
        results = job.results()
    except Exception as e:  # the task's traceback is in the job's stderr log
        print(f"error: job {job.job_id} failed: {e}\n{job.stderr() or ''}"[-4000:], file=sys.stderr)
        return 1
    print(job.stdout() or "", end="")
    print(f"finished: {results[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
