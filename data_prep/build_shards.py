"""Build a tokenizer and webdataset tar shards (with index.json) from text corpora.

    python data_prep/build_shards.py --out data/shards                      # the shipped sample corpus
    python data_prep/build_shards.py 'corpus/*.jsonl.zst' --out data/shards --seq-len 1024 --workers 16
    python data_prep/build_shards.py books/ --tokenizer teacher/tokenizer.json --out data/teacher_shards

How it works: documents are read in a fixed order (inputs in command-line order, each directory or
glob sorted) and sent to the train or validation split by a seeded hash of their position. Each split's
stream is cut into blocks of about --shard-mb of text; every block becomes one shard, built
independently by a worker process (tokenize → pack into --seq-len samples → tar). So the output is
byte-identical for any --workers, and an interrupted build rerun with the same arguments keeps every
finished shard whose sha256 still matches and builds only the rest. Nothing is ever deleted except
this tool's own temp files.

Megatron datasets: ``--megatron`` reads its inputs as Megatron-LM indexed datasets (PREFIX.bin +
PREFIX.idx, through megatron-core: ``data_prep/megatron_io.py``) with ``--tokenizer`` the tokenizer they
were made with. Their documents enter where text documents become token lists, so the split, the
blocks, the packing and the shards follow the same rules (a block is cut by --shard-mb of token bytes
instead of text: 2 bytes a token at vocabularies up to 65 536, else 4).

Across machines: ``--num-tasks N --task-id I`` (defaults from a SLURM array's variables) builds every
N-th shard into a shared ``--out``; the last task to finish (or ``--finalize``) writes index.json.
The result is byte-identical to a one-machine build (``TaskShare``; ``slurm/build_shards.sh``).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Iterator

if __package__ in (None, ""):  # run as a script: drop data_prep/ from sys.path so its modules can't shadow others
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np

from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, InputFile, ReadStats, resolve_inputs
from data_prep.errors import DataPrepError
from data_prep.packing import pack_documents
from data_prep.shards import INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, ShardWriter, shard_name, token_dtype
from data_prep.tokenizer import Tokenizer, sample_documents, train_sentencepiece
from fileio import sha256_file, write_json
from config_check import check, flag_check

JOURNAL_FILE = "build_journal.jsonl"
_ENCODE_CHUNK_CHARS = 1 << 20  # tokenize ~1 MB at a time: bounds the Python-int lists a worker holds


@dataclass
class BuildConfig:
    """Every argument that affects the output; recorded in index.json and compared on resume."""

    inputs: list[str] = field(default_factory=lambda: [SAMPLE_CORPUS_DIR])
    text_field: str = "text"
    seq_len: int = 1024
    val_fraction: float = 0.01
    shard_mb: float = 64.0
    seed: int = 0
    max_docs: int | None = None
    tokenizer: str | None = None
    tokenizer_type: str = "unigram"
    vocab_size: int = 32768
    tokenizer_sample_mb: float = 200.0
    tokenizer_threads: int = 4
    megatron: bool = False  # inputs are Megatron indexed datasets (token ids, taken as they are)

    def record(self) -> dict:
        """The arguments as index.json records them (and the fingerprint hashes them): ``megatron`` only
        when set, so text builds made before the option existed stay the same build."""
        rec = asdict(self)
        if not self.megatron:
            del rec["megatron"]
        return rec

    def validate(self) -> None:
        """The ``check`` of every config; a message names the flag (``--seq-len=4: must be at least 8``)."""
        arg = flag_check(self, DataPrepError)

        arg("seq_len", self.seq_len >= 8, "must be at least 8")
        arg("val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)")
        arg("shard_mb", self.shard_mb > 0, "must be > 0")
        arg("max_docs", self.max_docs is None or self.max_docs >= 1, "must be >= 1")
        arg("tokenizer_type", self.tokenizer_type in ("unigram", "bpe"), "allowed: unigram, bpe")
        # byte fallback alone takes 256 + 5 specials
        arg("vocab_size", 300 <= self.vocab_size <= 1 << 20, "must be in [300, 1048576]")
        arg("tokenizer_sample_mb", self.tokenizer_sample_mb > 0, "must be > 0")
        arg("tokenizer_threads", self.tokenizer_threads >= 1, "must be >= 1")
        arg("text_field", bool(self.text_field), "must not be empty")
        arg("inputs", bool(self.inputs), "name at least one input")
        arg(
            "tokenizer",
            bool(self.tokenizer) or not self.megatron,
            "--megatron takes the dataset's token ids as they are: name the tokenizer it was made with "
            "(a sentencepiece .model, a tokenizer.json or a HuggingFace tokenizer directory)",
        )


def _unit_hash(seed: int, i: int) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2.0**64


@dataclass
class ShardTask:
    split: str
    shard: int
    doc_ids: list[int]
    docs: list  # texts (str), or token arrays (np.ndarray, a Megatron dataset's documents, taken as they are)
    token_lens: np.ndarray | None = None  # after compact(): docs is [the token documents back to back]

    def compact(self) -> "ShardTask":
        """Token documents as one array and their lengths: one buffer to hash and to send to a worker."""
        if self.token_lens is None and self.docs and not isinstance(self.docs[0], str):
            self.token_lens = np.array([len(d) for d in self.docs], np.int64)
            self.docs = [np.concatenate(self.docs)]
        return self

    def input_hash(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        if self.compact().token_lens is not None:  # token documents: ids, lengths, tokens
            h.update(np.asarray(self.doc_ids, np.int64).tobytes())
            h.update(self.token_lens.tobytes())
            h.update(self.docs[0].dtype.str.encode())
            h.update(self.docs[0])  # (contiguous: hashed in place)
            return h.hexdigest()
        for i, t in zip(self.doc_ids, self.docs):
            h.update(f"{i}\0".encode())
            h.update(t.encode("utf-8", errors="surrogatepass"))
            h.update(b"\0")
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------- workers

_worker_tok: Tokenizer | None = None


def _init_worker(tokenizer_path: str, single_threaded: bool = False) -> None:
    global _worker_tok
    if single_threaded:  # parallelism is one process per worker: keep HF tokenizers' own thread pool at 1
        os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tok = Tokenizer(tokenizer_path)


def _tokenize(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, list[int]]:
    """The texts' ids back to back, and each text's length in tokens."""
    flat_parts, lens = [], []
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and (chars < _ENCODE_CHUNK_CHARS or end == start):
            chars += len(texts[end])
            end += 1
        ids = tok.encode(texts[start:end])
        chunk_lens = [len(x) for x in ids]
        flat_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(chunk_lens)))
        lens.extend(chunk_lens)
        start = end
    return (np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype)), lens


def build_one_shard(task: ShardTask, out_dir: str, seq_len: int, input_hash: str) -> dict:
    """Tokenize (text documents only), pack and write one shard; returns its journal record (runs in a
    worker process)."""
    tok = _worker_tok
    dtype = token_dtype(tok.vocab_size)
    lens: np.ndarray | list[int]
    if task.compact().token_lens is not None:  # token ids (checked against the vocabulary up front)
        tokens, lens = task.docs[0].astype(dtype, copy=False), task.token_lens
    else:
        tokens, lens = _tokenize(tok, task.docs, dtype)
    block = pack_documents(
        tokens, np.asarray(lens), np.asarray(task.doc_ids), seq_len, tok.special_ids.cls, tok.special_ids.sep
    )
    name = shard_name(task.split, task.shard)
    writer = ShardWriter(os.path.join(out_dir, name))
    try:
        for sample in block.samples():
            writer.add(*sample)
        sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {
        "type": "shard",
        "split": task.split,
        "shard": task.shard,
        "file": name,
        "sha256": sha,
        "input_hash": input_hash,
        "samples": writer.samples,
        "tokens": writer.tokens,
        "documents": len(task.doc_ids),
        "content_tokens": int(tokens.size),
        "split_documents": block.split_documents,
        "tokenless_documents": block.empty_documents,
        "segments": int(len(block.seg_lens_P)),
    }


# ------------------------------------------------------------------------------------- the output dir


class BuildDir:
    """The build's output directory: what an earlier run left there, and the journal of this one."""

    def __init__(
        self, path: str, fingerprint: str, args_record: dict, journal_file: str = JOURNAL_FILE, shared: bool = False
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.args_record = args_record
        self.journal_file = journal_file
        self.shared = shared  # other tasks of a distributed build write here at the same time
        self.records: dict[tuple[str, int], dict] = {}  # finished shards known from an earlier run
        self.tokenizer_sha: str | None = None
        self._journal = None

    def _differs(self, other_args: dict) -> str:
        keys = sorted(set(other_args) | set(self.args_record))
        diff = [
            f"{k}: {other_args.get(k)!r} -> {self.args_record.get(k)!r}"
            for k in keys
            if other_args.get(k) != self.args_record.get(k)
        ]
        return "; ".join(diff) or "input file sizes or tokenizer contents"

    def open(self) -> None:
        """Adopt an earlier run of the same build, or refuse a directory that holds anything else."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DataPrepError(f"--out {self.path!r}: exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)
        index_path = os.path.join(self.path, INDEX_FILE)
        journal_path = os.path.join(self.path, self.journal_file)
        previous = None
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    index = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataPrepError(
                    f"--out {self.path!r}: holds an unreadable {INDEX_FILE} ({e}); use another directory"
                ) from None
            previous = (index.get("fingerprint"), index.get("build_args", {}))
            for split, info in index.get("splits", {}).items():
                for rec in info.get("shards", []):
                    self.records[(split, rec["shard"])] = {"type": "shard", "split": split, **rec}
            self.tokenizer_sha = index.get("tokenizer", {}).get("sha256")
        elif os.path.isfile(journal_path):
            with open(journal_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut short by a kill: everything after it is unknown
                    if rec["type"] == "header":
                        previous = (rec["fingerprint"], rec["build_args"])
                    elif rec["type"] == "tokenizer":
                        self.tokenizer_sha = rec["sha256"]
                    elif rec["type"] == "shard":
                        self.records[(rec["split"], rec["shard"])] = rec
        elif os.listdir(self.path) and not (self.shared and any(n.startswith("build_") for n in os.listdir(self.path))):
            raise DataPrepError(
                f"--out {self.path!r}: directory is not empty and holds no shard build; "
                "choose an empty or new directory"
            )
        if previous is not None and previous[0] != self.fingerprint and not self.records:
            # an earlier build that failed before it finished a shard (e.g. a corpus with no documents):
            # nothing to keep, so the corrected build takes the directory over
            print(
                f"--out {self.path}: replacing an earlier build that finished no shard ({self._differs(previous[1])})",
                file=sys.stderr,
            )
            os.remove(journal_path)
            previous, self.tokenizer_sha = None, None
        if self.shared and previous is None:  # the other tasks of a distributed build must be this build
            previous = self._other_tasks_build()
        if previous is not None and previous[0] != self.fingerprint:
            raise DataPrepError(
                f"--out {self.path!r}: holds a different build ({self._differs(previous[1])}); "
                "choose another directory or delete this one"
            )
        for name in os.listdir(self.path) if not self.shared else []:  # (a distributed build: at --finalize)
            if ".tar.tmp" in name or name.endswith(".tmp"):
                os.remove(os.path.join(self.path, name))  # our own leftovers from an interrupted run
        self._journal = open(journal_path, "a", encoding="utf-8")
        if previous is None or not os.path.getsize(journal_path):
            self.journal({"type": "header", "fingerprint": self.fingerprint, "build_args": self.args_record})
            for rec in self.records.values():  # carried over from index.json
                self.journal(rec)
            if self.tokenizer_sha:
                self.journal({"type": "tokenizer", "sha256": self.tokenizer_sha})

    def _other_tasks_build(self) -> tuple[str, dict] | None:
        """(fingerprint, build args) of another task's journal in this directory, if there is one."""
        for name in sorted(os.listdir(self.path)):
            if name.startswith("build_journal.") and name.endswith(".jsonl") and name != self.journal_file:
                try:
                    with open(os.path.join(self.path, name), encoding="utf-8") as f:
                        rec = json.loads(f.readline())
                    return rec["fingerprint"], rec["build_args"]
                except (OSError, ValueError, KeyError):
                    continue  # being written right now, or cut short by a kill
        return None

    def journal(self, record: dict) -> None:
        self._journal.write(json.dumps(record, sort_keys=True) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def finished(self, split: str, shard: int, input_hash: str) -> dict | None:
        """The earlier record of this shard if its inputs are unchanged and its file verifies."""
        rec = self.records.get((split, shard))
        if rec is None or rec.get("input_hash") != input_hash:
            return None
        path = os.path.join(self.path, rec["file"])
        if not os.path.isfile(path) or sha256_file(path) != rec["sha256"]:
            return None
        return rec

    def finish(self, index: dict) -> None:
        write_index(self.path, index)
        self._journal.close()
        os.remove(os.path.join(self.path, self.journal_file))

    def close(self) -> None:
        self._journal.close()


def write_index(out_dir: str, index: dict) -> None:
    write_json(os.path.join(out_dir, INDEX_FILE), index, fsync=True, newline=True, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------ the build


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if enabled else True,
        dynamic_ncols=True,
        leave=False,
    )


def _prepare_tokenizer(cfg: BuildConfig, files, out: BuildDir, progress: bool) -> tuple[str, str]:
    """Copy (reuse) or train the tokenizer into the output dir; returns (path, source)."""
    if cfg.tokenizer:
        dest = os.path.join(out.path, "tokenizer.model" if cfg.tokenizer.endswith(".model") else "tokenizer.json")
        tok = Tokenizer(cfg.tokenizer)  # validates it before anything else happens
        if cfg.tokenizer.endswith(".txt"):  # a BERT vocab.txt: shipped as the equivalent tokenizer.json
            tok.save_json(dest + ".tmp")
            if not os.path.isfile(dest) or sha256_file(dest) != sha256_file(dest + ".tmp"):
                os.replace(dest + ".tmp", dest)
            else:
                os.remove(dest + ".tmp")
        elif not os.path.isfile(dest) or sha256_file(dest) != sha256_file(cfg.tokenizer):
            shutil.copyfile(cfg.tokenizer, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
        return dest, cfg.tokenizer
    dest = os.path.join(out.path, "tokenizer.model")
    if out.tokenizer_sha and os.path.isfile(dest) and sha256_file(dest) == out.tokenizer_sha:
        print(f"tokenizer: kept {dest} from the earlier run")
        return dest, "trained"
    t0 = time.time()
    with _progress(sum(f.size for f in files), "sampling text for the tokenizer", progress) as bar:
        reader = CorpusReader(files, cfg.text_field, on_bytes=bar.update)
        docs = sample_documents(itertools.islice(reader, cfg.max_docs), int(cfg.tokenizer_sample_mb * 1e6), cfg.seed)
    if not docs:
        raise DataPrepError(f"inputs {cfg.inputs}: the corpus holds no documents (all files empty)")
    print(
        f"tokenizer: training {cfg.tokenizer_type} sentencepiece, vocab {cfg.vocab_size}, "
        f"on {len(docs)} documents ({sum(map(len, docs)) / 1e6:.1f} M chars) ..."
    )
    train_sentencepiece(docs, dest, cfg.vocab_size, cfg.tokenizer_type, cfg.tokenizer_threads)
    out.journal({"type": "tokenizer", "sha256": sha256_file(dest)})
    size = Tokenizer(dest).vocab_size
    print(f"tokenizer: {dest}, vocab {size:,} ({time.time() - t0:.1f} s)")
    # sentencepiece (hard_vocab_limit off) stops where the text has no more pieces: said on stdout, as the
    # summary's warnings
    if size < cfg.vocab_size:
        sampled = len(docs) < reader.stats.documents
        print(
            f"warning: tokenizer: {size:,} pieces, not the {cfg.vocab_size:,} of --vocab-size: "
            f"{'its sample of the corpus' if sampled else 'the corpus'} ({sum(map(len, docs)) / 1e6:.1f} M chars) "
            f"is too small for that many; the shards use {size:,} "
            + (
                f"(a larger --tokenizer-sample-mb than {cfg.tokenizer_sample_mb:g} gives more)"
                if sampled
                else f"(more text gives more, or pass --vocab-size {size})"
            ),
            flush=True,
        )
    return dest, "trained"


def _tasks(cfg: BuildConfig, docs: Iterable, size: Callable[[object], int] = len) -> Iterator[ShardTask]:
    """Route documents to splits and cut each split's stream into shard-sized blocks (``size``: a
    document's share of --shard-mb; a text's characters, or a token document's bytes)."""
    limit = int(cfg.shard_mb * 1e6)
    open_blocks = {s: ShardTask(s, 0, [], []) for s in ("train", "val")}
    sizes = {"train": 0, "val": 0}
    for i, doc in enumerate(itertools.islice(docs, cfg.max_docs)):
        split = "val" if _unit_hash(cfg.seed, i) < cfg.val_fraction else "train"
        block = open_blocks[split]
        block.doc_ids.append(i)
        block.docs.append(doc)
        sizes[split] += size(doc)
        if sizes[split] >= limit:
            yield block
            open_blocks[split] = ShardTask(split, block.shard + 1, [], [])
            sizes[split] = 0
    for block in open_blocks.values():
        if block.docs:
            yield block


def _resolve_tokenizer(cfg: BuildConfig) -> BuildConfig:
    """A --tokenizer directory (a HuggingFace tokenizer saved with save_pretrained) names its tokenizer file."""
    if not cfg.tokenizer or not os.path.isdir(cfg.tokenizer):
        return cfg
    for name in ("tokenizer.json", "tokenizer.model", "vocab.txt"):
        path = os.path.join(cfg.tokenizer, name)
        if os.path.isfile(path):
            return replace(cfg, tokenizer=path)
    raise DataPrepError(
        f"--tokenizer {cfg.tokenizer!r}: a directory without tokenizer.json, tokenizer.model or vocab.txt"
    )


def _input_files(cfg: BuildConfig) -> tuple[list[InputFile], list | None]:
    """The inputs: text files (resolved), or Megatron datasets (opened and checked: ``megatron_io``)."""
    if not cfg.megatron:
        return resolve_inputs(cfg.inputs), None
    from data_prep.megatron_io import open_dataset

    datasets = [open_dataset(spec) for spec in cfg.inputs]
    files = [InputFile(path=ds.prefix, format="megatron", compression=None, size=ds.bytes) for ds in datasets]
    return files, datasets


def _check_token_inputs(cfg: BuildConfig, datasets: list | None) -> dict[str, int] | None:
    """Megatron inputs: refuse datasets without documents, or with ids the tokenizer lacks; returns how
    often each special token occurs inside the documents (None for text inputs)."""
    if datasets is None:
        return None
    from data_prep.megatron_io import check_vocabulary

    if not sum(ds.documents for ds in datasets):
        raise DataPrepError(f"inputs {cfg.inputs}: the datasets hold no documents")
    tok = Tokenizer(cfg.tokenizer)
    return check_vocabulary(datasets, cfg.max_docs, tok.vocab_size, cfg.tokenizer, tok.special_ids.as_dict())


class _TokenDocuments:
    """The documents of Megatron datasets, in order, counted like CorpusReader counts texts."""

    def __init__(self, datasets: list, on_bytes: Callable[[int], None]) -> None:
        self.datasets = datasets
        self.stats = ReadStats()
        self._on_bytes = on_bytes

    def __iter__(self) -> Iterator[np.ndarray]:
        st = self.stats
        for ds in self.datasets:
            st.documents_per_file[ds.prefix] = 0
            for doc in ds.iter_documents():
                st.documents += 1
                st.documents_per_file[ds.prefix] += 1
                self._on_bytes(doc.nbytes)
                yield doc


def _identity(cfg: BuildConfig, files) -> str:
    """The build's fingerprint: its arguments, its input files (path, size) and a reused tokenizer's hash."""
    identity = {"build_args": cfg.record(), "input_files": [[f.path, f.size] for f in files]}
    if cfg.tokenizer:
        if not os.path.isfile(cfg.tokenizer):
            raise DataPrepError(f"--tokenizer {cfg.tokenizer!r}: no such file")
        identity["tokenizer_sha256"] = sha256_file(cfg.tokenizer)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TaskShare:
    """This process's share of a distributed build: task ``task_id`` of ``num_tasks`` (e.g. a SLURM array).

    Every task reads the whole corpus (cheap next to tokenizing) and builds the shards k with
    k % num_tasks == task_id of the one-machine build's shard sequence, so the shards are the same
    bytes. Task 0 prepares the tokenizer; the others wait for it. Each task ends with a done file;
    the task that finds all of them (or ``--finalize``) writes index.json and removes the build's
    bookkeeping files: the directory then equals a one-machine build's, byte for byte.
    """

    num_tasks: int = 1
    task_id: int = 0
    wait_s: float = 6 * 3600.0  # how long a task waits for task 0's tokenizer

    def validate(self) -> None:
        check(self.num_tasks >= 1, "--num-tasks", self.num_tasks, "must be >= 1", error=DataPrepError)
        check(
            0 <= self.task_id < self.num_tasks,
            "--task-id",
            self.task_id,
            f"must be in [0, {self.num_tasks}) (--num-tasks {self.num_tasks})",
            error=DataPrepError,
        )

    @property
    def distributed(self) -> bool:
        return self.num_tasks > 1

    def tag(self, i: int | None = None) -> str:
        return f"task{self.task_id if i is None else i:04d}of{self.num_tasks:04d}"


TOKENIZER_MARKER = "build_tokenizer.json"


def _done_file(share: TaskShare, i: int) -> str:
    return f"build_{share.tag(i)}.done.json"


def _write_json(path: str, doc: dict) -> None:
    write_json(path, doc, fsync=True, sort_keys=True)


def _shared_tokenizer(cfg: BuildConfig, files, out: BuildDir, share: TaskShare, progress: bool) -> tuple[str, str]:
    """Task 0 prepares the tokenizer and announces it (or its failure); the other tasks wait for that."""
    marker = os.path.join(out.path, TOKENIZER_MARKER)
    if share.task_id == 0:
        try:
            path, source = _prepare_tokenizer(cfg, files, out, progress)
        except DataPrepError as e:
            _write_json(marker, {"fingerprint": out.fingerprint, "error": str(e)})
            raise
        _write_json(
            marker,
            {
                "fingerprint": out.fingerprint,
                "file": os.path.basename(path),
                "source": source,
                "sha256": sha256_file(path),
            },
        )
        return path, source
    deadline, said = time.time() + share.wait_s, False
    while True:
        try:
            with open(marker, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = None
        if doc is not None and doc.get("fingerprint") == out.fingerprint:
            if "error" in doc:
                raise DataPrepError(f"task 0 failed: {doc['error']}")
            path = os.path.join(out.path, doc["file"])
            if os.path.isfile(path) and sha256_file(path) == doc["sha256"]:
                return path, doc["source"]
        if time.time() > deadline:
            raise DataPrepError(
                f"{share.tag()}: task 0 announced no tokenizer in {out.path} within "
                f"{share.wait_s / 60:.0f} min; is task 0 running?"
            )
        if not said:
            print(f"{share.tag()}: waiting for task 0's tokenizer ({marker})", flush=True)
            said = True
        time.sleep(2.0)


def build(
    cfg: BuildConfig, out_dir: str, workers: int, progress: bool = True, share: TaskShare = TaskShare()
) -> dict | None:
    """Run the whole build (or this task's share); returns index.json's content (None from a task that
    leaves the finalising to another). Raises DataPrepError on bad input."""
    cfg.validate()
    share.validate()
    cfg = _resolve_tokenizer(cfg)
    t_start = time.time()
    files, datasets = _input_files(cfg)
    args_record = cfg.record()
    fingerprint = _identity(cfg, files)
    specials_inside = _check_token_inputs(cfg, datasets)  # before anything is written

    out = BuildDir(
        out_dir,
        fingerprint,
        args_record,
        journal_file=f"build_journal.{share.tag()}.jsonl" if share.distributed else JOURNAL_FILE,
        shared=share.distributed,
    )
    out.open()
    if share.distributed:
        tok_path, tok_source = _shared_tokenizer(cfg, files, out, share, progress)
    else:
        tok_path, tok_source = _prepare_tokenizer(cfg, files, out, progress)
    tok = Tokenizer(tok_path)

    records: list[dict] = []
    kept, built_tokens = 0, 0
    t_tok = time.time()
    with _progress(sum(f.size for f in files), "building shards", progress) as bar:
        reader: CorpusReader | _TokenDocuments
        if datasets is None:
            reader, size = CorpusReader(files, cfg.text_field, on_bytes=bar.update), len
        else:  # token documents: a block holds --shard-mb of them in the shards' token dtype
            itemsize = token_dtype(tok.vocab_size).itemsize
            reader, size = _TokenDocuments(datasets, on_bytes=bar.update), lambda d: len(d) * itemsize
        pool = None
        if workers > 0:
            pool = cf.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(tok_path, True),
            )
        else:
            _init_worker(tok_path)
        pending: collections.deque = collections.deque()

        def collect(fut) -> None:
            nonlocal built_tokens
            rec = fut.result()
            out.journal(rec)
            records.append(rec)
            built_tokens += rec["tokens"]
            bar.set_postfix(shards=len(records), tokens=f"{sum(r['tokens'] for r in records) / 1e6:.1f}M")

        try:
            for k, task in enumerate(_tasks(cfg, reader, size)):
                if k % share.num_tasks != share.task_id:  # another task's shard
                    continue
                h = task.input_hash()
                rec = out.finished(task.split, task.shard, h)
                if rec is not None:
                    records.append(rec)
                    kept += 1
                    continue
                if pool is None:
                    fut = cf.Future()
                    fut.set_result(build_one_shard(task, out.path, cfg.seq_len, h))
                else:
                    fut = pool.submit(build_one_shard, task, out.path, cfg.seq_len, h)
                pending.append(fut)
                while len(pending) > 2 * max(workers, 1):  # bound the text held in flight
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.time() - t_start

    stats = reader.stats
    if stats.documents == 0:
        raise DataPrepError(f"inputs {cfg.inputs}: the corpus holds no documents (all files empty)")
    if share.distributed:
        out.close()
        _write_json(
            os.path.join(out.path, _done_file(share, share.task_id)),
            {
                "fingerprint": fingerprint,
                "records": records,
                "stats": asdict(stats),
                "kept": kept,
                "built_tokens": built_tokens,
                "elapsed_s": elapsed,
                "shard_pass_s": time.time() - t_tok,
            },
        )
        print(f"{share.tag()}: {len(records) - kept} shards built, {kept} kept ({elapsed:.1f} s)")
        return finalize(cfg, out_dir, share.num_tasks, only_if_complete=True)
    index = _make_index(cfg, files, fingerprint, tok, tok_path, tok_source, records, stats, specials_inside)
    out.finish(index)
    _print_summary(index, out.path, kept, len(records) - kept, elapsed, time.time() - t_tok, built_tokens)
    return index


def finalize(cfg: BuildConfig, out_dir: str, num_tasks: int, only_if_complete: bool = False) -> dict | None:
    """Join the tasks of a distributed build: index.json from their done files, then remove the bookkeeping.

    With ``only_if_complete`` (a task that just finished) an unfinished build is left to the last task.
    """
    share = TaskShare(num_tasks, 0)
    share.validate()
    cfg = _resolve_tokenizer(cfg)
    files, datasets = _input_files(cfg)
    fingerprint = _identity(cfg, files)
    paths = [os.path.join(out_dir, _done_file(share, i)) for i in range(num_tasks)]
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        if only_if_complete:
            print(f"waiting for {len(missing)} other task(s); the last to finish writes index.json")
            return None
        raise DataPrepError(
            f"--finalize: task(s) {', '.join(map(str, missing))} of {num_tasks} have not finished "
            f"(no {_done_file(share, missing[0])} … in {out_dir}); run them first"
        )
    try:
        docs = []
        for i, p in enumerate(paths):
            with open(p, encoding="utf-8") as f:
                docs.append(json.load(f))
            if docs[-1]["fingerprint"] != fingerprint:
                raise DataPrepError(
                    f"{p}: task {i} built with other arguments or inputs than these; rerun it with the same ones"
                )
        with open(os.path.join(out_dir, TOKENIZER_MARKER), encoding="utf-8") as f:
            tok_doc = json.load(f)
    except FileNotFoundError:
        if only_if_complete:  # another task finished at the same moment and finalised already
            return None
        raise
    tok_path = os.path.join(out_dir, tok_doc["file"])
    records = [r for d in docs for r in d["records"]]
    index = _make_index(
        cfg,
        files,
        fingerprint,
        Tokenizer(tok_path),
        tok_path,
        tok_doc["source"],
        records,
        ReadStats(**docs[0]["stats"]),
        _check_token_inputs(cfg, datasets),
    )
    write_index(out_dir, index)
    for name in os.listdir(out_dir):  # the build's bookkeeping and any task's leftover temp files
        if name.startswith("build_") or ".tmp" in name:
            try:
                os.remove(os.path.join(out_dir, name))
            except FileNotFoundError:
                pass
    kept = sum(d["kept"] for d in docs)
    _print_summary(
        index,
        out_dir,
        kept,
        len(records) - kept,
        max(d["elapsed_s"] for d in docs),
        max(d["shard_pass_s"] for d in docs),
        sum(d["built_tokens"] for d in docs),
    )
    return index


def _make_index(cfg, files, fingerprint, tok, tok_path, tok_source, records, stats, specials_inside=None) -> dict:
    splits = {}
    for split in ("train", "val"):
        recs = sorted((r for r in records if r["split"] == split), key=lambda r: r["shard"])
        splits[split] = {
            "shards": [{k: v for k, v in r.items() if k not in ("type", "split")} for r in recs],
            "samples": sum(r["samples"] for r in recs),
            "tokens": sum(r["tokens"] for r in recs),
            "documents": sum(r["documents"] for r in recs),
        }
    content = sum(r["content_tokens"] for r in records)
    samples = sum(r["samples"] for r in records)
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "fingerprint": fingerprint,
        "build_args": cfg.record(),
        "seq_len": cfg.seq_len,
        "token_dtype": token_dtype(tok.vocab_size).name,
        "sample_fields": {"input_ids": "token ids, [T]", "segments": "int64 [S, 2]: (length, document id)"},
        "tokenizer": {
            "file": os.path.basename(tok_path),
            "kind": tok.kind,
            "sha256": sha256_file(tok_path),
            "source": tok_source,
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids.as_dict(),
        },
        "splits": splits,
        "stats": {
            "input_files": [
                {
                    "path": f.path,
                    "format": f.format,
                    "compression": f.compression,
                    "bytes": f.size,
                    "documents": stats.documents_per_file.get(f.path, 0),
                }
                for f in files
            ],
            "documents": stats.documents,
            "empty_documents_skipped": stats.empty_documents,
            "tokenless_documents_skipped": sum(r["tokenless_documents"] for r in records),
            "chars": stats.chars,
            "replaced_undecodable_bytes": stats.replaced_bytes,
            "content_tokens": content,
            "tokens_with_specials": sum(r["tokens"] for r in records),
            "split_documents": sum(r["split_documents"] for r in records),
            "segments": sum(r["segments"] for r in records),
            "samples": samples,
            "mean_sample_fill": round(sum(r["tokens"] for r in records) / max(1, samples * cfg.seq_len), 4),
            "chars_per_token": round(stats.chars / max(1, content), 3),
        },
    }
    if specials_inside is not None:  # token inputs: no text was read, and ids were taken as they are
        index["stats"]["special_tokens_in_documents"] = specials_inside
    return index


def _print_summary(
    index: dict, out_dir: str, kept: int, built: int, elapsed: float, tok_elapsed: float, built_tokens: int
) -> None:
    st, sp = index["stats"], index["splits"]
    trained = index["tokenizer"]["source"] == "trained"
    asked = index["build_args"]["vocab_size"] if trained else 0
    lines = [
        f"done: {out_dir}/{INDEX_FILE}",
        f"  documents  {st['documents']:,} (train {sp['train']['documents']:,}, val {sp['val']['documents']:,}; "
        f"{st['empty_documents_skipped']:,} empty skipped, {st['split_documents']:,} longer than a sample, split)",
        f"  tokens     {st['tokens_with_specials']:,} in {st['samples']:,} samples of <= {index['seq_len']} "
        f"(fill {st['mean_sample_fill']:.1%}"
        + (f", {st['chars_per_token']} chars/token)" if st["chars"] else ", ids taken as they are from the datasets)"),
        f"  tokenizer  {index['tokenizer']['file']}, vocab {index['tokenizer']['vocab_size']:,}"
        + (f" ({asked:,} asked: too little text for more)" if index["tokenizer"]["vocab_size"] < asked else ""),
        f"  shards     train {len(sp['train']['shards'])}, val {len(sp['val']['shards'])} "
        f"(built {built}, kept {kept} verified from an earlier run)",
        f"  speed      {built_tokens / max(tok_elapsed, 1e-9):,.0f} tokens/s over the shard pass; "
        f"{elapsed:.1f} s in all"
        if built
        else f"  speed      nothing to build; {elapsed:.1f} s in all",
    ]
    if st["replaced_undecodable_bytes"]:
        lines.append(f"  warning    {st['replaced_undecodable_bytes']:,} undecodable bytes replaced by U+FFFD")
    inside = st.get("special_tokens_in_documents")
    if inside:
        named = ", ".join(f"{n} {c:,}" for n, c in inside.items())
        lines.append(
            f"  warning    special tokens inside the datasets' documents ({named}; an --append-eod end-of-document "
            "token?): kept as they are, inside [CLS] … [SEP]"
        )
    if not sp["val"]["shards"] and index["build_args"]["val_fraction"] > 0:
        lines.append("  warning    no validation documents: raise --val-fraction or add data")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, argparse.Namespace]:
    d = BuildConfig()
    p = argparse.ArgumentParser(
        prog="python data_prep/build_shards.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        help="files, directories or quoted globs (.txt .jsonl[.gz|.zst] .parquet), or with --megatron Megatron "
        f"dataset prefixes; default: the shipped sample corpus ({os.path.relpath(SAMPLE_CORPUS_DIR)})",
    )
    p.add_argument("--out", required=True, help="output directory (created; an earlier run of the same build resumes)")
    g = p.add_argument_group("corpus")
    g.add_argument(
        "--text-field", default=d.text_field, help="JSONL field / Parquet column with the text (default: %(default)s)"
    )
    g.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    g.add_argument(
        "--megatron",
        action="store_true",
        help="the inputs are Megatron-LM indexed datasets (PREFIX.bin + PREFIX.idx; needs megatron-core: "
        "pip install -c constraints.txt -r requirements-megatron.txt): their token ids are taken as they are, "
        "so --tokenizer must name the tokenizer they were made with; --shard-mb then counts token bytes",
    )
    g = p.add_argument_group("samples and shards")
    g.add_argument(
        "--seq-len", type=int, default=d.seq_len, help="max tokens per sample, specials included (default: %(default)s)"
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of documents for validation (default: %(default)s)",
    )
    g.add_argument(
        "--shard-mb", type=float, default=d.shard_mb, help="input text per shard, in MB (default: %(default)s)"
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the split and the tokenizer sample (default: %(default)s)"
    )
    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer",
        default=None,
        help="reuse a tokenizer: a sentencepiece .model, a HF tokenizer.json, a BERT vocab.txt, or a directory "
        "holding one (default: train one)",
    )
    g.add_argument(
        "--tokenizer-type", default=d.tokenizer_type, choices=("unigram", "bpe"), help="(default: %(default)s)"
    )
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="(default: %(default)s)")
    g.add_argument(
        "--tokenizer-sample-mb",
        type=float,
        default=d.tokenizer_sample_mb,
        help="train the tokenizer on a uniform random sample of this much text (default: %(default)s)",
    )
    g.add_argument(
        "--tokenizer-threads",
        type=int,
        default=d.tokenizer_threads,
        help="sentencepiece training threads; part of the build's identity, since the model depends on it "
        "(default: %(default)s)",
    )
    g = p.add_argument_group("execution (does not change the output)")
    g.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer processes; 0 runs in this process (default: %(default)s, the CPU count)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("distributed build (e.g. a SLURM array; see slurm/build_shards.sh)")
    env = os.environ
    g.add_argument(
        "--num-tasks",
        type=int,
        default=int(env.get("SLURM_ARRAY_TASK_COUNT", 1)),
        help="split the shards over this many tasks (default: SLURM_ARRAY_TASK_COUNT, else 1)",
    )
    g.add_argument(
        "--task-id",
        type=int,
        default=int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
        help="this task, 0-based (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0)",
    )
    g.add_argument(
        "--finalize",
        action="store_true",
        help="only join the finished tasks' shards into index.json (the last task does it by itself)",
    )
    g.add_argument(
        "--tokenizer-wait-min",
        type=float,
        default=360.0,
        help="how long tasks other than 0 wait for task 0's tokenizer (default: %(default)s)",
    )
    a = p.parse_args(argv)
    cfg = BuildConfig(
        inputs=a.inputs or ([] if a.megatron else d.inputs),
        text_field=a.text_field,
        seq_len=a.seq_len,
        val_fraction=a.val_fraction,
        shard_mb=a.shard_mb,
        seed=a.seed,
        max_docs=a.max_docs,
        tokenizer=a.tokenizer,
        tokenizer_type=a.tokenizer_type,
        vocab_size=a.vocab_size,
        tokenizer_sample_mb=a.tokenizer_sample_mb,
        tokenizer_threads=a.tokenizer_threads,
        megatron=a.megatron,
    )
    if a.workers < 0:
        p.error(f"--workers {a.workers}: must be >= 0")
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    if not a.inputs and not a.megatron:
        print(f"inputs: the shipped sample corpus ({os.path.relpath(SAMPLE_CORPUS_DIR)})")
    try:
        if a.finalize:
            finalize(cfg, a.out, a.num_tasks)
        else:
            build(
                cfg,
                a.out,
                a.workers,
                progress=not a.no_progress,
                share=TaskShare(a.num_tasks, a.task_id, a.tokenizer_wait_min * 60),
            )
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished shards are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
