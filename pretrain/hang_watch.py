"""A rank that stops making progress ends the job in bounded time: one line, every live rank's stacks, exit 76.

Without this, one hung rank (a stuck GPU or filesystem, a process stopped by SIGSTOP) leaves the others
blocked in their next collective, printing nothing, for gloo's 30 minutes or NCCL's watchdog's 10, while
the allocation burns. From the end of the first step on (start-up, compilation and the first step may be
slow for good reasons: ``parallel.startup_timeout_s`` bounds them instead), every rank runs a watchdog
thread that the training loop re-arms at each step, each validation batch and each checkpoint save. When
no re-arm comes within ``parallel.collective_timeout_s``, the thread

1. writes this process's Python stacks (``faulthandler``, every thread) to ``run_dir/hang/rank<R>.txt``;
2. marks this rank as waiting in the job's key-value store (torchrun's agent store, which outlives the
   workers) and, after a short grace for the others' marks, the first rank to claim the report prints one
   line: what the job was doing (the step), the ranks that left no mark (a rank that could not run
   Python: stopped, or stuck with the interpreter lock held) and the time waited;
3. ends this process with ``exit_codes.HANG``: transient, so the SLURM script requeues the job and it
   resumes from the last checkpoint (``slurm/torchrun_job.sh``).

The thread needs the main thread to release the interpreter lock while it waits, which blocking
collectives do (gloo's and NCCL's waits release it). The process groups' own timeout is set a minute
later as a backstop (``backstop_timeouts``).

No model or torch.distributed state is touched from the thread: it reads the store through its own client
and leaves with ``os._exit`` (the group is broken; a teardown would block).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from datetime import timedelta

from pretrain import exit_codes

STORE_GRACE_S = 5.0  # how long a rank that fired waits for the other ranks' marks before the report
BACKSTOP_MARGIN_S = 60.0  # the process groups' own timeout: this much after the watchdog's


class HangWatch:
    """Re-arm with ``arm(what)`` at every point of progress; ``close()`` at the end of the run.

    ``what`` is the activity that must finish within the timeout ("step 12"), named in the report.
    """

    def __init__(self, timeout_s: float, run_dir: str, rank: int, world: int) -> None:
        self.timeout_s = timeout_s
        self.run_dir = run_dir
        self.rank, self.world = rank, world
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what = ""
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="hang-watch", daemon=True)
        self._thread.start()

    def arm(self, what: str, timeout_s: float | None = None) -> None:
        with self._cond:
            self._what = what
            self._deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(timeout=left)
                    continue
                what, waited = self._what, self.timeout_s
                break
            else:
                return
        self._fire(what, waited)

    def _fire(self, what: str, waited: float) -> None:
        stacks = os.path.join(self.run_dir, "hang")
        try:
            os.makedirs(stacks, exist_ok=True)
            with open(os.path.join(stacks, f"rank{self.rank}.txt"), "w") as f:
                f.write(f"rank {self.rank}: no progress for {waited:.0f} s in {what}\n")
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError:
            pass  # the report below still names the hang
        missing, report = _mark_and_collect(self.rank, self.world, what)
        if report:
            if missing is None:
                who = "the job's store did not answer, so which rank hung is unknown"
            elif missing:
                who = f"rank(s) {', '.join(map(str, missing))} did not report (stopped, or stuck holding the GIL)"
            else:
                who = "every rank reported waiting: compare their stacks"
            print(
                f"hang: no progress for {waited:.0f} s in {what}; {who}; stacks in {stacks}/; exit "
                f"{exit_codes.HANG} (requeue: the run resumes from its last checkpoint; "
                "parallel.collective_timeout_s sets the wait)",
                file=sys.stderr,
                flush=True,
            )
        sys.stdout.flush()
        os._exit(exit_codes.HANG)


def _mark_and_collect(rank: int, world: int, what: str) -> tuple[list[int] | None, bool]:
    """Mark this rank in the launcher's store, wait ``STORE_GRACE_S`` for the others; returns the ranks with no
    mark (None when the store cannot be reached) and whether this rank prints the report (the first to claim
    it, or every rank when there is no store)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None, True
    try:
        import torch.distributed as dist

        store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=10))
        # one attempt of the job: a torchrun restart or a relaunch on the same store starts a new set of keys
        prefix = f"modernalbert/hang/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/" + os.environ.get(
            "TORCHELASTIC_RESTART_COUNT", "0"
        )
        store.set(f"{prefix}/rank{rank}", what)
        time.sleep(STORE_GRACE_S)
        missing = [r for r in range(world) if not store.check([f"{prefix}/rank{r}"])]
        return missing, store.add(f"{prefix}/reporter", 1) == 1
    except Exception:  # noqa: BLE001 - a store that is gone (its host was the hung one) must not hide the hang
        return None, True


def backstop_timeouts(timeout_s: float) -> None:
    """Every process group's own collective timeout: the watchdog's plus ``BACKSTOP_MARGIN_S``.

    Set after the first step (before it, the start-up timeout of ``init_process_group`` holds). It ends a
    collective that the watchdog could not (a rank whose Python thread cannot run): gloo raises, NCCL's
    watchdog aborts the process.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s + BACKSTOP_MARGIN_S)
    groups = list(getattr(getattr(c10d, "_world", None), "pg_map", {}) or [c10d._get_default_group()])
    for group in groups:
        c10d._set_pg_timeout(timeout, group)
