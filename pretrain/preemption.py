"""Preemption: SIGUSR1/SIGTERM/SIGINT (SLURM's pre-timeout signal, a scheduler's kill, Ctrl-C) → save and exit for requeue.

The handler only sets a flag. At every step boundary the ranks agree (all-reduce MAX of the flags), so
they all stop after the same step, save one checkpoint together, write ``run_dir/preempted`` and exit
with ``REQUEUE_EXIT_CODE``; a relaunch with the same config resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from pretrain import exit_codes
from pretrain.reduce import all_reduce

REQUEUE_EXIT_CODE = exit_codes.REQUEUE
MARKER = "preempted"
SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(f"preempted: saved {checkpoint} after step {step}; relaunch to resume")
        self.step, self.checkpoint = step, checkpoint


class PreemptionWatch:
    """Installed before anything slow (model build, resume), so a signal during start-up is kept too;
    ``close()`` puts the previous handlers back. Repeated signals change nothing."""

    def __init__(self, extra_signals: tuple = ()) -> None:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (*SIGNALS, *extra_signals)}  # extra: submitit's SIGUSR2

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self) -> bool:
        """Collective: True on every rank if any rank got a signal."""
        flag = torch.tensor([1 if self.received is not None else 0])
        return bool(all_reduce(flag, dist.ReduceOp.MAX).item())


def write_marker(run_dir: str, step: int) -> None:
    with open(os.path.join(run_dir, MARKER), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")


def clear_marker(run_dir: str) -> None:
    path = os.path.join(run_dir, MARKER)
    if os.path.exists(path):
        os.remove(path)
