"""Fault injection for the tests of the failure paths (debug switches; all off unless set).

MODERNALBERT_KILL_AFTER_STEP=N    SIGKILL this process after step N (and its checkpoint, if any)
MODERNALBERT_KILL_DURING_SAVE=N   SIGKILL while the checkpoint of step N is half written
MODERNALBERT_NAN_AT_STEP=N        make the loss of step N NaN
MODERNALBERT_ENOSPC_AT_SAVE=N:R   rank R's write of checkpoint N fails as on a full disk (where the
                                  tests cannot mount a small tmpfs: they need root for that)
"""

from __future__ import annotations

import errno
import os
import signal


def _at(name: str, step: int) -> bool:
    return os.environ.get(name) == str(step)


def kill_if(name: str, step: int) -> None:
    if _at(name, step):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    return _at("MODERNALBERT_NAN_AT_STEP", step)


def enospc_if(step: int, rank: int, path: str) -> None:
    if os.environ.get("MODERNALBERT_ENOSPC_AT_SAVE") == f"{step}:{rank}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
