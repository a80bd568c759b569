"""Directories written whole or not at all: ``with OutputDir(path) as tmp:`` write into ``tmp``.

Everything goes into ``PATH.tmp-<pid>`` beside the target (the same filesystem, so the rename is atomic;
the pid keeps concurrent writers off each other's temporaries). On success an existing ``PATH`` is
replaced by it; on an exception the temporary is removed and ``PATH`` is untouched, so a failing tool
leaves no partial directory behind. Checkpoints keep their own temp-dir protocol
(``pretrain/checkpoint.py``: several ranks write one directory, and a manifest is added before the rename).
"""

from __future__ import annotations

import os
import shutil


class OutputDir:
    """``with OutputDir(path) as tmp:`` write into ``tmp``; renamed to ``path`` on success, removed on error.

    An existing ``path`` is an error (``error``, the caller's type: the CLIs pass the one they print as a
    line and exit 2 on) unless ``overwrite``.
    """

    def __init__(self, path: str, overwrite: bool = False, error: type[Exception] = FileExistsError) -> None:
        self.path = os.path.abspath(path)
        self.overwrite = overwrite
        self.error = error
        self.tmp = f"{self.path}.tmp-{os.getpid()}"

    def check(self) -> None:
        """Raise now what ``__enter__`` would raise for an existing path: a tool calls it before hours of work."""
        if os.path.exists(self.path) and not self.overwrite:
            raise self.error(f"--out {self.path}: already exists (remove it or pass --overwrite)")

    def __enter__(self) -> str:
        self.check()
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
