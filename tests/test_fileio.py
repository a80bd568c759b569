"""fileio: a write is whole or absent (the old file survives a failure, no temporary is left), and the digest."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from fileio import atomic_write, sha256_file, write_json


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "doc.json")
    write_json(path, {"a": 1}, fsync=True, newline=True, indent=1)
    assert json.load(open(path)) == {"a": 1} and open(path).read().endswith("}\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write('{"a": 2')  # half a document, then the writer dies
            raise RuntimeError("killed")
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["doc.json"]
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    assert open(path, "rb").read() == b"\x00\x01"
    with pytest.raises(ValueError, match="allowed: w, wb"):
        with atomic_write(path, "a"):
            pass


def test_sha256_file_matches_hashlib_across_blocks(tmp_path, monkeypatch):
    import fileio.digest

    monkeypatch.setattr(fileio.digest, "BLOCK", 7)  # several blocks and a short last one
    data = os.urandom(100)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()
