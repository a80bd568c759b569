"""Shard-build throughput vs the tokenizer's raw encode throughput, measured in one run.

    python benchmarks/bench_data.py [--repeat 10] [--workers 1 2] [--seq-len 1024]

The corpus is the shipped sample corpus repeated ``--repeat`` times (as one JSONL file, so every copy
is tokenized for real). A tokenizer is trained once; then we time
  * raw encode: ``Tokenizer.encode`` on the in-memory documents, one process, one thread;
  * the build: ``build_shards`` shard pass (read → tokenize → pack → tar + sha256) with that tokenizer,
    for each ``--workers`` value, from a cold output directory.
The figure of merit is build tokens/s per worker ÷ raw encode tokens/s (target ≥ 0.5).
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


if __name__ == "__main__":
    main()
