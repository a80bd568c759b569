"""Ranking and retrieval metrics as BEIR reports them (tested against pytrec_eval, trec_eval's bindings).

* ``rank``: the top k document indices per query, by score descending, ties broken as trec_eval does
  (the larger document id, compared as strings, first), so a run scores the same here and there.
* per-query ``ndcg`` (gain = the qrels grade, discount log2(rank + 1), ideal from every judged document),
  ``recall`` (share of the relevant documents in the top k) and ``mrr`` (1 / rank of the first relevant
  document within the top k, else 0); a document is relevant when its grade is above 0.
Their interval over queries is ``scoring/intervals.py``'s ``bootstrap_ci``.
"""

from __future__ import annotations

import math

import numpy as np


def rank(scores_QD: np.ndarray, doc_ids: list[str], k: int) -> list[list[int]]:
    """Top ``k`` column indices per row, best first (score descending, then doc id descending)."""
    k = min(k, scores_QD.shape[1])
    out = []
    for row in scores_QD:
        # every document that ties the k-th score takes part in the tie-break
        kth = np.partition(row, -k)[-k]
        tied: list[int] = np.flatnonzero(row >= kth).tolist()
        cand = sorted(tied, key=lambda j: doc_ids[j], reverse=True)
        cand.sort(key=lambda j: -row[j])  # stable: equal scores keep the id-descending order
        out.append(cand[:k])
    return out


def ndcg(ranked: list[str], grades: dict[str, int], k: int) -> float:
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if grades.get(d, 0) > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall(ranked: list[str], grades: dict[str, int], k: int) -> float:
    relevant = {d for d, g in grades.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr(ranked: list[str], grades: dict[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if grades.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def per_query(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """{metric: {query id: value}} for the queries in both ``run`` (ranked doc ids) and ``qrels``."""
    out: dict[str, dict[str, float]] = {"ndcg_at_10": {}, "recall_at_100": {}, "mrr_at_10": {}}
    for q, ranked in run.items():
        if q not in qrels:
            continue
        out["ndcg_at_10"][q] = ndcg(ranked, qrels[q], 10)
        out["recall_at_100"][q] = recall(ranked, qrels[q], 100)
        out["mrr_at_10"][q] = mrr(ranked, qrels[q], 10)
    return out
