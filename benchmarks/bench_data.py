"""Shard-build throughput vs the tokenizer's raw encode throughput, measured in one run.

    python benchmarks/bench_data.py [--repeat 10] [--workers 1 2] [--seq-len 1024]

The corpus is the shipped sample corpus repeated ``--repeat`` times (as one JSONL file, so every copy
is tokenized for real). A tokenizer is trained once; then we time
  * raw encode: ``Tokenizer.encode`` on the in-memory documents, one process, one thread;
  * the build: ``build_shards`` shard pass (read → tokenize → pack → tar + sha256) with that tokenizer,
    for each ``--workers`` value, from a cold output directory.
The figure of merit is build tokens/s per worker ÷ raw encode tokens/s (target ≥ 0.5).

Then, with megatron-core installed (requirements-megatron.txt), the same corpus tokenized once and written
as a Megatron-LM dataset (IndexedDatasetBuilder, outside the timings), and the build from it
(``--megatron``, same tokenizer and options) timed the same way: it skips tokenization. megatron-core's
import, paid once per process, is timed apart in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ""):
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from data_prep.build_shards import BuildConfig, build
from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.tokenizer import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=32768)
    a = p.parse_args()

    docs = list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for _ in range(a.repeat):
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
        all_docs = docs * a.repeat
        tok_dir = os.path.join(tmp, "tok")
        t0 = time.perf_counter()
        build(
            BuildConfig(inputs=[SAMPLE_CORPUS_DIR], vocab_size=a.vocab_size, seq_len=a.seq_len),
            tok_dir,
            workers=0,
            progress=False,
        )
        train_s = time.perf_counter() - t0
        tok_path = os.path.join(tok_dir, "tokenizer.model")
        tok = Tokenizer(tok_path)

        t0 = time.perf_counter()
        n_tokens = 0
        for i in range(0, len(all_docs), 256):
            n_tokens += sum(len(x) for x in tok.encode(all_docs[i : i + 256]))
        raw_s = time.perf_counter() - t0
        raw_tps = n_tokens / raw_s

        rows = []
        for w in a.workers:
            out = os.path.join(tmp, f"build-w{w}")
            t0 = time.perf_counter()
            index = build(
                BuildConfig(inputs=[corpus], tokenizer=tok_path, seq_len=a.seq_len, shard_mb=4.0),
                out,
                workers=w,
                progress=False,
            )
            build_s = time.perf_counter() - t0
            content = index["stats"]["content_tokens"]
            assert content == n_tokens, (content, n_tokens)
            tps = content / build_s
            rows.append((w, build_s, tps, tps / w / raw_tps))
            text_index = index

        mega_rows, import_s = [], None
        try:
            from data_prep.megatron_io import indexed_dataset_module

            mcore = indexed_dataset_module()
        except Exception as e:  # DataPrepError: megatron-core is not installed
            print(f"megatron case skipped: {e}")
        else:
            prefix = os.path.join(tmp, "corpus_text_document")
            builder = mcore.IndexedDatasetBuilder(prefix + ".bin", dtype=mcore.DType.optimal_dtype(tok.vocab_size))
            for i in range(0, len(all_docs), 256):
                for ids in tok.encode(all_docs[i : i + 256]):
                    builder.add_document(np.asarray(ids, np.int32), [len(ids)])
            builder.finalize(prefix + ".idx")
            import_s = _import_seconds()
            for w in a.workers:
                out = os.path.join(tmp, f"megatron-w{w}")
                t0 = time.perf_counter()
                index = build(
                    BuildConfig(inputs=[prefix], megatron=True, tokenizer=tok_path, seq_len=a.seq_len, shard_mb=4.0),
                    out,
                    workers=w,
                    progress=False,
                )
                build_s = time.perf_counter() - t0
                for key in ("content_tokens", "tokens_with_specials", "documents", "split_documents"):
                    assert index["stats"][key] == text_index["stats"][key], key
                mega_rows.append((w, build_s, index["stats"]["content_tokens"] / build_s))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import numpy
    import sentencepiece

    print(
        f"\nhardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}, sentencepiece {sentencepiece.__version__}, "
        f"numpy {numpy.__version__}; commit {commit}"
    )
    print(
        f"corpus: sample corpus x{a.repeat} = {len(all_docs):,} documents, {n_tokens:,} tokens; seq_len {a.seq_len}; "
        f"tokenizer training (vocab {a.vocab_size} asked, {tok.vocab_size} reached, on the sample corpus) "
        f"{train_s:.1f} s"
    )
    print(f"raw encode (1 process, 1 thread): {raw_tps:,.0f} tokens/s")
    print("| workers | build s | build tokens/s | per worker / raw encode |")
    print("|---|---|---|---|")
    for w, s, tps, ratio in rows:
        print(f"| {w} | {s:.2f} | {tps:,.0f} | {ratio:.2f} |")
    if mega_rows:
        print(
            f"\nsame corpus as a Megatron dataset (--megatron, no tokenization); import megatron.core…indexed_dataset "
            f"in a fresh interpreter: {import_s:.2f} s (once per build process, not in the build s below)"
        )
        print("| workers | text build s | megatron build s | megatron tokens/s | speed-up | speed-up with the import |")
        print("|---|---|---|---|---|---|")
        for (w, ts, _, _), (_, ms, mtps) in zip(rows, mega_rows):
            print(f"| {w} | {ts:.2f} | {ms:.2f} | {mtps:,.0f} | {ts / ms:.2f}x | {ts / (ms + import_s):.2f}x |")


def _import_seconds() -> float:
    """Seconds to import megatron-core's indexed_dataset (with torch, which it needs) in a fresh interpreter."""
    code = (
        "import time, warnings; warnings.simplefilter('ignore'); t = time.perf_counter(); "
        "import megatron.core.datasets.indexed_dataset; print(time.perf_counter() - t)"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
