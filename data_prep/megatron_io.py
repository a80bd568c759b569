"""Megatron-LM indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) in and out, through megatron-core.

The format is the one Megatron-LM's ``tools/preprocess_data.py`` writes (and NeMo reads):
``PREFIX.idx`` holds a header, the token count of every *sequence* (a sentence with
``--split-sentences``, else a whole document), each sequence's byte offset into ``PREFIX.bin``, and the
*document indices*: document d is sequences ``[doc_idx[d], doc_idx[d + 1])``. ``PREFIX.bin`` is the
token ids back to back, in the dtype the index names (uint16 below a vocabulary of 65 500, else int32).

In: ``open_dataset`` reads one through ``megatron.core.datasets.indexed_dataset.IndexedDataset`` and
checks that it is whole (index header and size, document indices, offsets, the ``.bin``'s size) before
a build writes anything; ``check_vocabulary`` refuses a tokenizer whose vocabulary does not cover the
dataset's ids. A document is the concatenation of its sequences; its ids are taken as they are (never
re-tokenized), and the packer wraps it in ``[CLS] … [SEP]`` like a text document.

Out: ``write_dataset`` writes documents with megatron-core's ``IndexedDatasetBuilder``, one sequence
per document, through temp files renamed into place.

megatron-core is an optional extra (``requirements-megatron.txt``), imported on first use only; it is
used for this format and nothing else (docs/data.md says why).
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from data_prep.errors import DataPrepError

INSTALL = "pip install -c constraints.txt -r requirements-megatron.txt"
_HEADER_BYTES = 34  # magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8)


def indexed_dataset_module():
    """``megatron.core.datasets.indexed_dataset``, imported on first use; one line naming the extra if missing."""
    try:
        with warnings.catch_warnings():
            # on CPU, megatron.core's package import warns that Transformer Engine and Apex are missing
            warnings.simplefilter("ignore")
            from megatron.core.datasets import indexed_dataset
    except ImportError as e:
        raise DataPrepError(f"Megatron datasets need megatron-core ({e}); install the extra: {INSTALL}") from None
    return indexed_dataset


def dataset_prefix(spec: str) -> str:
    """The path prefix of a dataset named by its prefix, its ``.bin`` or its ``.idx``."""
    return spec[:-4] if spec.endswith((".bin", ".idx")) else spec


@dataclass
class MegatronDataset:
    """One opened dataset: its documents as views into the memory-mapped ``.bin``."""

    prefix: str
    dtype: np.dtype  # the .bin's token dtype
    tokens: np.ndarray  # every token of the .bin, memory-mapped (megatron-core's reader)
    doc_bounds: np.ndarray  # int64 [D + 1]: document d is tokens[doc_bounds[d]:doc_bounds[d + 1]]
    sequences: int
    bytes: int  # .bin + .idx on disk
    reader: object  # the IndexedDataset: ``tokens`` and its index stay mapped while it lives

    @property
    def documents(self) -> int:
        return len(self.doc_bounds) - 1

    def iter_documents(self) -> Iterator[np.ndarray]:
        bounds = self.doc_bounds.tolist()
        for d in range(len(bounds) - 1):
            yield self.tokens[bounds[d] : bounds[d + 1]]


def _corrupt(path: str, why: str) -> DataPrepError:
    return DataPrepError(f"input {path!r}: not a whole Megatron dataset ({why}); rebuild it or name another")


def _check_index_header(idx_path: str, m) -> None:
    """The .idx header and size, read directly: megatron-core asserts on a bad one (and then fails again
    in ``IndexedDataset.__del__``), which would not make one line."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[:9] != m._INDEX_HEADER:
        raise _corrupt(idx_path, "no MMIDIDX header")
    version, code, seqs, docs = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise _corrupt(idx_path, f"index version {version}, expected 1")
    try:
        dtype = np.dtype(m.DType.dtype_from_code(code))
    except ValueError:
        raise _corrupt(idx_path, f"unknown dtype code {code}") from None
    if dtype.kind not in "iu":
        raise _corrupt(idx_path, f"token dtype {dtype}, not an integer type")
    expected = _HEADER_BYTES + seqs * (4 + 8) + docs * 8
    if size not in (expected, expected + seqs):  # + one mode byte per sequence in a multimodal index
        raise _corrupt(
            idx_path, f"{size:,} bytes, but its header counts {seqs:,} sequences and {docs:,} document indices"
        )
    if docs < 1:
        raise _corrupt(idx_path, "no document indices")


def open_dataset(spec: str) -> MegatronDataset:
    """Open and check one dataset (``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx``); raises DataPrepError."""
    prefix = dataset_prefix(spec)
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    missing = [p for p in (idx_path, bin_path) if not os.path.isfile(p)]
    if missing:
        raise DataPrepError(
            f"input {spec!r}: no Megatron dataset ({' and '.join(missing)} missing; "
            "a dataset is PREFIX.bin + PREFIX.idx)"
        )
    m = indexed_dataset_module()
    _check_index_header(idx_path, m)
    try:
        ds = m.IndexedDataset(prefix, mmap=True)
    except (AssertionError, ValueError, OSError) as e:  # what megatron-core's reader raises on a bad file
        raise _corrupt(idx_path, str(e) or type(e).__name__) from None
    dtype = np.dtype(ds.index.dtype)
    lens = np.asarray(ds.sequence_lengths, dtype=np.int64)
    doc_idx = np.asarray(ds.document_indices, dtype=np.int64)
    pointers = np.asarray(ds.index.sequence_pointers, dtype=np.int64)
    if doc_idx[0] != 0 or doc_idx[-1] != len(lens) or (np.diff(doc_idx) < 0).any():
        raise _corrupt(idx_path, "document indices are not a non-decreasing run from 0 to the sequence count")
    if (lens < 0).any():
        raise _corrupt(idx_path, "a negative sequence length")
    seq_bounds = np.concatenate([[0], np.cumsum(lens)])
    if not np.array_equal(pointers, seq_bounds[:-1] * dtype.itemsize):
        raise _corrupt(idx_path, "sequence offsets do not follow the sequence lengths")
    total = int(seq_bounds[-1])
    bin_bytes = os.path.getsize(bin_path)
    if bin_bytes != total * dtype.itemsize:
        raise _corrupt(
            bin_path,
            f"{bin_bytes:,} bytes, but {os.path.basename(idx_path)} describes {total:,} {dtype} tokens "
            f"= {total * dtype.itemsize:,} bytes",
        )
    tokens = ds.bin_reader.read(dtype=ds.index.dtype, count=total, offset=0) if total else np.zeros(0, dtype)
    return MegatronDataset(
        prefix=prefix,
        dtype=dtype,
        tokens=tokens,
        doc_bounds=seq_bounds[doc_idx],
        sequences=len(lens),
        bytes=bin_bytes + os.path.getsize(idx_path),
        reader=ds,
    )


def check_vocabulary(
    datasets: list[MegatronDataset], documents: int | None, vocab_size: int, tokenizer: str, special_ids: dict
) -> dict[str, int]:
    """Refuse ids the tokenizer does not have (in the first ``documents`` documents, or all); returns how
    often each special token occurs inside the documents (e.g. an EOD that ``--append-eod`` appended)."""
    specials: Counter[str] = Counter()
    left = documents
    for ds in datasets:
        n = ds.documents if left is None else min(left, ds.documents)
        used = ds.tokens[: int(ds.doc_bounds[n])]
        if used.size:
            lo, hi = int(used.min()), int(used.max())
            if lo < 0 or hi >= vocab_size:
                bad = lo if lo < 0 else hi
                raise DataPrepError(
                    f"--tokenizer {tokenizer!r}: its vocabulary ({vocab_size:,} tokens) has no id {bad:,}, which "
                    f"{ds.prefix}.bin holds; name the tokenizer the dataset was made with"
                )
            counts = np.bincount(used, minlength=vocab_size)
            for name, i in special_ids.items():
                if counts[i]:
                    specials[name] += int(counts[i])
        if left is not None:
            left -= n
            if left <= 0:
                break
    return dict(specials)


def write_dataset(prefix: str, documents: Iterable[np.ndarray], vocab_size: int) -> tuple[int, int, np.dtype]:
    """Write ``documents`` (token arrays, no specials) as PREFIX.bin/.idx, one sequence per document, in the
    dtype Megatron-LM's preprocess_data.py picks for the vocabulary; returns (documents, tokens, dtype).

    Both files are written under temp names and renamed into place at the end (the .bin first): an error
    on the way leaves nothing.
    """
    m = indexed_dataset_module()
    dtype = np.dtype(m.DType.optimal_dtype(vocab_size))
    tmp = f".tmp{os.getpid()}"
    bin_tmp, idx_tmp = prefix + ".bin" + tmp, prefix + ".idx" + tmp
    n_docs, n_tokens = 0, 0
    try:
        builder = m.IndexedDatasetBuilder(bin_tmp, dtype=dtype.type)
        try:
            for doc in documents:
                builder.add_document(doc, [len(doc)])
                n_docs += 1
                n_tokens += len(doc)
        except BaseException:
            builder.data_file.close()
            raise
        builder.finalize(idx_tmp)
        os.replace(bin_tmp, prefix + ".bin")
        os.replace(idx_tmp, prefix + ".idx")
    finally:
        for p in (bin_tmp, idx_tmp):
            if os.path.exists(p):
                os.remove(p)
    return n_docs, n_tokens, dtype
