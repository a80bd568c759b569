"""The SQuAD 2.0 scoring rule, as the official ``evaluate-v2.0.py`` applies it.

An answer is normalised (lower-case, punctuation removed, the articles a/an/the removed, whitespace
collapsed); a prediction scores the maximum exact match and token F1 over the question's gold answers;
an unanswerable question's only gold answer is "" (so "" scores 1 there and 0 elsewhere). ``score``
reports ``exact``, ``f1`` and ``total`` overall and on the answerable (HasAns) and unanswerable (NoAns)
parts, on a 0-100 scale. ``best_null_threshold`` is the official script's threshold search, used here only
on held-out training questions (choosing it on the scored split would inflate the score).
"""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1(gold: str, pred: str) -> float:
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)  # either is empty: 1 if both are
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def gold_answers(qa: dict) -> list[str]:
    """The texts a prediction is compared with: the non-empty gold answers, or [""] when there are none."""
    golds = [a["text"] for a in qa.get("answers", []) if normalize_answer(a["text"])]
    return golds or [""]


def questions(dataset: list[dict]) -> list[dict]:
    """Every qa of a SQuAD ``data`` list, in file order."""
    return [qa for article in dataset for para in article["paragraphs"] for qa in para["qas"]]


def per_question(dataset: list[dict], preds: dict[str, str]) -> dict[str, tuple[int, float, bool]]:
    """{question id: (exact, f1, has_answer)} for the questions ``preds`` answers (the official script skips
    a missing prediction, so it is not in the totals either); has_answer is "the answers list is non-empty"."""
    out = {}
    for qa in questions(dataset):
        if qa["id"] not in preds:
            continue
        golds, p = gold_answers(qa), preds[qa["id"]]
        out[qa["id"]] = (max(exact(g, p) for g in golds), max(f1(g, p) for g in golds), bool(qa.get("answers")))
    return out


def aggregate(rows: dict[str, tuple[int, float, bool]]) -> dict:
    def part(items):
        n = len(items)
        return {
            "exact": 100.0 * sum(e for e, _, _ in items) / n if n else 0.0,
            "f1": 100.0 * sum(f for _, f, _ in items) / n if n else 0.0,
            "total": n,
        }

    all_, has = list(rows.values()), [r for r in rows.values() if r[2]]
    no = [r for r in rows.values() if not r[2]]
    out = part(all_)
    for name, items in (("HasAns", has), ("NoAns", no)):
        if items:
            out.update({f"{name}_{k}": v for k, v in part(items).items()})
    return out


def score(dataset: list[dict], preds: dict[str, str]) -> dict:
    return aggregate(per_question(dataset, preds))


def best_null_threshold(
    dataset: list[dict], preds: dict[str, str], null_margin: dict[str, float]
) -> tuple[float, float]:
    """(threshold, F1 at it): predict "" when ``null_margin[q]`` (null score − best span score) is above the
    threshold. Scans every margin as the official script does; the threshold maximising F1 wins."""
    qs = questions(dataset)
    gold = {qa["id"]: gold_answers(qa) for qa in qs}
    span_f1 = {q: max(f1(g, preds.get(q, "")) for g in gold[q]) for q in gold}
    null_f1 = {q: float(gold[q] == [""]) for q in gold}
    # threshold below every margin: everything null; raising it past q's margin gives q its span
    cur = best = sum(null_f1.values())
    best_t = min(null_margin.values(), default=0.0) - 1e-6
    for q in sorted(gold, key=lambda q: null_margin.get(q, float("inf"))):
        if q not in null_margin:
            continue
        cur += span_f1[q] - null_f1[q]
        if cur > best:
            best, best_t = cur, null_margin[q]
    return best_t, 100.0 * best / max(len(gold), 1)
