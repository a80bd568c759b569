"""Storage faults while writing a run: a full disk, a quota, a read-only or foreign-owned directory.

What fails under a full disk is not always an ``OSError``: torch's zip writer reports ENOSPC as
"unexpected pos 704 vs 598", and DCP wraps each rank's error in a ``CheckpointException``. So a failed
write is classified twice: by an errno anywhere in the exception's chain, then, failing that, by
writing a probe file beside the target (a full disk refuses it with the real errno).
"""

from __future__ import annotations

import errno
import os

# what the user can act on: free space, a quota, permissions, a read-only mount
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_PROBE_BYTES = 1 << 20


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def free_bytes(directory: str) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def tree_size(path: str) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _chained_oserror(e: BaseException) -> OSError | None:
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
            return x
        todo += [c for c in (x.__cause__, x.__context__) if c is not None]
        failures = getattr(x, "failures", None)  # DCP's CheckpointException: {rank: (exception, traceback)}
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return None


def _probe(directory: str) -> OSError | None:
    """Write (then remove) 1 MiB in ``directory`` or its nearest existing parent: the errno it meets, if any."""
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    path = os.path.join(directory or ".", f".storage_probe_{os.getpid()}")
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e if e.errno in STORAGE_ERRNOS else None
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    return None


def storage_failure(e: BaseException, directory: str) -> OSError | None:
    """The storage fault behind ``e`` (a write under ``directory`` failed), or None if it is something else."""
    return _chained_oserror(e) or _probe(directory)


def write_fault(e: OSError, what: str, directory: str) -> str:
    """The one line for an ``OSError`` met writing a log or config under ``directory``; anything that is
    not a storage fault is re-raised."""
    if e.errno not in STORAGE_ERRNOS:
        raise e
    return describe_failure(e, what, None, directory)


def describe_failure(err: OSError, what: str, need: int | None, directory: str) -> str:
    """One line: what could not be written, the errno text and path, the size needed and the space free."""
    where = err.filename or directory
    text = os.strerror(err.errno) if err.errno else str(err)
    free = free_bytes(directory)
    sizes = []
    if need:
        sizes.append(f"it needs about {human(need)} (the previous checkpoint's size)")
    if free is not None:
        sizes.append(f"{human(free)} free there")
    return f"{what}: {text} ({where})" + (f"; {', '.join(sizes)}" if sizes else "")
