"""One live run per run_dir: ``run_dir/.lock``, held by rank 0 for the life of the process.

Two launches on one run_dir (a requeued job whose predecessor still runs, a second terminal) would
write the same checkpoints and logs. The lock is a POSIX record lock (``fcntl.lockf``), which the kernel
releases when its holder dies, also by SIGKILL, and which NFSv4 honours across hosts (Lustre when
mounted with ``flock``). The file says who holds it (host, pid, start time), so the refusal can name
the holder; a file whose lock is free but still names a holder is a run that died: taken over, with
a note.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".lock"


class RunDirBusy(Exception):
    """Another live process holds the run_dir (the message names it)."""


class RunLock:
    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd: int | None = None
        self.note: str | None = None  # set when a stale lock was taken over

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            who = (
                f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
                if holder
                else "a process that has not written its name yet"
            )
            raise RunDirBusy(
                f"run_dir {os.path.dirname(self.path)} is in use by a live run ({who}); wait for it "
                f"to end, stop it, or choose another run_dir"
            ) from None
        previous = _read(fd)
        if previous.get("pid"):
            self.note = (
                f"note: took over the lock of a run that ended without releasing it (host "
                f"{previous.get('host', '?')}, pid {previous['pid']}, since {previous.get('since', '?')})"
            )
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode()
            + b"\n",
            0,
        )
        self.fd = fd
        return self

    def release(self) -> None:
        """Clear the holder's name, then unlock (a clean end leaves nothing to take over)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the record lock
        self.fd = None


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
