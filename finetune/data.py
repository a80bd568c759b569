"""Labelled tasks for fine-tuning: local CSV/TSV/JSONL directories or GLUE tasks, tokenised into the
model's unpadded batches.

* A task directory has ``train`` and ``test`` files (``.jsonl``, ``.csv`` or ``.tsv``) whose rows have
  one or two text columns and a label column. Labels are strings or numbers; the label set comes from
  the training file (sorted). Scored by accuracy and macro-F1 on ``test``.
* A GLUE task (``--glue-dir DIR --tasks SST-2 STS-B …``) is read by ``data_prep/glue_data.py`` (the
  layouts the GLUE runner reads) and scored by GLUE's metrics on every labelled split beside train
  (dev, and test where the task has one); STS-B is a regression task (one output, MSE).

A sentence pair is encoded ``[CLS] a [SEP] b [SEP]``, truncated longest-first (as the GLUE runner).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field, replace

import torch

from data_prep.tokenizer import Tokenizer, encode_examples

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


Examples = list[tuple[list[int], float]]  # (token ids with specials, class index or regression target)


@dataclass
class Task:
    name: str
    labels: list[str]  # class names by index; [] for a regression task
    train: Examples
    evals: dict[str, Examples]  # scored splits, e.g. {"test": …} or {"dev": …, "test": …}
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")  # scoring.metrics names
    main: tuple[str, ...] = ("accuracy",)  # the task score: the mean of these
    report: str = "test"  # the split a results table shows (test where there is one, else dev)
    extra: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


def load_task(
    task_dir: str,
    tok: Tokenizer,
    text_cols: tuple[str, ...] = ("text",),
    label_col: str = "label",
    max_len: int = 128,
    max_train: int = 0,
) -> Task:
    name = os.path.basename(os.path.normpath(task_dir))
    rows = {s: read_rows(find_split(task_dir, s)) for s in ("train", "test")}
    for split, rs in rows.items():
        for i, r in enumerate(rs[:1]):
            missing = [c for c in (*text_cols, label_col) if c not in r]
            if missing:
                raise DataError(f"{find_split(task_dir, split)} row {i}: no column {missing[0]!r} (has {sorted(r)})")
    labels = sorted({str(r[label_col]) for r in rows["train"]})
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(rs: list[dict], split: str) -> Examples:
        for i, r in enumerate(rs):
            if str(r[label_col]) not in index:
                raise DataError(
                    f"{find_split(task_dir, split)} row {i}: label {str(r[label_col])!r} not in the "
                    f"training labels {labels}"
                )
        ids = encode_examples(tok, [tuple(str(r[c]) for c in text_cols) for r in rs], max_len)
        return [(x, float(index[str(r[label_col])])) for x, r in zip(ids, rs)]

    from scoring.sampling import stratified_subset

    # a seeded label-stratified subset (seed 0, as GLUE's), never the file's first rows
    keep = stratified_subset([index[str(r[label_col])] for r in rows["train"]], max_train, 0)
    train = [rows["train"][i] for i in keep]
    return Task(name, labels, encode(train, "train"), {"test": encode(rows["test"], "test")})


HOLDOUT_SEED = 1  # evaluation.glue's held-out slice: subset seed 0 + 1


def with_holdout(task: Task, share: float) -> Task:
    """``task`` trained on its training rows less a seeded, label-stratified ``share`` of them (``evaluation.glue``'s
    held-out slice: the same rows for the same training set), which becomes its only scored split (``holdout``):
    choices made on it never see dev or test."""
    from scoring.sampling import holdout_split

    fit, hold = holdout_split([lab for _, lab in task.train], share, HOLDOUT_SEED, task.is_regression)
    held = [task.train[i] for i in hold]
    return replace(task, train=[task.train[i] for i in fit], evals={"holdout": held}, report="holdout")


def load_glue_task(
    name: str, glue_dir: str, tok: Tokenizer, max_len: int = 128, max_train: int = 0, max_eval: int = 0
) -> Task:
    """A GLUE task from a local copy (``data_prep/glue_data.py`` layouts), capped to seeded label-stratified
    subsets of ``max_train`` training and ``max_eval`` dev/test examples (0: all; ``scoring/sampling.py``,
    seed 0: the GLUE runner's default subsets).

    Regression targets (STS-B's 0–5 similarity) are divided by the largest training target, so the head
    regresses on [0, 1] (``extra["target_scale"]`` keeps the divisor). On the 0–5 scale the MSE's gradient
    is some 30× a classification task's, and under the one gradient-norm clip of a multi-task run it
    starves the other tasks (the joint LoRA-Mixer's SST-2 expert never left chance). Pearson and Spearman
    do not depend on the scale.
    """
    from data_prep.glue_data import GlueDataError, load_local, target_scale, task_spec

    try:
        spec = task_spec(name)
        splits = load_local(name, glue_dir)
    except GlueDataError as e:
        raise DataError(str(e)) from None

    from scoring.sampling import subset_examples as subset

    train_ex = subset(splits["train"], max_train, 0, spec.is_regression)
    scale = target_scale(spec, (e.label for e in train_ex))

    def encode(examples, cap: int) -> Examples:
        examples = subset(examples, cap, 0, spec.is_regression)
        return list(
            zip(encode_examples(tok, [e.texts for e in examples], max_len), [e.label / scale for e in examples])
        )

    evals = {s: encode(ex, max_eval) for s, ex in splits.items() if s != "train"}
    return Task(
        spec.name,
        list(spec.labels),
        encode(train_ex, 0),
        evals,
        spec.metrics,
        spec.main,
        "test" if "test" in evals else "dev",
        {"target_scale": scale},
    )


def varlen_batches(examples: list[tuple[list[int], float, int]], batch_size: int, shuffle: bool, seed: int):
    """(ids, label, task id) triples → dicts of flat input_ids, cu_seqlens, max_seqlen, labels, task_ids."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for s in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[s : s + batch_size]]
        lens = [len(ids) for ids, _, _ in chunk]
        yield {
            "input_ids": torch.tensor([t for ids, _, _ in chunk for t in ids]),
            "cu_seqlens": torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32),
            "max_seqlen": max(lens),
            "labels": torch.tensor([float(lab) for _, lab, _ in chunk]),
            "task_ids": torch.tensor([t for _, _, t in chunk]),
        }
