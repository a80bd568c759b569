"""Loader throughput per worker (read, decode, mask, collate) at seq_len 1024: local shards vs streamed
over HTTP (loopback), against the token rate one H100 consumes training ``120m``.

    python benchmarks/bench_loader.py [--repeat 4] [--batches 300] [--micro-batch 32]

Shards: the shipped sample corpus repeated ``--repeat`` times (one JSONL file, every copy tokenized),
seq_len 1024, a 32 768-token unigram tokenizer. Each row iterates ``PretrainLoader`` for ``--batches``
micro-batches after a warm-up batch and reports tokens/s:

  * ``in-process``: num_workers=0, so the main process does all the work: the rate of one worker;
  * ``1 worker`` / ``2 workers``: DataLoader worker processes (adds the hand-over to the trainer);
  * local directory; HTTP with a cold cache (the first epoch, during which every shard but the first
    is downloaded, sha256-checked and renamed into the cache, prefetched one shard ahead); HTTP with a
    warm cache (what every later epoch and every other rank on the node sees).
Loopback HTTP measures this code path (curl, hashing, cache), not a network: the bandwidth a GPU needs
is its token rate × 2 bytes (uint16 tokens), printed with the target.

The target row: tokens/s = 0.45 × 989e12 / (training FLOPs per token of ``120m`` at seq_len 1024,
``model/flops.py``): what one H100 consumes at 45 % MFU (bf16 dense peak).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import tempfile
import threading
import time


import torch  # noqa: E402

from data_prep.build_shards import BuildConfig, build  # noqa: E402
from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs  # noqa: E402
from model.config import preset  # noqa: E402
from model.flops import count_flops  # noqa: E402
from pretrain.data import LoaderConfig, PretrainLoader  # noqa: E402

H100_BF16_DENSE = 989e12


def h100_tokens_per_s(mfu: float = 0.45, seq_len: int = 1024, mask_prob: float = 0.30) -> tuple[float, float]:
    """(tokens/s, training FLOPs per token) of ``120m`` on one H100 at ``mfu``, one document per sample."""
    cfg = preset("120m")
    cfg.vocab_size = 32768
    per_token = count_flops(cfg, [seq_len], int(mask_prob * seq_len)).training / seq_len
    return mfu * H100_BF16_DENSE / per_token, per_token


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _rate(data: str, workers: int, micro_batch: int, batches: int | None, cache_dir: str = "") -> float:
    """Tokens/s over ``batches`` micro-batches after the first (None: the rest of the first epoch)."""
    loader = PretrainLoader(LoaderConfig(data, micro_batch, num_workers=workers, cache_dir=cache_dir))
    batches = loader.batches_per_epoch - 1 if batches is None else batches
    it = iter(loader)
    next(it)  # start-up (worker processes, first shard) is not throughput
    tokens, t0 = 0, time.perf_counter()
    for _ in range(batches):
        tokens += next(it)["num_tokens"]
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=4, help="copies of the sample corpus in the shards")
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    target, per_token = h100_tokens_per_s()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        docs = list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])))
        with open(corpus, "w", encoding="utf-8") as f:
            for r in range(a.repeat):
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
        shards = os.path.join(tmp, "shards")
        index = build(
            BuildConfig(inputs=[corpus], seq_len=1024, vocab_size=32768, shard_mb=2.0, val_fraction=0.01),
            shards,
            workers=os.cpu_count() or 1,
            progress=False,
        )
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=shards))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        for w in a.workers:
            name = "in-process" if w == 0 else f"{w} worker{'s' if w > 1 else ''}"
            local = _rate(shards, w, a.micro_batch, a.batches)
            cache = os.path.join(tmp, f"cache{w}")
            cold = _rate(url, w, a.micro_batch, None, cache)  # one epoch: every shard is downloaded in it
            warm = _rate(url, w, a.micro_batch, a.batches, cache)
            rows.append((name, local, cold, warm))
        httpd.shutdown()
    train = index["splits"]["train"]
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}; {train['tokens']:,} train tokens in {len(train['shards'])} shards of "
        f"seq_len 1024; micro-batch {a.micro_batch}; {a.batches} batches per row"
    )
    print(
        f"# target: 120m at 45 % MFU on one H100 = 0.45 x 989e12 / {per_token / 1e9:.3f} GFLOP per token "
        f"= {target:,.0f} tokens/s, i.e. {target * 2 / 1e6:.2f} MB/s of uint16 shard data"
    )
    print("| loader | local dir, tokens/s | HTTP cold cache | HTTP warm cache | local ÷ target |")
    print("|---|---|---|---|---|")
    for name, local, cold, warm in rows:
        print(f"| {name} | {local:,.0f} | {cold:,.0f} | {warm:,.0f} | {local / target:.1f}x |")


if __name__ == "__main__":
    main()
