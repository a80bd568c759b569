"""Zero-shot sentence similarity: does a model's mean-pooled embedding keep a sentence-embedding teacher's skill?

    python -m evaluation.embedding_sts MODEL [MODEL ...] --glue-dir GLUE_DIR [--out results.json]

Each sentence of an STS-B pair is encoded alone (``[CLS] s [SEP]``), its last hidden states are mean-pooled
(over real tokens), and the pair's score is the cosine of the two vectors; reported are the Pearson and
Spearman correlations (×100) with the gold scores on dev and on test, and their mean as the task score.
No training: this isolates what pretraining or distillation left in the representation from what GLUE
fine-tuning (``evaluation.glue``, a cross-encoder over the concatenated pair) learns on top of it.
all-MiniLM-L6-v2 was trained for exactly this use, so it is the reference.

MODEL is a native model directory or a HuggingFace directory (``AutoModel`` and its tokenizer), as for
``evaluation.glue``. A bad directory or task folder: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.glue_data import GlueDataError, load_local
from model.native_format import InputError


class Encoder:
    """Mean-pooled last hidden states [B, D] for a list of sentences, for a native or a HuggingFace model.

    Tokenisation and batching are the GLUE runner's (``evaluation.models``), so both tools see the same inputs;
    an HF export of this project loads with its own code (``trust_remote_code``, as in the runner)."""

    def __init__(self, path: str, max_len: int = 128) -> None:
        from evaluation.models import HFBackend, NativeBackend, model_kind

        self.kind, doc = model_kind(path)
        self.max_len = max_len
        if self.kind == "native":
            from data_prep.tokenizer import Tokenizer
            from model.native_format import load_native

            mlm, doc = load_native(path)
            self.model = mlm.model.eval()
            self.tok = Tokenizer(os.path.join(path, doc["tokenizer"]))
            self.collate = NativeBackend.collate
        else:
            from transformers import AutoModel

            self.backend = HFBackend(path, doc)
            self.model = AutoModel.from_pretrained(path, trust_remote_code=self.backend.remote).eval()
            self.collate = self.backend.collate

    @torch.no_grad()
    def __call__(self, sentences: list[str]) -> torch.Tensor:
        texts = [(s,) for s in sentences]
        if self.kind == "native":
            from data_prep.tokenizer import encode_examples
            from model.classification import pool

            batch = self.collate([{"input_ids": ids} for ids in encode_examples(self.tok, texts, self.max_len)])
            h_TD, _ = self.model(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])
            return pool(h_TD.float(), batch["cu_seqlens"], "mean")
        batch = self.collate(self.backend.encode(texts, self.max_len))
        h_BLD = self.model(**batch).last_hidden_state.float()
        mask_BL1 = batch["attention_mask"][..., None].float()
        return (h_BLD * mask_BL1).sum(1) / mask_BL1.sum(1)


def cosine_scores(encode: Encoder, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        a, b = encode([p[0] for p in chunk]), encode([p[1] for p in chunk])
        out += F.cosine_similarity(a, b, dim=-1).tolist()
    return out


def evaluate(path: str, glue_dir: str) -> dict:
    """{split: {"pearson", "spearman", "score", "n"}} on STS-B dev and test (×100)."""
    from evaluation.metrics import pearson, spearman

    data = load_local("STS-B", glue_dir)
    encode = Encoder(path)
    res = {}
    for split in ("dev", "test"):
        ex = data[split]
        pred = cosine_scores(encode, [e.texts for e in ex])
        gold = [e.label for e in ex]
        p, s = 100 * pearson(pred, gold), 100 * spearman(pred, gold)
        res[split] = {"pearson": p, "spearman": s, "score": (p + s) / 2, "n": len(ex)}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.embedding_sts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
            r = evaluate(m, a.glue_dir)
        except (InputError, GlueDataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results[m] = r
        d, t = r["dev"], r["test"]
        print(f"| {m} | {d['pearson']:.1f} | {d['spearman']:.1f} | {t['pearson']:.1f} | {t['spearman']:.1f} | "
              f"{t['score']:.1f} |", flush=True)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
