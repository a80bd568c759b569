"""Preemption: SIGUSR1/SIGTERM/SIGINT (SLURM's pre-timeout signal, a scheduler's kill, Ctrl-C) → save, exit,
requeue.

The handler only sets a flag. At the start of every step the ranks agree on it (it rides the step's
all-reduce of batch counts, ``pretrain/train.py: Trainer.step``), so they all stop after the same step,
save one checkpoint together, write ``run_dir/preempted`` and exit with ``REQUEUE_EXIT_CODE``; a
relaunch with the same config resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal

from pretrain import exit_codes

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
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (*SIGNALS, *extra_signals)
        }  # extra: submitit's SIGUSR2

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def write_marker(run_dir: str, step: int) -> None:
    with open(os.path.join(run_dir, MARKER), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")


def clear_marker(run_dir: str) -> None:
    path = os.path.join(run_dir, MARKER)
    if os.path.exists(path):
        os.remove(path)
