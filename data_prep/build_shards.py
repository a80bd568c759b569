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
from dataclasses import asdict, dataclass, field
from typing import Iterator

if __package__ in (None, ""):  # run as a script: drop data_prep/ from sys.path so its modules can't shadow others
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np

from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.errors import DataPrepError
from data_prep.packing import pack_documents
from data_prep.shards import INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, ShardWriter, sha256_of, shard_name, token_dtype
from data_prep.tokenizer import Tokenizer, file_sha256, sample_documents, train_sentencepiece

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

    def validate(self) -> None:
        def bad(arg: str, msg: str) -> DataPrepError:
            return DataPrepError(f"--{arg.replace('_', '-')} {getattr(self, arg)!r}: {msg}")

        if self.seq_len < 8:
            raise bad("seq_len", "must be at least 8")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.shard_mb <= 0:
            raise bad("shard_mb", "must be > 0")
        if self.max_docs is not None and self.max_docs < 1:
            raise bad("max_docs", "must be >= 1")
        if self.tokenizer_type not in ("unigram", "bpe"):
            raise bad("tokenizer_type", "allowed values: unigram, bpe")
        if not 300 <= self.vocab_size <= 1 << 20:  # byte fallback alone takes 256 + 5 specials
            raise bad("vocab_size", "must be in [300, 1048576]")
        if self.tokenizer_sample_mb <= 0:
            raise bad("tokenizer_sample_mb", "must be > 0")
        if self.tokenizer_threads < 1:
            raise bad("tokenizer_threads", "must be >= 1")
        if not self.text_field:
            raise bad("text_field", "must not be empty")


def _unit_hash(seed: int, i: int) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2.0**64


@dataclass
class ShardTask:
    split: str
    shard: int
    doc_ids: list[int]
    texts: list[str]

    def input_hash(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for i, t in zip(self.doc_ids, self.texts):
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


def build_one_shard(task: ShardTask, out_dir: str, seq_len: int, input_hash: str) -> dict:
    """Tokenize, pack and write one shard; returns its journal record (runs in a worker process)."""
    tok = _worker_tok
    dtype = token_dtype(tok.vocab_size)
    flat_parts, lens = [], []
    start = 0
    while start < len(task.texts):
        end, chars = start, 0
        while end < len(task.texts) and (chars < _ENCODE_CHUNK_CHARS or end == start):
            chars += len(task.texts[end])
            end += 1
        ids = tok.encode(task.texts[start:end])
        chunk_lens = [len(x) for x in ids]
        flat_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(chunk_lens)))
        lens.extend(chunk_lens)
        start = end
    tokens = np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype)
    block = pack_documents(tokens, np.asarray(lens), np.asarray(task.doc_ids), seq_len,
                           tok.special_ids.cls, tok.special_ids.sep)
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
        "type": "shard", "split": task.split, "shard": task.shard, "file": name, "sha256": sha,
        "input_hash": input_hash, "samples": writer.samples, "tokens": writer.tokens,
        "documents": len(task.texts), "content_tokens": int(tokens.size),
        "split_documents": block.split_documents, "tokenless_documents": block.empty_documents,
        "segments": int(len(block.seg_lens_P)),
    }


# ------------------------------------------------------------------------------------- the output dir

class BuildDir:
    """The build's output directory: what an earlier run left there, and the journal of this one."""

    def __init__(self, path: str, fingerprint: str, args_record: dict) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.args_record = args_record
        self.records: dict[tuple[str, int], dict] = {}  # finished shards known from an earlier run
        self.tokenizer_sha: str | None = None
        self._journal = None

    def _differs(self, other_args: dict) -> str:
        keys = sorted(set(other_args) | set(self.args_record))
        diff = [f"{k}: {other_args.get(k)!r} -> {self.args_record.get(k)!r}"
                for k in keys if other_args.get(k) != self.args_record.get(k)]
        return "; ".join(diff) or "input file sizes or tokenizer contents"

    def open(self) -> None:
        """Adopt an earlier run of the same build, or refuse a directory that holds anything else."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DataPrepError(f"--out {self.path!r}: exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)
        index_path = os.path.join(self.path, INDEX_FILE)
        journal_path = os.path.join(self.path, JOURNAL_FILE)
        previous = None
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    index = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataPrepError(f"--out {self.path!r}: holds an unreadable {INDEX_FILE} ({e}); use another directory") from None
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
        elif os.listdir(self.path):
            raise DataPrepError(
                f"--out {self.path!r}: directory is not empty and holds no shard build; "
                "choose an empty or new directory"
            )
        if previous is not None and previous[0] != self.fingerprint and not self.records:
            # an earlier build that failed before it finished a shard (e.g. a corpus with no documents):
            # nothing to keep, so the corrected build takes the directory over
            print(f"--out {self.path}: replacing an earlier build that finished no shard "
                  f"({self._differs(previous[1])})", file=sys.stderr)
            os.remove(journal_path)
            previous, self.tokenizer_sha = None, None
        if previous is not None and previous[0] != self.fingerprint:
            raise DataPrepError(
                f"--out {self.path!r}: holds a different build ({self._differs(previous[1])}); "
                "choose another directory or delete this one"
            )
        for name in os.listdir(self.path):
            if ".tar.tmp" in name or name.endswith(".tmp"):
                os.remove(os.path.join(self.path, name))  # our own leftovers from an interrupted run
        self._journal = open(journal_path, "a", encoding="utf-8")
        if previous is None or not os.path.getsize(journal_path):
            self.journal({"type": "header", "fingerprint": self.fingerprint, "build_args": self.args_record})
            for rec in self.records.values():  # carried over from index.json
                self.journal(rec)
            if self.tokenizer_sha:
                self.journal({"type": "tokenizer", "sha256": self.tokenizer_sha})

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
        if not os.path.isfile(path) or sha256_of(path) != rec["sha256"]:
            return None
        return rec

    def finish(self, index: dict) -> None:
        tmp = os.path.join(self.path, INDEX_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, INDEX_FILE))
        self._journal.close()
        os.remove(os.path.join(self.path, JOURNAL_FILE))


# ------------------------------------------------------------------------------------------ the build

def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if enabled else True, dynamic_ncols=True, leave=False)


def _prepare_tokenizer(cfg: BuildConfig, files, out: BuildDir, progress: bool) -> tuple[str, str]:
    """Copy (reuse) or train the tokenizer into the output dir; returns (path, source)."""
    if cfg.tokenizer:
        dest = os.path.join(out.path, "tokenizer.model" if cfg.tokenizer.endswith(".model") else "tokenizer.json")
        tok = Tokenizer(cfg.tokenizer)  # validates it before anything else happens
        if cfg.tokenizer.endswith(".txt"):  # a BERT vocab.txt: shipped as the equivalent tokenizer.json
            tok.save_json(dest + ".tmp")
            if not os.path.isfile(dest) or file_sha256(dest) != file_sha256(dest + ".tmp"):
                os.replace(dest + ".tmp", dest)
            else:
                os.remove(dest + ".tmp")
        elif not os.path.isfile(dest) or file_sha256(dest) != file_sha256(cfg.tokenizer):
            shutil.copyfile(cfg.tokenizer, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
        return dest, cfg.tokenizer
    dest = os.path.join(out.path, "tokenizer.model")
    if out.tokenizer_sha and os.path.isfile(dest) and file_sha256(dest) == out.tokenizer_sha:
        print(f"tokenizer: kept {dest} from the earlier run")
        return dest, "trained"
    t0 = time.time()
    with _progress(sum(f.size for f in files), "sampling text for the tokenizer", progress) as bar:
        reader = CorpusReader(files, cfg.text_field, on_bytes=bar.update)
        docs = sample_documents(itertools.islice(reader, cfg.max_docs), int(cfg.tokenizer_sample_mb * 1e6), cfg.seed)
    if not docs:
        raise DataPrepError(f"inputs {cfg.inputs}: the corpus holds no documents (all files empty)")
    print(f"tokenizer: training {cfg.tokenizer_type} sentencepiece, vocab {cfg.vocab_size}, "
          f"on {len(docs)} documents ({sum(map(len, docs)) / 1e6:.1f} M chars) ...")
    train_sentencepiece(docs, dest, cfg.vocab_size, cfg.tokenizer_type, cfg.tokenizer_threads)
    out.journal({"type": "tokenizer", "sha256": file_sha256(dest)})
    print(f"tokenizer: {dest} ({time.time() - t0:.1f} s)")
    return dest, "trained"


def _tasks(cfg: BuildConfig, reader: CorpusReader) -> Iterator[ShardTask]:
    """Route documents to splits and cut each split's stream into shard-sized blocks."""
    limit = int(cfg.shard_mb * 1e6)
    open_blocks = {s: ShardTask(s, 0, [], []) for s in ("train", "val")}
    sizes = {"train": 0, "val": 0}
    for i, doc in enumerate(itertools.islice(reader, cfg.max_docs)):
        split = "val" if _unit_hash(cfg.seed, i) < cfg.val_fraction else "train"
        block = open_blocks[split]
        block.doc_ids.append(i)
        block.texts.append(doc)
        sizes[split] += len(doc)
        if sizes[split] >= limit:
            yield block
            open_blocks[split] = ShardTask(split, block.shard + 1, [], [])
            sizes[split] = 0
    for block in open_blocks.values():
        if block.texts:
            yield block


def build(cfg: BuildConfig, out_dir: str, workers: int, progress: bool = True) -> dict:
    """Run the whole build; returns index.json's content. Raises DataPrepError on bad input."""
    cfg.validate()
    t_start = time.time()
    files = resolve_inputs(cfg.inputs)
    args_record = asdict(cfg)
    identity = {"build_args": args_record, "input_files": [[f.path, f.size] for f in files]}
    if cfg.tokenizer:
        if not os.path.isfile(cfg.tokenizer):
            raise DataPrepError(f"--tokenizer {cfg.tokenizer!r}: no such file")
        identity["tokenizer_sha256"] = file_sha256(cfg.tokenizer)
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    out = BuildDir(out_dir, fingerprint, args_record)
    out.open()
    tok_path, tok_source = _prepare_tokenizer(cfg, files, out, progress)
    tok = Tokenizer(tok_path)

    records: list[dict] = []
    kept = 0
    t_tok = time.time()
    with _progress(sum(f.size for f in files), "building shards", progress) as bar:
        reader = CorpusReader(files, cfg.text_field, on_bytes=bar.update)
        pool = None
        if workers > 0:
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(tok_path, True))
        else:
            _init_worker(tok_path)
        pending: collections.deque = collections.deque()

        def collect(fut) -> None:
            rec = fut.result()
            out.journal(rec)
            records.append(rec)
            bar.set_postfix(shards=len(records), tokens=f"{sum(r['tokens'] for r in records) / 1e6:.1f}M")

        try:
            for task in _tasks(cfg, reader):
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
    index = _make_index(cfg, files, fingerprint, tok, tok_path, tok_source, records, stats)
    out.finish(index)
    _print_summary(index, out.path, kept, len(records) - kept, elapsed, time.time() - t_tok, records)
    return index


def _make_index(cfg, files, fingerprint, tok, tok_path, tok_source, records, stats) -> dict:
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
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "fingerprint": fingerprint,
        "build_args": asdict(cfg),
        "seq_len": cfg.seq_len,
        "token_dtype": token_dtype(tok.vocab_size).name,
        "sample_fields": {"input_ids": "token ids, [T]", "segments": "int64 [S, 2]: (length, document id)"},
        "tokenizer": {
            "file": os.path.basename(tok_path), "kind": tok.kind, "sha256": file_sha256(tok_path),
            "source": tok_source, "vocab_size": tok.vocab_size, "special_ids": tok.special_ids.as_dict(),
        },
        "splits": splits,
        "stats": {
            "input_files": [{"path": f.path, "format": f.format, "compression": f.compression, "bytes": f.size,
                             "documents": stats.documents_per_file.get(f.path, 0)} for f in files],
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


def _print_summary(index: dict, out_dir: str, kept: int, built: int, elapsed: float, tok_elapsed: float,
                   records: list[dict]) -> None:
    st, sp = index["stats"], index["splits"]
    built_tokens = sum(r["tokens"] for r in records[-built:]) if built else 0
    lines = [
        f"done: {out_dir}/{INDEX_FILE}",
        f"  documents  {st['documents']:,} (train {sp['train']['documents']:,}, val {sp['val']['documents']:,}; "
        f"{st['empty_documents_skipped']:,} empty skipped, {st['split_documents']:,} longer than a sample, split)",
        f"  tokens     {st['tokens_with_specials']:,} in {st['samples']:,} samples of <= {index['seq_len']} "
        f"(fill {st['mean_sample_fill']:.1%}, {st['chars_per_token']} chars/token)",
        f"  shards     train {len(sp['train']['shards'])}, val {len(sp['val']['shards'])} "
        f"(built {built}, kept {kept} verified from an earlier run)",
        f"  speed      {built_tokens / max(tok_elapsed, 1e-9):,.0f} tokens/s over the shard pass; {elapsed:.1f} s in all"
        if built else f"  speed      nothing to build; {elapsed:.1f} s in all",
    ]
    if st["replaced_undecodable_bytes"]:
        lines.append(f"  warning    {st['replaced_undecodable_bytes']:,} undecodable bytes replaced by U+FFFD")
    if not sp["val"]["shards"] and index["build_args"]["val_fraction"] > 0:
        lines.append("  warning    no validation documents: raise --val-fraction or add data")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, argparse.Namespace]:
    d = BuildConfig()
    p = argparse.ArgumentParser(
        prog="python data_prep/build_shards.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="files, directories or quoted globs (.txt .jsonl[.gz|.zst] .parquet); "
                   f"default: the shipped sample corpus ({os.path.relpath(SAMPLE_CORPUS_DIR)})")
    p.add_argument("--out", required=True, help="output directory (created; an earlier run of the same build resumes)")
    g = p.add_argument_group("corpus")
    g.add_argument("--text-field", default=d.text_field, help="JSONL field / Parquet column with the text (default: %(default)s)")
    g.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    g = p.add_argument_group("samples and shards")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="max tokens per sample, specials included (default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of documents for validation (default: %(default)s)")
    g.add_argument("--shard-mb", type=float, default=d.shard_mb, help="input text per shard, in MB (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the split and the tokenizer sample (default: %(default)s)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", default=None, help="reuse a tokenizer: a sentencepiece .model, a HF tokenizer.json or a BERT vocab.txt "
                   "(default: train one)")
    g.add_argument("--tokenizer-type", default=d.tokenizer_type, choices=("unigram", "bpe"), help="(default: %(default)s)")
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="(default: %(default)s)")
    g.add_argument("--tokenizer-sample-mb", type=float, default=d.tokenizer_sample_mb,
                   help="train the tokenizer on a uniform random sample of this much text (default: %(default)s)")
    g.add_argument("--tokenizer-threads", type=int, default=d.tokenizer_threads,
                   help="sentencepiece training threads; part of the build's identity, since the model depends on it "
                   "(default: %(default)s)")
    g = p.add_argument_group("execution (does not change the output)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="tokenizer processes; 0 runs in this process (default: %(default)s, the CPU count)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = BuildConfig(
        inputs=a.inputs or d.inputs, text_field=a.text_field, seq_len=a.seq_len, val_fraction=a.val_fraction,
        shard_mb=a.shard_mb, seed=a.seed, max_docs=a.max_docs, tokenizer=a.tokenizer,
        tokenizer_type=a.tokenizer_type, vocab_size=a.vocab_size, tokenizer_sample_mb=a.tokenizer_sample_mb,
        tokenizer_threads=a.tokenizer_threads,
    )
    if a.workers < 0:
        p.error(f"--workers {a.workers}: must be >= 0")
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    if not a.inputs:
        print(f"inputs: the shipped sample corpus ({os.path.relpath(SAMPLE_CORPUS_DIR)})")
    try:
        build(cfg, a.out, a.workers, progress=not a.no_progress)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished shards are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
