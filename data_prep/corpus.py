"""Reading text corpora: resolve inputs to files, detect formats, stream documents in a fixed order.

Supported formats (by file name):
  plain text  ``.txt .text .md`` (optionally ``.gz``/``.zst``): documents are separated by blank lines.
  JSONL       ``.jsonl .json .ndjson`` (optionally ``.gz``/``.zst``): one JSON object per line, text in
              ``text_field``.
  Parquet     ``.parquet``: text in the ``text_field`` column.

Bytes that are not valid UTF-8 are replaced by U+FFFD and counted, never fatal.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from data_prep.errors import DataPrepError

SAMPLE_CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_corpus")

_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
SUPPORTED_SUFFIXES = sorted(
    list(_FORMATS) + [f"{s}{c}" for s, f in _FORMATS.items() if f != "parquet" for c in _COMPRESSIONS]
)


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str  # "text" | "jsonl" | "parquet"
    compression: str | None  # None | "gzip" | "zstd"
    size: int  # bytes on disk


@dataclass
class ReadStats:
    """What the readers saw; deterministic for a given input, so it goes into index.json."""

    documents: int = 0
    empty_documents: int = 0
    chars: int = 0
    replaced_bytes: int = 0  # undecodable bytes replaced by U+FFFD
    documents_per_file: dict[str, int] = field(default_factory=dict)


def classify(path: str) -> InputFile:
    name = os.path.basename(path).lower()
    stem, ext = os.path.splitext(name)
    compression = _COMPRESSIONS.get(ext)
    if compression:
        ext = os.path.splitext(stem)[1]
    fmt = _FORMATS.get(ext)
    if fmt is None or (fmt == "parquet" and compression):
        raise DataPrepError(
            f"input {path!r}: unsupported file type; supported endings: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return InputFile(path=path, format=fmt, compression=compression, size=os.path.getsize(path))


def resolve_inputs(specs: list[str]) -> list[InputFile]:
    """Expand paths, directories (recursively, supported files only) and globs, in a fixed order.

    Each spec keeps its position on the command line; what one spec expands to is sorted.
    """
    files: list[InputFile] = []
    seen: set[str] = set()
    for spec in specs:
        if os.path.isdir(spec):
            paths = sorted(
                os.path.join(root, n)
                for root, _, names in os.walk(spec)
                for n in names
                if any(n.lower().endswith(s) for s in SUPPORTED_SUFFIXES)
            )
            if not paths:
                raise DataPrepError(
                    f"input {spec!r}: directory holds no supported files ({', '.join(SUPPORTED_SUFFIXES)})"
                )
        elif os.path.isfile(spec):
            paths = [spec]
        elif glob.has_magic(spec):
            paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not paths:
                raise DataPrepError(f"input {spec!r}: the pattern matches no file")
        else:
            raise DataPrepError(f"input {spec!r}: no such file or directory")
        for p in paths:
            if p not in seen:
                seen.add(p)
                files.append(classify(p))
    return files


class _ReplacementCounter:
    """A codecs error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self) -> None:
        self.count = 0
        self.name = f"data_prep_count_{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, err: UnicodeDecodeError):
        self.count += err.end - err.start
        return "\ufffd", err.end


class _CountingReader(io.RawIOBase):
    """Counts the raw (on-disk) bytes consumed, for the progress bar."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._raw, self._on_bytes = raw, on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._on_bytes(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_binary(f: InputFile, on_bytes: Callable[[int], None]) -> BinaryIO:
    raw = io.BufferedReader(_CountingReader(open(f.path, "rb"), on_bytes), buffer_size=1 << 20)
    if f.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if f.compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), buffer_size=1 << 20)
    return raw


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt or truncated input raises (gzip.BadGzipFile is an OSError)."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _text_documents(lines: Iterator[str]) -> Iterator[str]:
    buf: list[str] = []
    for line in lines:
        if line.strip():
            buf.append(line.rstrip("\r\n"))
        elif buf:
            yield "\n".join(buf)
            buf = []
    if buf:
        yield "\n".join(buf)


class CorpusReader:
    """Streams the documents of a list of input files, in order, with statistics.

    ``on_bytes`` is called with the number of on-disk bytes consumed (progress reporting).
    """

    def __init__(
        self, files: list[InputFile], text_field: str = "text", on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self.files = files
        self.text_field = text_field
        self._stats = ReadStats()
        self._on_bytes = on_bytes or (lambda n: None)
        self._errors = _ReplacementCounter()

    @property
    def stats(self) -> ReadStats:
        """Statistics of what has been read so far (also when iteration stopped early)."""
        self._stats.replaced_bytes = self._errors.count
        return self._stats

    def __iter__(self) -> Iterator[str]:
        st = self._stats
        for f in self.files:
            st.documents_per_file[f.path] = 0
            try:
                for doc in self._file_documents(f):
                    if not doc.strip():
                        st.empty_documents += 1
                        continue
                    st.documents += 1
                    st.documents_per_file[f.path] += 1
                    st.chars += len(doc)
                    yield doc
            except DataPrepError:
                raise
            except _read_errors() as e:
                what = {"gzip": "gzip", "zstd": "zstd"}.get(f.compression or "", "")
                raise DataPrepError(f"input {f.path!r}: cannot read {what} data: {e}".replace("  ", " ")) from e

    def _decode(self, data: bytes) -> str:
        return data.decode("utf-8", errors=self._errors.name)

    def _file_documents(self, f: InputFile) -> Iterator[str]:
        if f.format == "parquet":
            yield from self._parquet_documents(f)
            return
        with _open_binary(f, self._on_bytes) as stream:
            lines = (self._decode(raw) for raw in stream)
            if f.format == "text":
                yield from _text_documents(lines)
                return
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataPrepError(f"input {f.path!r} line {lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or self.text_field not in obj:
                    fields = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                    raise DataPrepError(
                        f"input {f.path!r} line {lineno}: no field {self.text_field!r} (found: {fields}); "
                        f"choose the field with --text-field"
                    )
                text = obj[self.text_field]
                if not isinstance(text, str):
                    raise DataPrepError(
                        f"input {f.path!r} line {lineno}: field {self.text_field!r} is {type(text).__name__}, "
                        "not a string"
                    )
                yield text

    def _parquet_documents(self, f: InputFile) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(f.path)
        except (pa.ArrowException, OSError) as e:
            raise DataPrepError(f"input {f.path!r}: cannot read Parquet data: {e}") from None
        if self.text_field not in pf.schema_arrow.names:
            raise DataPrepError(
                f"input {f.path!r}: no column {self.text_field!r} (found: {', '.join(pf.schema_arrow.names)}); "
                f"choose the column with --text-field"
            )
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text
        self._on_bytes(f.size)
