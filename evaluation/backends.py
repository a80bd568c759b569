"""The models the GLUE runner can fine-tune, behind one interface (``Backend``).

* ``NativeBackend``: a native model directory (``tools/consolidate_checkpoint.py``,
  ``merge_experts.py`` or ``init_from_teacher.py`` output). The encoder runs unpadded; the head is
  ``model.classification.ClassificationHead``, the one the HF export carries.
* ``HFBackend``: any HuggingFace directory that ``AutoModelForSequenceClassification`` loads — both of
  this project's exports (``trust_remote_code`` is switched on only for a directory whose config has an
  ``auto_map``) and plain BERT-family models such as the all-MiniLM-L6-v2 teacher. Padded batches,
  the model's own tokenizer (``AutoTokenizer``, pairs as the tokenizer encodes them).

Both give ``encode`` (texts → token ids, truncated longest-first to ``max_len``), ``build`` (a fresh
classifier, pretrained encoder + new head, and the names of the new parameters, which LoRA mode also
trains), ``collate``, ``logits`` and ``save``; ``LORA_TARGETS`` says which projections take LoRA per
model family (the attention projections, the same choice for every family).
"""

from __future__ import annotations

import glob
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from data_prep.tokenizer import encode_examples
from finetune.model import inject_lora
from model.classification import ClassifierConfig, ModernAlbertForSequenceClassification
from model.native_format import FORMAT, InputError, follow_umask, load_native, read_json, save_native

# attention projections per model family (PEFT target names: matched as the end of a module path)
LORA_TARGETS = {
    "native": ["attn.Wqkv", "attn.Wo"],
    "modernalbert": ["attn.Wqkv", "attn.Wo"],
    "modernbert": ["attn.Wqkv", "attn.Wo"],
    "bert": ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"],
}


def model_kind(path: str) -> tuple[str, dict]:
    """("native" or "hf", the directory's config.json)."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise InputError(f"{path}: no config.json (expected a native model directory or a HuggingFace model directory)")
    doc = read_json(cfg)
    if doc.get("format") == FORMAT:
        return "native", doc
    if "model_type" in doc:
        return "hf", doc
    raise InputError(f"{cfg}: neither a native model ({FORMAT!r}) nor a HuggingFace config (no model_type)")


class NativeBackend:
    kind = "native"

    def __init__(self, path: str) -> None:
        from data_prep.tokenizer_id import shipped_tokenizer
        from model.native_format import tokenizer_record

        mlm, self.doc = load_native(path)
        if not self.doc.get("tokenizer"):
            raise InputError(f"{path}: no tokenizer in the model directory")
        self.path, self.cfg = path, mlm.cfg
        self.mlm_state = mlm.state_dict()
        tok_path, recorded = tokenizer_record(path, self.doc)
        assert tok_path is not None  # checked above
        self.tok = shipped_tokenizer(path, tok_path, recorded, mlm.cfg.vocab_size, InputError)
        self.family = "native"

    def encode(self, texts: list[tuple[str, ...]], max_len: int) -> list[dict]:
        return [{"input_ids": ids} for ids in encode_examples(self.tok, texts, max_len)]

    def build(self, head: ClassifierConfig) -> tuple[nn.Module, list[str]]:
        clf = ModernAlbertForSequenceClassification(self.cfg, head)
        encoder = {k: v for k, v in self.mlm_state.items() if k.startswith("model.")}
        missing, unexpected = clf.load_state_dict(encoder, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise InputError(f"{self.path}: encoder keys do not fit ({missing[:3]}, {unexpected[:3]})")
        return clf, [n for n, _ in clf.named_parameters() if n.startswith("classifier.")]

    @staticmethod
    def collate(rows: list[dict]) -> dict:
        lens = [len(r["input_ids"]) for r in rows]
        return {
            "input_ids": torch.tensor([t for r in rows for t in r["input_ids"]]),
            "cu_seqlens": F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32),
            "max_seqlen": max(lens),
        }

    @staticmethod
    def logits(module: nn.Module, batch: dict) -> torch.Tensor:
        return module(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])

    def save(self, module: nn.Module, head: ClassifierConfig, out_dir: str, history: dict) -> None:
        """A native classifier directory: the pretrained MLM head kept, the fine-tuned encoder + head."""
        state = {**self.mlm_state, **module.state_dict()}
        save_native(
            out_dir,
            state,
            self.cfg,
            os.path.join(self.path, self.doc["tokenizer"]),
            self.doc.get("data_dir"),
            [*self.doc.get("history", []), history],
            head,
        )


class HFBackend:
    kind = "hf"

    def __init__(self, path: str, doc: dict) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.remote = "auto_map" in doc  # our modernalbert export: its code sits beside the weights
        self.path = path
        self.config = AutoConfig.from_pretrained(path, trust_remote_code=self.remote)
        self.family = self.config.model_type if self.config.model_type in LORA_TARGETS else "bert"
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.remote)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def encode(self, texts: list[tuple[str, ...]], max_len: int) -> list[dict]:
        cols = list(zip(*texts))
        enc = self.tok(*cols, truncation=True, max_length=max_len)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    def build(self, head: ClassifierConfig) -> tuple[nn.Module, list[str]]:
        from transformers import AutoModelForSequenceClassification

        extra = {"classifier_pooling": head.pooling} if hasattr(self.config, "classifier_pooling") else {}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            self.path,
            num_labels=head.num_labels,
            trust_remote_code=self.remote,
            output_loading_info=True,
            problem_type="regression" if head.is_regression else "single_label_classification",
            **extra,
        )
        fresh = set(info["missing_keys"])
        return model, [n for n, _ in model.named_parameters() if n in fresh]

    def collate(self, rows: list[dict]) -> dict:
        S = max(len(r["input_ids"]) for r in rows)
        out = {
            "input_ids": torch.full((len(rows), S), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(rows), S, dtype=torch.long),
        }
        if "token_type_ids" in rows[0]:
            out["token_type_ids"] = torch.zeros(len(rows), S, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            out["attention_mask"][i, :n] = 1
            if "token_type_ids" in out:
                out["token_type_ids"][i, :n] = torch.tensor(r["token_type_ids"])
        return out

    @staticmethod
    def logits(module: nn.Module, batch: dict) -> torch.Tensor:
        return module(**batch).logits

    def save(self, module: nn.Module, head: ClassifierConfig, out_dir: str, history: dict) -> None:
        module.save_pretrained(out_dir)
        self.tok.save_pretrained(out_dir)
        follow_umask(*glob.glob(os.path.join(out_dir, "*.safetensors")))


def open_backend(path: str) -> NativeBackend | HFBackend:
    kind, doc = model_kind(path)
    return NativeBackend(path) if kind == "native" else HFBackend(path, doc)


def add_attention_lora(module: nn.Module, family: str, rank: int, alpha: float) -> int:
    """LoRA (``finetune.model.inject_lora``) on the family's attention projections; returns the number of
    adapted layers."""
    inject_lora(module, LORA_TARGETS[family], rank, alpha)
    return sum(1 for n, _ in module.named_modules() if n.endswith(".lora_A"))
