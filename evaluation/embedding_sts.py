"""Zero-shot sentence similarity: does a model's mean-pooled embedding keep a sentence-embedding teacher's skill?

    python -m evaluation.embedding_sts MODEL [MODEL ...] --glue-dir GLUE_DIR [--out results.json]

Each sentence of an STS-B pair is encoded alone (``[CLS] s [SEP]``), its last hidden states are mean-pooled
(over real tokens), and the pair's score is the cosine of the two vectors; reported are the Pearson and
Spearman correlations (×100) with the gold scores on dev and on test, and their mean as the task score.
No training: this isolates what pretraining or distillation left in the representation from what GLUE
fine-tuning (``evaluation.glue``, a cross-encoder over the concatenated pair) learns on top of it.
all-MiniLM-L6-v2 was trained for exactly this use, so it is the reference.

MODEL is a native model directory or a HuggingFace directory (``AutoModel`` and its tokenizer), as for
``evaluation.glue``; encoding is ``evaluation.embedder``'s (mean pooling here whatever the model declares,
128 tokens). A bad directory or task folder: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


from data_prep.glue_data import GlueDataError, load_local
from evaluation.embedder import Embedder
from model.native_format import InputError


def cosine_scores(embed: Embedder, pairs: list[tuple[str, str]]) -> list[float]:
    a, b = embed([p[0] for p in pairs]), embed([p[1] for p in pairs])
    return F.cosine_similarity(a, b, dim=-1).tolist()


def zero_shot_sts(path: str, glue_dir: str, splits: tuple[str, ...] = ("dev", "test")) -> dict:
    """{split: {"pearson", "spearman", "score", "n"}} on STS-B dev and test (×100); ``splits=("dev",)`` for
    choices made before a final table (test is then not encoded)."""
    from scoring.metrics import pearson, spearman

    data = load_local("STS-B", glue_dir)
    embed = Embedder(path, max_len=128, pooling="mean")
    res = {}
    for split in splits:
        ex = data[split]
        pred = cosine_scores(embed, [e.texts for e in ex])
        gold = [e.label for e in ex]
        p, s = 100 * pearson(pred, gold), 100 * spearman(pred, gold)
        res[split] = {"pearson": p, "spearman": s, "score": (p + s) / 2, "n": len(ex)}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.embedding_sts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", help="native or HuggingFace model directories")
    p.add_argument("--glue-dir", required=True, help="directory of GLUE task folders (its STS-B folder is read)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = {}
    print("| model | dev Pearson | dev Spearman | test Pearson | test Spearman | test score |")
    print("|---|---|---|---|---|---|")
    for m in a.models:
        try:
            r = zero_shot_sts(m, a.glue_dir)
        except (InputError, GlueDataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results[m] = r
        d, t = r["dev"], r["test"]
        print(
            f"| {m} | {d['pearson']:.1f} | {d['spearman']:.1f} | {t['pearson']:.1f} | {t['spearman']:.1f} | "
            f"{t['score']:.1f} |",
            flush=True,
        )
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
