"""SHA-256 of a file, read in 16 MiB blocks (constant memory for multi-GB checkpoints and shards)."""

from __future__ import annotations

import hashlib

BLOCK = 1 << 24


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
