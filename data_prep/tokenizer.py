"""Tokenizers for the data pipeline: train a sentencepiece model, or load one (sentencepiece or HF).

Every tokenizer is used the same way: ``encode(texts)`` returns ids *without* special tokens (the
packer adds ``[CLS] … [SEP]`` around each document), and ``special_ids`` names the ids of
pad/unk/cls/sep/mask.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from data_prep.errors import DataPrepError
from fileio import atomic_write

SPECIAL_TOKENS = ("pad", "unk", "cls", "sep", "mask")
# Spellings looked up, in order, in a reused HF tokenizer (BERT/ModernBERT, RoBERTa, T5/ALBERT styles).
_HF_SPELLINGS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>", "<cls>"),
    "sep": ("[SEP]", "</s>", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
}
_MAX_TRAIN_LINE_BYTES = 16384


def truncate_pair(parts: list[list[int]], budget: int) -> list[list[int]]:
    """Longest-first truncation of one or two token lists to ``budget`` tokens in all (as HF tokenizers)."""
    parts = [list(p) for p in parts]
    while sum(len(p) for p in parts) > budget:
        longest = max(range(len(parts)), key=lambda i: (len(parts[i]), i))  # ties: the second, as HF
        parts[longest].pop()
    return parts


def encode_examples(tok: "Tokenizer", texts: list[tuple[str, ...]], max_len: int) -> list[list[int]]:
    """Classification inputs: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` per example, at most ``max_len``
    tokens (a pair is truncated longest-first, as HF tokenizers do)."""
    sid = tok.special_ids
    cols = [tok.encode([t[c] for t in texts]) for c in range(len(texts[0]))] if texts else []
    out = []
    for i in range(len(texts)):
        ids = [sid.cls]
        for part in truncate_pair([col[i] for col in cols], max_len - 1 - len(cols)):
            ids += [*part, sid.sep]
        out.append(ids)
    return out


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in SPECIAL_TOKENS}


def tokenizer_kind(path: str) -> str:
    """The kind of a tokenizer file: "hf" (a tokenizer.json or a BERT vocab.txt) or "sentencepiece" (``*.model``)."""
    return "hf" if path.endswith((".json", ".txt")) else "sentencepiece"


class Tokenizer:
    """A loaded tokenizer file: ``kind`` is "sentencepiece" (``*.model``) or "hf" (``tokenizer.json``)."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise DataPrepError(f"--tokenizer {path!r}: no such file")
        self.path = path
        self.kind = tokenizer_kind(path)
        if self.kind == "hf":
            self._load_hf(path, wordpiece=path.endswith(".txt"))
        else:
            self._load_sentencepiece(path)

    def _load_sentencepiece(self, path: str) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise DataPrepError(f"--tokenizer {path!r}: not a sentencepiece model ({e})") from None
        self.vocab_size = self._sp.GetPieceSize()
        ids = {
            "pad": self._sp.pad_id(),
            "unk": self._sp.unk_id(),
            "cls": self._sp.bos_id(),
            "sep": self._sp.eos_id(),
            "mask": self._sp.PieceToId("[MASK]"),
        }
        if ids["mask"] == ids["unk"]:
            ids["mask"] = -1
        missing = [k for k, v in ids.items() if v < 0]
        if missing:
            raise DataPrepError(
                f"--tokenizer {path!r}: sentencepiece model lacks special tokens {missing} "
                "(needs pad/unk/bos=[CLS]/eos=[SEP] ids and a [MASK] user-defined symbol)"
            )
        self.special_ids = SpecialIds(**ids)

    def _load_hf(self, path: str, wordpiece: bool = False) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._hf = _bert_wordpiece(path) if wordpiece else HFTokenizer.from_file(path)
        except Exception as e:  # the tokenizers library raises plain Exceptions
            what = "BERT vocab.txt" if wordpiece else "HuggingFace tokenizer.json"
            raise DataPrepError(f"--tokenizer {path!r}: not a {what} ({e})") from None
        # a tokenizer.json may carry its model's inference settings (all-MiniLM-L6-v2: truncate at 128, pad
        # to 128); applied here they would cut every document and fill the shards with [PAD]
        self._hf.no_truncation()
        self._hf.no_padding()
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        ids, missing = {}, []
        for name, spellings in _HF_SPELLINGS.items():
            found = [self._hf.token_to_id(s) for s in spellings if self._hf.token_to_id(s) is not None]
            if found:
                ids[name] = found[0]
            else:
                missing.append(f"{name} ({' or '.join(spellings)})")
        if missing:
            raise DataPrepError(
                f"--tokenizer {path!r}: special tokens not found in the vocabulary: {', '.join(missing)}"
            )
        self.special_ids = SpecialIds(**ids)

    def vocabulary(self) -> list[str]:
        """Every token, id by id (what makes two tokenizer files the same tokenizer to a model)."""
        if self.kind == "sentencepiece":
            return [self._sp.IdToPiece(i) for i in range(self.vocab_size)]
        by_id = {i: t for t, i in self._hf.get_vocab(with_added_tokens=True).items()}
        return [by_id.get(i, "") for i in range(self.vocab_size)]

    def save_json(self, path: str) -> None:
        """Write a HF-kind tokenizer as tokenizer.json (how a vocab.txt travels with the shards)."""
        self._hf.save(path)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without special tokens; single-threaded (parallelism is per process)."""
        if self.kind == "sentencepiece":
            return self._sp.Encode(texts, num_threads=1)
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Per text: its ids (no special tokens) and each token's [start, end) character span in the text
        (what extractive QA maps a predicted token span back through)."""
        if self.kind == "hf":
            return [
                (e.ids, [tuple(o) for o in e.offsets]) for e in self._hf.encode_batch(texts, add_special_tokens=False)
            ]  # _fast skips offsets
        out = []
        for text in texts:
            # sentencepiece gives UTF-8 byte offsets into the original text (a byte-fallback piece of a
            # multi-byte character may be empty); map them to character offsets
            char_at = [0] * (len(text.encode("utf-8")) + 1)
            b = 0
            for c, ch in enumerate(text):
                n = len(ch.encode("utf-8"))
                for k in range(n):
                    char_at[b + k] = c
                b += n
            char_at[b] = len(text)
            pieces = self._sp.Encode(text, out_type="proto").pieces
            out.append(([p.id for p in pieces], [(char_at[p.begin], char_at[p.end]) for p in pieces]))
        return out

    def decode(self, ids: list[int]) -> str:
        if self.kind == "sentencepiece":
            return self._sp.Decode(ids)
        return self._hf.decode(ids)

    def id_to_token(self, i: int) -> str:
        return self._sp.IdToPiece(i) if self.kind == "sentencepiece" else self._hf.id_to_token(i)


def _bert_wordpiece(vocab_path: str):
    """BERT's WordPiece pipeline (normaliser, pre-tokeniser, ## continuation) for a vocab.txt.

    Lower-casing follows ``do_lower_case`` of a tokenizer_config.json beside it (default: on, as
    bert-base-uncased and the MiniLM family).
    """
    import json

    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

    lower = True
    cfg_path = os.path.join(os.path.dirname(vocab_path), "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            lower = bool(json.load(f).get("do_lower_case", True))
    tok = HFTokenizer(models.WordPiece.from_file(vocab_path, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def sample_documents(docs: Iterable[str], budget_bytes: int, seed: int) -> list[str]:
    """A uniform random sample of documents, bounded in bytes, in one pass and bounded memory.

    Priority sampling: each document gets a key from a seeded hash of its position; the documents
    with the smallest keys are kept while their total size fits the budget. Deterministic.
    """
    heap: list[tuple[int, int, str]] = []  # (-key, position, text): a max-heap on key
    total = 0
    for i, doc in enumerate(docs):
        key = int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
        size = len(doc.encode("utf-8"))
        if total + size > budget_bytes and heap and -heap[0][0] < key:
            continue
        heapq.heappush(heap, (-key, i, doc))
        total += size
        while total > budget_bytes and len(heap) > 1:
            _, _, dropped = heapq.heappop(heap)
            total -= len(dropped.encode("utf-8"))
    return [doc for _, _, doc in sorted(heap, key=lambda t: t[1])]


def _training_lines(docs: list[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            line = line.strip()
            if line:
                yield line[: _MAX_TRAIN_LINE_BYTES // 4]  # at most 4 bytes per char in UTF-8


def train_sentencepiece(docs: list[str], out_path: str, vocab_size: int, model_type: str, threads: int) -> None:
    """Train a sentencepiece model on ``docs`` and write it to ``out_path`` (atomically).

    Special ids: 0 [PAD], 1 [UNK], 2 [CLS] (bos), 3 [SEP] (eos), 4 [MASK]. Byte fallback keeps
    unseen characters encodable. Output is deterministic for the same docs and ``threads``.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_training_lines(docs),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            num_threads=threads,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            bos_piece="[CLS]",
            eos_piece="[SEP]",
            user_defined_symbols=["[MASK]"],
            byte_fallback=True,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=_MAX_TRAIN_LINE_BYTES,
            hard_vocab_limit=False,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataPrepError(f"--vocab-size {vocab_size}: sentencepiece training failed ({e})") from None
    with atomic_write(out_path, "wb") as f:
        f.write(model.getvalue())
