"""Text → one vector per text, for any model the evaluation tools take (zero-shot STS, BEIR retrieval).

``Embedder(path)`` loads a native model directory (the encoder runs unpadded: a batch is one flat token
sequence with ``cu_seqlens``) or a HuggingFace directory (``AutoModel``; padded batches, the model's own
tokenizer; our custom-code export loads with ``trust_remote_code``). Pooling and length come from what
the model declares where it declares them — a sentence-transformers directory's ``1_Pooling/config.json``
(mean or CLS) and ``sentence_bert_config.json`` (``max_seq_length``) — otherwise mean pooling over real
tokens and the caller's ``max_len``.

Many texts are encoded longest first in batches under a token budget (``length_batches``): in a padded
batch every row costs the longest row's length, so sorting leaves almost no padding, and the budget keeps
a batch of long documents from being as many rows as a batch of short queries. The order is restored.
``embed(rows)`` is the differentiable forward on one batch (what ``evaluation.beir --finetune`` trains).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from finetune.progress import Progress
from model.native_format import InputError

POOLINGS = ("mean", "cls")


def declared(path: str) -> tuple[str | None, int | None]:
    """(pooling, max_seq_length) a sentence-transformers directory declares; None where it says nothing."""
    pooling = max_len = None
    pool_cfg = os.path.join(path, "1_Pooling", "config.json")
    if os.path.isfile(pool_cfg):
        with open(pool_cfg, encoding="utf-8") as f:
            doc = json.load(f)
        modes = [
            m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token")) if doc.get(key)
        ]
        others = [
            k
            for k, v in doc.items()
            if k.startswith("pooling_mode_") and v and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token")
        ]
        if len(modes) != 1 or others:
            raise InputError(
                f"{pool_cfg}: pooling {sorted(k for k, v in doc.items() if k.startswith('pooling_mode_') and v)}"
                f" (supported: exactly one of {', '.join(POOLINGS)})"
            )
        pooling = modes[0]
    st_cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_cfg):
        with open(st_cfg, encoding="utf-8") as f:
            max_len = json.load(f).get("max_seq_length")
    return pooling, max_len


def length_batches(lengths: list[int], token_budget: int, padded: bool, max_rows: int = 512) -> list[list[int]]:
    """Indices grouped longest first so that each batch costs at most ``token_budget`` tokens (rows × the
    longest row when ``padded``, the sum of lengths otherwise); a row longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    cost = 0
    for i in order:
        n = lengths[i]
        # sorted descending: the batch's longest row is its first
        new_cost = (len(cur) + 1) * lengths[cur[0] if cur else i] if padded else cost + n
        if cur and (new_cost > token_budget or len(cur) >= max_rows):
            out.append(cur)
            cur, new_cost = [], n
        cur.append(i)
        cost = new_cost
    if cur:
        out.append(cur)
    return out


class Embedder:
    """``embedder(texts) → [N, D]`` float32 (not normalised); ``embed(rows)`` on one batch with gradients."""

    def __init__(
        self, path: str, max_len: int | None = None, pooling: str | None = None, token_budget: int = 4096
    ) -> None:
        from evaluation.backends import HFBackend, model_kind

        self.kind, doc = model_kind(path)
        said_pooling, said_len = declared(path)
        self.pooling = pooling or said_pooling or "mean"
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.max_len = int(max_len or said_len or 512)
        self.token_budget = token_budget
        if self.kind == "native":
            from data_prep.tokenizer_id import shipped_tokenizer
            from model.native_format import load_native, tokenizer_record

            mlm, doc = load_native(path)
            self.model: nn.Module = mlm.model.eval()
            tok_path, recorded = tokenizer_record(path, doc)
            if tok_path is None:
                raise InputError(f"{path}: no tokenizer in the model directory")
            self.tok = shipped_tokenizer(path, tok_path, recorded, mlm.cfg.vocab_size, InputError)
        else:
            from transformers import AutoModel

            self.backend = HFBackend(path, doc)
            self.model = AutoModel.from_pretrained(path, trust_remote_code=self.backend.remote).eval()

    def tokenize(self, texts: list[str]) -> list[dict]:
        """Rows of token ids (special tokens added, truncated to ``max_len``)."""
        if self.kind == "native":
            from data_prep.tokenizer import encode_examples

            return [{"input_ids": ids} for ids in encode_examples(self.tok, [(t,) for t in texts], self.max_len)]
        return self.backend.encode([(t,) for t in texts], self.max_len)

    def embed(self, rows: list[dict]) -> torch.Tensor:
        """One batch of rows → pooled [B, D] in the model's dtype (with gradients if enabled)."""
        if self.kind == "native":
            from evaluation.backends import NativeBackend
            from model.classification import pool

            batch = NativeBackend.collate(rows)
            h_TD, _ = self.model(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])
            return pool(h_TD, batch["cu_seqlens"], self.pooling)
        batch = self.backend.collate(rows)
        h_BLD = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            return h_BLD[:, 0]
        mask_BL1 = batch["attention_mask"][..., None].to(h_BLD.dtype)
        return (h_BLD * mask_BL1).sum(1) / mask_BL1.sum(1)

    @torch.inference_mode()
    def __call__(self, texts: list[str], progress: str | None = None) -> torch.Tensor:
        """``progress``: what to call the encoding in the progress shown while it runs (``finetune/progress.py``:
        a bar on a terminal, else a line on stderr every 10 s); None shows none."""
        return self.embed_rows(self.tokenize(texts), progress)

    @torch.inference_mode()
    def embed_rows(self, rows: list[dict], progress: str | None = None) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        out = None
        batches = length_batches([len(r["input_ids"]) for r in rows], self.token_budget, padded=self.kind != "native")
        with Progress(len(rows) if progress else 0, progress or "", "texts", quiet=progress is None) as bar:
            for idx in batches:
                e_BD = self.embed([rows[i] for i in idx]).float()
                if out is None:
                    out = e_BD.new_zeros(len(rows), e_BD.shape[1])
                out[idx] = e_BD
                bar.update(len(idx))
        self.model.train(was_training)
        return out if out is not None else torch.zeros(0, 0)
