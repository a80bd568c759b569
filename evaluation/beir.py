"""Zero-shot dense retrieval on a BEIR dataset (e.g. SciFact), for native, HuggingFace and teacher models.

    python -m evaluation.beir MODEL [MODEL ...] --beir-dir path/to/beir/scifact
    python -m evaluation.beir MODEL --beir-dir DIR --finetune --out runs/beir/model.json
    python -m evaluation.beir --baselines --beir-dir DIR          # the random and BM25 rows alone

DIR is a BEIR dataset folder as the BEIR release ships it (``corpus.jsonl``, ``queries.jsonl``,
``qrels/test.tsv``, and ``qrels/train.tsv`` for ``--finetune``): unzip any dataset of the BEIR release (e.g.
https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip) and point ``--beir-dir`` at it.

The BEIR protocol: every document is embedded as ``title + " " + text`` and every query alone, with the
model's declared pooling (a sentence-transformers directory's ``1_Pooling``) or mean pooling, at its
declared ``max_seq_length`` or ``--max-len``; the whole corpus is ranked by cosine. One JSON line per model
on stdout: ``{"model", "ndcg_at_10", "recall_at_100", "mrr_at_10", ...}`` on a 0-1 scale over the test
qrels' queries, plus a 95 % bootstrap interval of nDCG@10 over queries, the counts and the encoding time.
Every MODEL after the first is also paired with the first (list the teacher first): the nDCG@10 difference and
its share of the first's nDCG@10, each with a bootstrap interval that resamples the same queries for both
(``paired``; "resolved" when the difference's interval excludes 0). ``--out`` also keeps each row's per-query
nDCG@10, so rows of separate runs on the same queries can be paired later (``paired``). Metrics are
trec_eval's (``scoring/retrieval_metrics.py``, tested against pytrec_eval).

``--finetune`` first trains the encoder contrastively on the train qrels (query → relevant document,
in-batch negatives, cosine × ``--ft-scale``), holding out a seeded ``--ft-holdout`` share of the train
queries: their nDCG@10 over the whole corpus is printed before training and after every epoch, so epochs
and learning rate are chosen there. The test qrels are read once, for the final row.

``--baselines`` adds two reference rows: a seeded random ranking (the trivial predictor) and BM25 over
lower-cased words (k1 0.9, b 0.4; no stemming, so it sits below BEIR's Elasticsearch BM25).
``--max-queries``/``--max-docs`` take a seeded random subset (every relevant document of the kept queries
stays in the corpus) for smoke runs; such numbers are not comparable with the full ones.
A missing or malformed file: one line naming it, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


from evaluation.compare import paired as paired_draws
from evaluation.embedder import Embedder
from evaluation.glue import index_batches
from scoring.intervals import bootstrap_ci, bootstrap_draws, percentile_ci
from scoring.retrieval_metrics import per_query, rank
from finetune.loop import FitConfig, fit, steps_per_epoch
from model.native_format import InputError
from config_check import flag_check

TOP_K = 100  # the deepest cut reported (Recall@100)


@dataclass
class BeirData:
    doc_ids: list[str]
    doc_texts: list[str]  # title + " " + text
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id → {doc id: grade}


@dataclass(frozen=True)
class BeirRun:
    """One ``python -m evaluation.beir`` run, typed: what the library functions read (``parser()`` takes its
    defaults from here and names each field's flag; ``--out`` records the fields as ``args``)."""

    models: tuple[str, ...]
    beir_dir: str
    split: str = "test"
    baselines: bool = False
    max_len: int | None = None
    pooling: str | None = None
    token_budget: int = 4096
    max_queries: int = 0
    max_docs: int = 0
    seed: int = 0
    finetune: bool = False
    ft_epochs: int = 1
    ft_lr: float = 2e-5
    ft_batch_size: int = 32
    ft_scale: float = 20.0
    ft_holdout: float = 0.1
    threads: int = 0
    out: str | None = None

    def validate(self) -> "BeirRun":
        """``--flag=value: allowed`` (``config_check.check``, as every config) for a value that cannot run."""
        arg = flag_check(self, InputError)

        arg("models", bool(self.models) or self.baselines, "name at least one MODEL, or --baselines")
        arg("max_len", self.max_len is None or self.max_len >= 2, "must be >= 2")
        for name in ("token_budget", "ft_epochs", "ft_batch_size"):
            arg(name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("max_queries", "max_docs"):
            arg(name, getattr(self, name) >= 0, "must be >= 0 (0: all)")
        arg("threads", self.threads >= 0, "must be >= 0 (0: torch's default)")
        arg("ft_lr", self.ft_lr > 0, "must be > 0")
        arg("ft_scale", self.ft_scale > 0, "must be > 0")
        arg("ft_holdout", 0 <= self.ft_holdout < 1, "must be in [0, 1)")
        return self

    @property
    def contrastive(self) -> "Contrastive":
        return Contrastive(self.ft_epochs, self.ft_lr, self.ft_batch_size, self.ft_scale, self.ft_holdout, self.seed)


@dataclass(frozen=True)
class Contrastive:
    """``finetune``'s choices: ``BeirRun``'s ``--ft-*`` flags and ``--seed`` (the defaults live there)."""

    epochs: int
    lr: float
    batch_size: int
    scale: float  # cosine → logit
    holdout: float  # share of the train queries held out for choices
    seed: int  # the held-out draw, the batches


def _jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing (expected a BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["_id"] = str(row["_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{n}: not a BEIR row with an _id ({e})") from None
            rows.append(row)
    return rows


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if n == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue
            if parts == [""]:
                continue
            if len(parts) != 3:
                raise InputError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.rstrip()!r}")
            try:
                out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
            except ValueError:
                raise InputError(f"{path}:{n}: score {parts[2]!r} is not an integer") from None
    return out


def load(beir_dir: str, split: str) -> BeirData:
    corpus = _jsonl(os.path.join(beir_dir, "corpus.jsonl"))
    queries = {r["_id"]: r.get("text", "") for r in _jsonl(os.path.join(beir_dir, "queries.jsonl"))}
    qrels = read_qrels(os.path.join(beir_dir, "qrels", f"{split}.tsv"))
    ids = [r["_id"] for r in corpus]
    missing_q = sorted(set(qrels) - set(queries))
    known = set(ids)
    missing_d = sorted({d for g in qrels.values() for d in g} - known)
    if missing_q or missing_d:
        raise InputError(
            f"{beir_dir}/qrels/{split}.tsv: {len(missing_q)} query ids not in queries.jsonl "
            f"{missing_q[:3]}, {len(missing_d)} document ids not in corpus.jsonl {missing_d[:3]}"
        )
    texts = [(r.get("title") or "") + " " + (r.get("text") or "") for r in corpus]
    return BeirData(ids, texts, queries, qrels)


def subset(data: BeirData, max_queries: int, max_docs: int, seed: int) -> BeirData:
    """A seeded random subset: ``max_queries`` judged queries, their relevant documents, and random others
    up to ``max_docs`` (smoke runs only)."""
    rng = random.Random(seed)
    qids = sorted(data.qrels)
    if max_queries and max_queries < len(qids):
        qids = sorted(rng.sample(qids, max_queries))
    qrels = {q: data.qrels[q] for q in qids}
    keep = {d for g in qrels.values() for d in g}
    if max_docs and max_docs < len(data.doc_ids):
        others = [i for i, d in enumerate(data.doc_ids) if d not in keep]
        extra = rng.sample(others, max(0, min(len(others), max_docs - len(keep))))
        rows = sorted({i for i, d in enumerate(data.doc_ids) if d in keep} | set(extra))
    else:
        rows = range(len(data.doc_ids))
    return BeirData(
        [data.doc_ids[i] for i in rows], [data.doc_texts[i] for i in rows], {q: data.queries[q] for q in qids}, qrels
    )


def score_run(scores_QD: np.ndarray, qids: list[str], data: BeirData, seed: int = 0) -> dict:
    """Mean metrics over ``qids`` from a [Q, D] score matrix over ``data``'s corpus, plus nDCG@10's interval."""
    ranked = rank(scores_QD, data.doc_ids, TOP_K)
    run = {q: [data.doc_ids[j] for j in r] for q, r in zip(qids, ranked)}
    pq = per_query(run, data.qrels)
    out = {m: float(np.mean(list(v.values()))) for m, v in pq.items()}
    out["ndcg_at_10_ci95"] = list(bootstrap_ci(list(pq["ndcg_at_10"].values()), seed=seed))
    out["queries"], out["documents"] = len(pq["ndcg_at_10"]), len(data.doc_ids)
    out["per_query_ndcg_at_10"] = {q: round(v, 6) for q, v in sorted(pq["ndcg_at_10"].items())}  # for pairing
    return out


def paired(ref: dict, row: dict, seed: int = 0) -> dict:
    """``row`` against ``ref`` on the same queries: the nDCG@10 difference and ``row``'s share of ``ref``'s
    nDCG@10, each with a 95 % bootstrap interval that resamples the queries once for both models (paired);
    "resolved" when the difference's interval excludes 0."""
    a, b = ref["per_query_ndcg_at_10"], row["per_query_ndcg_at_10"]
    if set(a) != set(b):
        raise InputError(f"{row['model']} and {ref['model']} were scored on different queries: cannot pair them")
    qs = sorted(a)
    scores_MQ = np.array([[a[q] for q in qs], [b[q] for q in qs]])  # M = 0 ref, 1 row
    point = scores_MQ.mean(1)
    draws = bootstrap_draws(lambda i: scores_MQ[:, i].mean(1), len(qs), seed).T  # [2, draws], one resample each
    return {
        "against": ref["model"],
        **paired_draws(point, draws, 1, 0),
        "share": float(point[1] / max(point[0], 1e-12)),
        "share_ci95": list(percentile_ci(draws[1] / np.maximum(draws[0], 1e-12))),
    }


def summary_line(row: dict) -> str:
    """A row as its stdout JSON line: everything but the per-query scores (those go to ``--out`` only)."""
    return json.dumps({k: v for k, v in row.items() if k != "per_query_ndcg_at_10"})


def dense_scores(embed: Embedder, data: BeirData, qids: list[str]) -> tuple[np.ndarray, float]:
    """(cosine [Q, D] of ``qids`` against the whole corpus, seconds spent encoding the documents)."""
    t0 = time.perf_counter()
    doc_E = F.normalize(embed(data.doc_texts, f"encoding {len(data.doc_texts):,} documents"), dim=-1)
    secs = time.perf_counter() - t0
    q_E = F.normalize(embed([data.queries[q] for q in qids], f"encoding {len(qids):,} queries"), dim=-1)
    return (q_E @ doc_E.T).numpy(), secs


def finetune(embed: Embedder, train: BeirData, c: Contrastive, log) -> list[dict]:
    """Contrastive training on ``train``'s qrels minus a held-out slice; returns the held-out scores per epoch
    (epoch 0 = before training)."""
    rng = random.Random(c.seed)
    qids = sorted(train.qrels)
    held = set(rng.sample(qids, max(1, round(c.holdout * len(qids))))) if c.holdout > 0 else set()
    held_q = sorted(held)
    pairs = [(q, d) for q in qids if q not in held for d, g in sorted(train.qrels[q].items()) if g > 0]
    doc_row = {d: i for i, d in enumerate(train.doc_ids)}
    history = []

    def held_out(epoch: int) -> None:
        if not held_q:
            return
        s, _ = dense_scores(embed, train, held_q)
        r = score_run(s, held_q, train, c.seed)
        history.append({"epoch": epoch, **{k: r[k] for k in ("ndcg_at_10", "recall_at_100", "mrr_at_10")}})
        log(
            f"  held-out train queries ({len(held_q)}), epoch {epoch}: nDCG@10 {r['ndcg_at_10']:.4f} "
            f"Recall@100 {r['recall_at_100']:.4f}"
        )

    held_out(0)
    torch.manual_seed(c.seed)
    model = embed.model
    params = [p for p in model.parameters() if p.requires_grad]
    q_rows = dict(zip(qids, embed.tokenize([train.queries[q] for q in qids])))
    d_rows: dict[str, dict] = {}
    per_epoch = steps_per_epoch(len(pairs), c.batch_size)

    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = [pairs[i] for i in idx]
        need = [d for _, d in batch if d not in d_rows]
        d_rows.update(zip(need, embed.tokenize([train.doc_texts[doc_row[d]] for d in need])))
        q_BD = F.normalize(embed.embed([q_rows[q] for q, _ in batch]), dim=-1)
        d_BD = F.normalize(embed.embed([d_rows[d] for _, d in batch]), dim=-1)
        logits_BB = c.scale * q_BD @ d_BD.T
        # another pair with the same query or document is not a negative
        qs, ds = [q for q, _ in batch], [d for _, d in batch]
        clash = torch.tensor(
            [[i != j and (qs[i] == qs[j] or ds[i] == ds[j]) for j in range(len(batch))] for i in range(len(batch))]
        )
        loss = F.cross_entropy(logits_BB.masked_fill(clash, float("-inf")), torch.arange(len(batch)))
        return loss, {"loss": loss}

    def after_epoch(e: int, m: dict[str, float]) -> None:
        log(f"  epoch {e + 1}/{c.epochs}: {per_epoch} steps, contrastive loss {m.get('loss', 0.0):.4f}")
        held_out(e + 1)

    fit(
        model,
        params,
        FitConfig(c.lr, c.epochs, per_epoch),
        lambda e: index_batches(len(pairs), c.batch_size, c.seed * 1000 + e + 1),
        step_loss,
        after_epoch,
        progress="  contrastive",
    )
    model.eval()
    return history


# ---- the reference rows ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def bm25_scores(data: BeirData, qids: list[str], k1: float = 0.9, b: float = 0.4) -> np.ndarray:
    """BM25 (Robertson idf with +1, Anserini's default k1/b) over lower-cased \\w+ tokens."""
    docs = [Counter(_WORD.findall(t.lower())) for t in data.doc_texts]
    lens = np.array([sum(c.values()) for c in docs], dtype=np.float64)
    avg = lens.mean() if len(lens) else 1.0
    df = Counter(w for c in docs for w in c)
    N = len(docs)
    postings: dict[str, list[tuple[int, int]]] = {}
    for j, c in enumerate(docs):
        for w, tf in c.items():
            postings.setdefault(w, []).append((j, tf))
    out = np.zeros((len(qids), N))
    for i, q in enumerate(qids):
        for w in set(_WORD.findall(data.queries[q].lower())):
            if w not in df:
                continue
            idf = math.log(1 + (N - df[w] + 0.5) / (df[w] + 0.5))
            for j, tf in postings[w]:
                out[i, j] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lens[j] / avg))
    return out


def baseline_rows(data: BeirData, qids: list[str], seed: int) -> list[dict]:
    rnd = np.random.default_rng(seed).random((len(qids), len(data.doc_ids)))
    return [
        {"model": "baseline: random ranking", **score_run(rnd, qids, data, seed)},
        {"model": "baseline: BM25 (words, no stemming)", **score_run(bm25_scores(data, qids), qids, data, seed)},
    ]


# ---- command line ------------------------------------------------------------------------------------


def score_retrieval(path: str, test: BeirData, a: BeirRun, log, train: BeirData | None = None) -> dict:
    embed = Embedder(path, max_len=a.max_len, pooling=a.pooling, token_budget=a.token_budget)
    row: dict = {"model": path}
    if train is not None:
        c = a.contrastive
        row["finetune"] = {
            "held_out": finetune(embed, train, c, log),
            "epochs": c.epochs,
            "lr": c.lr,
            "batch_size": c.batch_size,
        }
    qids = sorted(test.qrels)
    scores, secs = dense_scores(embed, test, qids)
    row.update(score_run(scores, qids, test, a.seed))
    row.update({"pooling": embed.pooling, "max_len": embed.max_len, "encode_seconds": round(secs, 2)})
    return row


def parser() -> argparse.ArgumentParser:
    D = BeirRun  # the defaults live on the typed run
    p = argparse.ArgumentParser(
        prog="python -m evaluation.beir", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="*", help="native or HuggingFace model directories")
    p.add_argument("--beir-dir", required=True, help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default=D.split, help="qrels file scored (qrels/SPLIT.tsv)")
    p.add_argument("--baselines", action="store_true", help="also print the random-ranking and BM25 rows")
    p.add_argument(
        "--max-len",
        type=int,
        default=D.max_len,
        help="tokens per text (default: the model's declared max_seq_length, else 512)",
    )
    p.add_argument("--pooling", choices=("mean", "cls"), default=D.pooling, help="default: as declared, else mean")
    p.add_argument(
        "--token-budget",
        type=int,
        default=D.token_budget,
        help="tokens per encoding batch (rows × longest row when padded; 4096 measured fastest on 2 CPUs)",
    )
    p.add_argument(
        "--max-queries", type=int, default=D.max_queries, help="seeded random subset of queries (smoke runs)"
    )
    p.add_argument("--max-docs", type=int, default=D.max_docs, help="seeded random corpus subset (smoke runs)")
    p.add_argument("--seed", type=int, default=D.seed, help="subsets, bootstrap, fine-tuning")
    p.add_argument("--finetune", action="store_true", help="train on qrels/train.tsv first (contrastive)")
    p.add_argument("--ft-epochs", type=int, default=D.ft_epochs)
    p.add_argument("--ft-lr", type=float, default=D.ft_lr)
    p.add_argument("--ft-batch-size", type=int, default=D.ft_batch_size)
    p.add_argument("--ft-scale", type=float, default=D.ft_scale, help="cosine → logit scale of the contrastive loss")
    p.add_argument("--ft-holdout", type=float, default=D.ft_holdout, help="share of train queries held out for choices")
    p.add_argument("--threads", type=int, default=D.threads, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="also write every row to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        a = BeirRun(**{**vars(args), "models": tuple(args.models)}).validate()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  (stdout carries the JSON lines)
    rows = []
    try:
        test = subset(load(a.beir_dir, a.split), a.max_queries, a.max_docs, a.seed)
        train = subset(load(a.beir_dir, "train"), 0, a.max_docs, a.seed) if a.finetune else None
        if a.baselines:
            for row in baseline_rows(test, sorted(test.qrels), a.seed):
                rows.append(row)
                print(summary_line(row), flush=True)
        first = None
        for m in a.models:
            log(f"== {m}")
            row = score_retrieval(m, test, a, log, train)
            if first is None:
                first = row
            else:
                row["paired"] = paired(first, row, a.seed)
                p = row["paired"]
                log(
                    f"  against {first['model']}: nDCG@10 {p['diff']:+.4f} [{p['diff_ci95'][0]:+.4f}, "
                    f"{p['diff_ci95'][1]:+.4f}] ({'resolved' if p['resolved'] else 'not resolved'}), "
                    f"share {p['share']:.1%} [{p['share_ci95'][0]:.1%}, {p['share_ci95'][1]:.1%}]"
                )
            rows.append(row)
            print(summary_line(row), flush=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"args": dataclasses.asdict(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
