"""GLUE metrics in numpy (tested against scikit-learn and scipy): accuracy, binary and macro F1, Matthews
correlation, Pearson and Spearman correlation; the GLUE task score and the seed summary."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC F1)."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = float(np.sum(pred & gold))
    denom = float(np.sum(pred) + np.sum(gold))
    return 2 * tp / denom if denom else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes in gold or pred (as scikit-learn's macro)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float(np.mean([f1(pred, gold, c) for c in np.union1d(pred, gold)]))


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation of two binary labelings; 0 when a marginal is constant (as scikit-learn)."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
    tp, tn = float(np.sum(p & g)), float(np.sum(~p & ~g))
    fp, fn = float(np.sum(p & ~g)), float(np.sum(~p & g))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 … end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def task_metrics(metric_names: tuple[str, ...], scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``scores``: [N, C] logits (classification) or [N] predictions (regression)."""
    pred = scores if scores.ndim == 1 else scores.argmax(-1)
    fns = {
        "accuracy": accuracy,
        "f1": f1,
        "macro_f1": macro_f1,
        "mcc": matthews,
        "pearson": pearson,
        "spearman": spearman,
    }
    return {m: fns[m](pred, gold) for m in metric_names}


def task_score(metrics: dict[str, float], main: tuple[str, ...]) -> float:
    """GLUE's per-task score: the mean of the task's main metrics (MRPC acc+F1, STS-B Pearson+Spearman)."""
    return float(np.mean([metrics[m] for m in main]))


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread over seeds."""
    v = np.asarray(values, np.float64)
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
    }
