"""The on-disk shard format: webdataset tar shards plus ``index.json``.

A shard (``train-000000.tar``, ``val-000000.tar``) is a plain tar whose members come in pairs, one pair
per sample, in sample order (webdataset convention: same key, different extensions)::

    000000042.input_ids.npy   uint16 (vocab <= 65536) or uint32, [T]: [CLS] doc [SEP] [CLS] doc [SEP] ...
    000000042.segments.npy    int64 [S, 2]: per segment (document piece), its length in tokens and
                              its corpus-wide document id

Tars are written byte-reproducibly (fixed mtime/owner/mode, USTAR headers). ``index.json`` lists every
shard with its sample/token counts and sha256, the tokenizer, the build arguments and corpus
statistics. The loader (``pretrain/data.py``) reads samples by random access (pread).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from data_prep.errors import DataPrepError

INDEX_FILE = "index.json"
INDEX_FORMAT = "modernalbert-shards"
INDEX_VERSION = 1
SPLITS = ("train", "val")
_FIELDS = ("input_ids", "segments")


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads the archive to whole records, as tarfile and GNU tar do


def _npy_header(arr: np.ndarray) -> bytes:
    """The .npy v1.0 header of a C-contiguous array (what np.save writes), built directly: ~20x faster."""
    shape = f"({arr.shape[0]},)" if arr.ndim == 1 else "(" + ", ".join(map(str, arr.shape)) + ")"
    d = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
    d += " " * (21 - len(str(arr.shape[0])))  # numpy leaves room for the first axis to grow in place
    d += " " * (64 - (10 + len(d) + 1) % 64) + "\n"  # pad to 64-byte alignment (a full 64 when aligned)
    return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d.encode("latin1")


def _ustar_header(name: str, size: int) -> bytes:
    """A USTAR member header, byte-equal to tarfile's for mode 0444, mtime 0, root-less owner."""

    def octal(v: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, v)

    head = (
        name.encode("ascii").ljust(100, b"\0")
        + octal(0o444, 8)
        + octal(0, 8)
        + octal(0, 8)
        + octal(size, 12)
        + octal(0, 12)
    )
    tail = (b"0" + b"\0" * 100 + b"ustar\x0000").ljust(_BLOCK - 156, b"\0")  # empty owner names, no device
    chksum = sum(head) + 8 * 32 + sum(tail)
    return head + b"%06o\0 " % chksum + tail


class _HashingFile:
    """A write-only file that hashes what passes through, so the shard's sha256 costs no re-read."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "wb", buffering=1 << 20)
        self.sha256 = hashlib.sha256()
        self.pos = 0

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.pos += len(data)
        self._file.write(data)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class ShardWriter:
    """Writes one shard to ``path`` through a temp file; ``close()`` renames it into place.

    ``close()`` returns the sha256 of the finished file. A writer that is never closed leaves only its
    temp file behind, never a truncated shard under the final name. Members are written with
    hand-built USTAR/.npy headers (the tarfile module costs ~100 µs per sample); the bytes equal
    what ``tarfile`` + ``np.save`` write (tested).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tmp = f"{path}.tmp{os.getpid()}"
        self._file = _HashingFile(self._tmp)
        self.samples = 0
        self.tokens = 0

    def _member(self, name: str, arr: np.ndarray) -> None:
        header = _npy_header(arr)
        data = arr.tobytes()
        size = len(header) + len(data)
        self._file.write(_ustar_header(name, size))
        self._file.write(header)
        self._file.write(data)
        if size % _BLOCK:
            self._file.write(b"\0" * (_BLOCK - size % _BLOCK))

    def add(self, input_ids: np.ndarray, doc_lens: np.ndarray, doc_ids: np.ndarray) -> None:
        key = f"{self.samples:09d}"
        segments = np.stack([doc_lens.astype(np.int64), doc_ids.astype(np.int64)], axis=1)
        self._member(f"{key}.input_ids.npy", np.ascontiguousarray(input_ids))
        self._member(f"{key}.segments.npy", segments)
        self.samples += 1
        self.tokens += int(len(input_ids))

    def close(self) -> str:
        self._file.write(b"\0" * (2 * _BLOCK))  # end-of-archive marker
        if self._file.pos % _RECORD:
            self._file.write(b"\0" * (_RECORD - self._file.pos % _RECORD))
        self._file.close()
        os.replace(self._tmp, self.path)
        return self._file.sha256.hexdigest()

    def abort(self) -> None:
        self._file._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


class ShardError(DataPrepError):
    """A shard file is missing, corrupt, or does not match index.json."""


class ShardReader:
    """Random access to the samples of one shard; verifies its sha256 when opened (if given).

    Samples are read with ``pread`` on a file descriptor kept open, not through an mmap: a shard
    truncated in place while a loader worker has it mapped would kill the worker with SIGBUS (reported
    by PyTorch as "insufficient shared memory"). A short read says exactly what happened. A shard
    rewritten by ``build_shards.py`` (a new file renamed over the old) changes nothing for an open
    reader: it keeps reading the file it verified.
    """

    def __init__(self, path: str, expected_sha256: str | None = None, expected_samples: int | None = None) -> None:
        self.path = path
        self.name = name = os.path.basename(path)
        if not os.path.isfile(path):
            raise ShardError(f"shard {name}: missing ({path}); rebuild with data_prep/build_shards.py")
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size
        if expected_sha256 is not None:
            h = hashlib.sha256()
            for block in iter(lambda: self._f.read(1 << 22), b""):
                h.update(block)
            actual = h.hexdigest()
            if actual != expected_sha256:
                self.close()
                raise ShardError(
                    f"shard {name}: corrupt (sha256 {actual[:12]}… != {expected_sha256[:12]}… in index.json); "
                    f"rerun data_prep/build_shards.py with the same arguments to rebuild it"
                )
        spans: dict[str, list[tuple[int, int]]] = {f: [] for f in _FIELDS}
        try:
            self._f.seek(0)
            with tarfile.open(fileobj=self._f, mode="r:") as tar:
                for m in tar:
                    field = m.name.split(".")[1]
                    spans[field].append((m.offset_data, m.size))
        except (tarfile.TarError, IndexError, KeyError) as e:
            self.close()
            raise ShardError(f"shard {name}: not a valid shard tar ({e})") from None
        if len(spans["input_ids"]) != len(spans["segments"]) or (
            expected_samples is not None and len(spans["input_ids"]) != expected_samples
        ):
            self.close()
            raise ShardError(
                f"shard {name}: holds {len(spans['input_ids'])} samples, index.json says {expected_samples}"
            )
        self._spans = spans

    def __len__(self) -> int:
        return len(self._spans["input_ids"])

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __del__(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            f.close()

    def _array(self, field: str, i: int) -> np.ndarray:
        off, size = self._spans[field][i]
        data = os.pread(self._f.fileno(), size, off)
        if len(data) != size:
            now = os.fstat(self._f.fileno()).st_size
            raise ShardError(
                f"shard {self.name}: changed on disk while open ({self.size:,} bytes when opened and "
                f"verified, {now:,} now); rebuild it with data_prep/build_shards.py (it writes a new "
                "file and renames it) and relaunch: the run resumes exactly"
            )
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids [T], doc_lens [S], doc_ids [S]) of sample ``i``."""
        seg = self._array("segments", i)
        return self._array("input_ids", i), seg[:, 0], seg[:, 1]


@dataclass(frozen=True)
class ShardEntry:
    file: str
    sha256: str
    samples: int
    tokens: int


@dataclass(frozen=True)
class ShardIndex:
    """The parts of index.json the loader needs; ``raw`` keeps the whole document."""

    data_dir: str
    seq_len: int
    vocab_size: int
    special_ids: dict[str, int]
    splits: dict[str, list[ShardEntry]]
    raw: dict

    @classmethod
    def load(cls, data_dir: str) -> "ShardIndex":
        path = os.path.join(data_dir, INDEX_FILE)
        if not os.path.isdir(data_dir):
            raise DataPrepError(f"data directory {data_dir!r}: no such directory")
        if not os.path.isfile(path):
            raise DataPrepError(
                f"data directory {data_dir!r}: no {INDEX_FILE} (build it with data_prep/build_shards.py)"
            )
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataPrepError(f"{path}: unreadable index ({e})") from None
        return cls.parse(data_dir, data, path)

    @classmethod
    def parse(cls, data_dir: str, data: bytes, path: str) -> "ShardIndex":
        """The index from the bytes of ``index.json`` (``path`` names it in errors; a file or a URL)."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataPrepError(f"{path}: unreadable index ({e})") from None
        if not isinstance(raw, dict):
            raise DataPrepError(f"{path}: unreadable index (not a JSON object)")
        if raw.get("format") != INDEX_FORMAT or raw.get("version") != INDEX_VERSION:
            raise DataPrepError(
                f"{path}: format {raw.get('format')!r} v{raw.get('version')}, expected {INDEX_FORMAT!r} "
                f"v{INDEX_VERSION}"
            )
        splits = {
            s: [ShardEntry(e["file"], e["sha256"], e["samples"], e["tokens"]) for e in raw["splits"][s]["shards"]]
            for s in raw["splits"]
        }
        tok = raw["tokenizer"]
        return cls(data_dir, raw["seq_len"], tok["vocab_size"], tok["special_ids"], splits, raw)

    def fingerprint(self, split: str) -> str:
        """Identifies the exact data of a split (its shards' hashes), for checkpointed loader state."""
        return hashlib.sha256("".join(e.sha256 for e in self.splits[split]).encode()).hexdigest()

    def shard_path(self, entry: ShardEntry) -> str:
        return os.path.join(self.data_dir, entry.file)


def iter_documents(index: ShardIndex, split: str) -> Iterator[tuple[int, np.ndarray]]:
    """(document id, its tokens without the [CLS]/[SEP] the packer added) of every document of a split, in
    build order (ascending ids); a document cut into pieces comes back whole. Shards are verified as they
    are opened (sha256 and sample count against index.json)."""
    cls, sep = index.special_ids["cls"], index.special_ids["sep"]
    doc_id, parts = -1, []
    for entry in index.splits[split]:
        reader = ShardReader(index.shard_path(entry), entry.sha256, entry.samples)
        try:
            for i in range(len(reader)):
                ids, lens, doc_ids = reader.sample(i)
                off = 0
                for n, d in zip(lens.tolist(), doc_ids.tolist()):
                    seg = ids[off : off + n]
                    off += n
                    if n < 2 or seg[0] != cls or seg[-1] != sep:
                        raise ShardError(f"shard {reader.name}: sample {i} has a segment not wrapped in [CLS] … [SEP]")
                    if d != doc_id:
                        if d < doc_id:
                            raise ShardError(f"shard {reader.name}: document {d} comes after document {doc_id}")
                        if parts:
                            yield doc_id, np.concatenate(parts)
                        doc_id, parts = d, []
                    parts.append(seg[1:-1])
        finally:
            reader.close()
    if parts:
        yield doc_id, np.concatenate(parts)
