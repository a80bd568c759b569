"""Seeded, label-stratified subsets: the evaluation runners' training and evaluation caps.

The first N rows of a GLUE file are not a sample of it (STS-B's training rows start with 1,000+ MSRvid
captions; MRPC's first 500 dev rows are 68 % positive against 68 % over the file, RTE's are sorted by
source), so a capped run drew its conclusions from an unrepresentative slice. ``stratified_subset`` keeps
every label's share of the file (largest-remainder rounding) and picks the rows of each label by a seeded
shuffle; the same (labels, n, seed) always gives the same rows, so every model in a comparison sees the
same subset. Regression targets are stratified by ``bins`` equal-width bins of the score.
"""

from __future__ import annotations

import numpy as np


def strata(labels, regression: bool, bins: int = 5) -> np.ndarray:
    """The stratum of each row: its label, or its equal-width score bin (regression)."""
    y = np.asarray(labels, dtype=np.float64)
    if not regression:
        return y.astype(np.int64)
    lo, hi = float(y.min()), float(y.max())
    if hi == lo:
        return np.zeros(len(y), np.int64)
    return np.minimum(((y - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)


def stratified_subset(labels, n: int, seed: int, regression: bool = False) -> list[int]:
    """Indices (ascending) of ``n`` rows with each stratum's share of ``labels``; all rows when n is 0 or >= len."""
    total = len(labels)
    if not n or n >= total:
        return list(range(total))
    s = strata(labels, regression)
    kinds, counts = np.unique(s, return_counts=True)
    quota = counts * n / total
    take = np.floor(quota).astype(np.int64)
    # largest remainders get the rows left over (ties: the larger stratum, then the smaller id)
    order = sorted(range(len(kinds)), key=lambda i: (-(quota[i] - take[i]), -counts[i], kinds[i]))
    for i in order[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for kind, k in zip(kinds, take):
        rows = np.flatnonzero(s == kind)
        picked.extend(rng.permutation(rows)[:k].tolist())
    return sorted(picked)


def subset_examples(examples: list, n: int, seed: int, regression: bool = False) -> list:
    """A seeded, label-stratified subset of ``n`` examples (objects with a ``label``), in file order; all of
    them when n is 0."""
    return [examples[i] for i in stratified_subset([e.label for e in examples], n, seed, regression)]


def holdout_split(labels, share: float, seed: int, regression: bool = False) -> tuple[list[int], list[int]]:
    """Training rows (ascending indices) less a seeded, stratified ``share`` of them (at least one row), and
    that held-out share: the slice choices are made on, never dev or test."""
    hold = set(stratified_subset(labels, max(1, round(share * len(labels))), seed, regression))
    return [i for i in range(len(labels)) if i not in hold], sorted(hold)
