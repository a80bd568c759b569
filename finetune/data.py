"""Labelled examples from local CSV/TSV/JSONL files, tokenised into the model's unpadded batches.

A task is a directory with ``train`` and ``test`` files (``.jsonl``, ``.csv`` or ``.tsv``) whose rows
have one or two text columns (a sentence pair is encoded ``[CLS] a [SEP] b [SEP]``) and a label column.
Labels are strings or numbers; the label set comes from the training file (sorted).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass

import torch

from data_prep.tokenizer import Tokenizer

EXTS = (".jsonl", ".csv", ".tsv")


class DataError(ValueError):
    """Bad task data; the message names the file and the column or row."""


def find_split(task_dir: str, split: str) -> str:
    for ext in EXTS:
        path = os.path.join(task_dir, split + ext)
        if os.path.isfile(path):
            return path
    raise DataError(f"{task_dir}: no {split}{{{','.join(EXTS)}}} file")


def read_rows(path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))


@dataclass
class Task:
    name: str
    labels: list[str]
    train: list[tuple[list[int], int]]  # (token ids with specials, label index)
    test: list[tuple[list[int], int]]


def load_task(task_dir: str, tok: Tokenizer, text_cols: tuple[str, ...] = ("text",), label_col: str = "label",
              max_len: int = 128, max_train: int = 0) -> Task:
    name = os.path.basename(os.path.normpath(task_dir))
    rows = {s: read_rows(find_split(task_dir, s)) for s in ("train", "test")}
    for split, rs in rows.items():
        for i, r in enumerate(rs[:1]):
            missing = [c for c in (*text_cols, label_col) if c not in r]
            if missing:
                raise DataError(f"{find_split(task_dir, split)} row {i}: no column {missing[0]!r} (has {sorted(r)})")
    labels = sorted({str(r[label_col]) for r in rows["train"]})
    index = {lab: i for i, lab in enumerate(labels)}
    sid = tok.special_ids

    def encode(rs: list[dict], split: str) -> list[tuple[list[int], int]]:
        out = []
        texts = [[str(r[c]) for c in text_cols] for r in rs]
        per_col = [tok.encode([t[c] for t in texts]) for c in range(len(text_cols))]
        for i, r in enumerate(rs):
            lab = str(r[label_col])
            if lab not in index:
                raise DataError(f"{find_split(task_dir, split)} row {i}: label {lab!r} not in the training labels {labels}")
            budget = max_len - 1 - len(text_cols)
            parts = [per_col[c][i][: budget // len(text_cols)] for c in range(len(text_cols))]
            ids = [sid.cls]
            for p in parts:
                ids += [*p, sid.sep]
            out.append((ids, index[lab]))
        return out

    train = rows["train"][:max_train] if max_train else rows["train"]
    return Task(name, labels, encode(train, "train"), encode(rows["test"], "test"))


def batches(examples: list[tuple[list[int], int, int]], batch_size: int, shuffle: bool, seed: int):
    """(ids, label, task id) triples → dicts of flat input_ids, cu_seqlens, max_seqlen, labels, task_ids."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for s in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[s:s + batch_size]]
        lens = [len(ids) for ids, _, _ in chunk]
        yield {
            "input_ids": torch.tensor([t for ids, _, _ in chunk for t in ids]),
            "cu_seqlens": torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32),
            "max_seqlen": max(lens),
            "labels": torch.tensor([lab for _, lab, _ in chunk]),
            "task_ids": torch.tensor([t for _, _, t in chunk]),
        }
