"""Atomic file writes: a reader (or a job killed mid-write and restarted) sees the old file or the new one.

The content goes to ``PATH.tmp<pid>`` beside the target (the same filesystem, so the rename is atomic;
the pid keeps concurrent writers, e.g. SLURM array tasks, off each other's temporaries), is flushed and
optionally fsynced, then ``os.replace``-d over the target. On an exception the temporary is removed and
the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``; ``mode`` "w" (text, UTF-8) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode {mode!r}: allowed: w, wb")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, doc, fsync: bool = False, newline: bool = False, **dump_kwargs) -> None:
    """``json.dump(doc)`` to ``path`` atomically (``dump_kwargs`` as json.dump's; ``newline``: end with one)."""
    with atomic_write(path, "w", fsync) as f:
        json.dump(doc, f, **dump_kwargs)
        if newline:
            f.write("\n")
