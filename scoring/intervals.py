"""Bootstrap intervals and the constant-predictor baseline of the evaluation runners.

* ``bootstrap_ci``: a percentile interval of a mean over items (queries, questions), resampled with replacement.
* ``bootstrap_draws``: the metric recomputed on resampled evaluation sets, for metrics that are not means
  over items (MCC, F1, Pearson); a GLUE task's draws average its seeds' scores on the same resample, and
  the GLUE average's draws average the tasks' draws (independent resamples per task).
* ``percentile_ci``: the interval of a set of draws.
* ``task_seed``: the bootstrap seed of one task, so that tasks draw independent resamples while two models
  scored with the same seed draw the same ones (what a paired difference needs).
All seeded: the same inputs give the same interval.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

DRAWS = 1000


def bootstrap_ci(values: list[float], seed: int = 0, n: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_draws(score: Callable[[np.ndarray], float], n_items: int, seed: int = 0, n: int = DRAWS) -> np.ndarray:
    """``score(idx)`` on ``n`` resamples ``idx`` of the ``n_items`` evaluation rows: [n]."""
    rng = np.random.default_rng(seed)
    return np.array([score(rng.integers(0, n_items, n_items)) for _ in range(n)])


def task_seed(seed: int, task: str) -> int:
    """A per-task bootstrap seed derived from the run's seed and the task's name (stable across runs)."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % 2**32


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(draws, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def constant_scores(train_labels, n_eval: int, regression: bool, num_labels: int) -> np.ndarray:
    """The trivial predictor's scores on ``n_eval`` rows: the majority training label as one-hot logits
    (classification), or the mean training target (regression: its correlations are 0 by convention)."""
    y = np.asarray(train_labels)
    if regression:
        return np.full(n_eval, float(y.mean()))
    majority = int(np.bincount(y.astype(np.int64), minlength=num_labels).argmax())
    scores = np.zeros((n_eval, num_labels))
    scores[:, majority] = 1.0
    return scores
