"""tools/: consolidation (EP=2 == EP=1, strict keys), expert merging, HF conversion in both formats."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import pretrain, run_cli

pytestmark = [pytest.mark.slow]


def _train(run_dir: str, shards_dir: str, nproc: int, extra=()):
    args = [
        f"data.dir={shards_dir}",
        f"run_dir={run_dir}",
        "train.steps=3",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "eval.every=0",
        "schedule.warmup_steps=3",
        *extra,
    ]
    r = pretrain(nproc, args)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards_dir):
    base = tmp_path_factory.mktemp("tool_runs")
    return {
        # every step logged: metrics.jsonl then holds each step's routing counts (the routing average's input)
        "ep1": _train(str(base / "ep1"), shards_dir, 2, ["train.log_every=1"]),
        "ep2": _train(str(base / "ep2"), shards_dir, 2, ["parallel.ep=2"]),
    }


@pytest.fixture(scope="module")
def native(runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("native") / "model")
    r = run_cli(["tools/consolidate_checkpoint.py", runs["ep1"], "--out", out])
    assert r.returncode == 0, r.stderr
    return out


def _load(path):
    from model.native_format import load_native

    return load_native(path)


def test_consolidating_an_ep2_checkpoint_gives_the_ep1_tensors(runs, native, tmp_path):
    out = str(tmp_path / "ep2")
    r = run_cli(["tools/consolidate_checkpoint.py", os.path.join(runs["ep2"], "checkpoints"), "--out", out])
    assert r.returncode == 0, r.stderr
    assert "step 3" in r.stdout
    (m1, doc1), (m2, _) = _load(native), _load(out)
    a, b = m1.state_dict(), m2.state_dict()
    assert a.keys() == b.keys()
    assert a["model.groups.1.block.ffn.B1"].shape[0] == 8  # every expert of both EP ranks
    assert a["model.groups.1.block.ffn.B1"].abs().max() > 0  # trained: B left its zero init
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert doc1["tokenizer"] == "tokenizer.model" and os.path.isfile(os.path.join(native, "tokenizer.model"))


def test_key_accounting_catches_a_deleted_key(runs, tmp_path):
    ckpt = tmp_path / "ckpt"
    step = os.path.join(
        runs["ep1"], "checkpoints", open(os.path.join(runs["ep1"], "checkpoints", "latest")).read().strip()
    )
    shutil.copytree(step, ckpt)
    with open(ckpt / ".metadata", "rb") as f:
        meta = pickle.load(f)
    del meta.state_dict_metadata["model.head.dense.weight"]
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    (ckpt / "manifest.json").unlink()  # else verification stops it first (.metadata changed): see test_faults
    r = run_cli(["tools/consolidate_checkpoint.py", str(ckpt), "--out", str(tmp_path / "out")])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "missing ['head.dense.weight'] (1), unexpected [] (0)" in r.stderr
    assert not (tmp_path / "out").exists() and not any(p.name.startswith("out.tmp") for p in tmp_path.iterdir())


def test_bad_inputs_give_one_line_errors_and_no_output(native, tmp_path):
    r = run_cli(["tools/consolidate_checkpoint.py", str(tmp_path), "--out", str(tmp_path / "o1")])
    assert r.returncode == 2 and "not a training checkpoint" in r.stderr and r.stderr.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(native, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    for tool in ("tools/merge_experts.py", "tools/convert_to_hf.py"):
        r = run_cli([tool, str(broken), "--out", str(tmp_path / "o2")])
        assert r.returncode == 2 and "not a readable safetensors file" in r.stderr and r.stderr.count("\n") == 1, (
            r.stderr
        )
    r = run_cli(["tools/convert_to_hf.py", native, "--out", str(tmp_path / "o3"), "--format", "modernbert"])
    assert r.returncode == 2 and "run tools/merge_experts.py --fold first" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing partial left behind
    r = run_cli(["tools/merge_experts.py", native, "--out", native])  # never overwrites without --overwrite
    assert r.returncode == 2 and "already exists" in r.stderr


def _random_experts(model):
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("ffn.B1", "ffn.B2")):
            p.data.normal_(0, 0.05)
    return model


def test_uniform_merge_is_the_mean_delta_weight_and_fold_equals_the_adapter(native):
    from tools.convert_to_hf import native_logits, sample_batch
    from model.modernalbert import mol_layers
    from tools.merge_experts import merge

    model, doc = _load(native)
    model = _random_experts(model)
    layer = mol_layers(model)[1]
    E = layer.cfg.num_experts
    uniform = {1: torch.full((E,), 1.0 / E, dtype=torch.float64)}
    merged = merge(model, uniform, fold=False)
    one = mol_layers(merged)[1]
    assert one.cfg.num_experts == 1 and one.A1.shape == (1, E * layer.cfg.rank, model.cfg.hidden_size)
    dWi, dWo = layer.delta_weights()
    mWi, mWo = one.delta_weights()
    torch.testing.assert_close(mWi[0], dWi.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mWo[0], dWo.mean(0), rtol=1e-5, atol=1e-7)
    folded = merge(model, uniform, fold=True)
    assert not folded.cfg.mol.groups and not mol_layers(folded)
    ids, mask = sample_batch(doc, native)
    a, b = native_logits(merged, ids, mask), native_logits(folded, ids, mask)
    assert (a - b).abs().max() <= 1e-5


def test_ema_merge_weights_are_the_training_steps_routing_shares_averaged(runs, native, tmp_path):
    """train.routing_ema_decay: each step's global routing share per MoL group, averaged (first step: its
    share), recorded by consolidate in the model's history; merge_experts --method ema weighs by it."""
    from model.native_format import load_native

    cfg, doc = load_native(native)[0].cfg, load_native(native)[1]
    rec = doc["history"][-1]["routing_ema"]
    assert rec["updates"] == 3 and rec["decay"] == 0.99 and set(rec["groups"]) == {"1"}
    records = [json.loads(line) for line in open(os.path.join(runs["ep1"], "metrics.jsonl"))]
    ema = None
    for r in records:  # the same average from the logged counts of each step (layers of group 1)
        layers = [f"layer{i}.ffn" for i in range(cfg.group_depth, 2 * cfg.group_depth)]
        counts = np.sum([r["tokens_per_expert"][k] for k in layers], axis=0)
        share = counts / counts.sum()
        ema = share if ema is None else 0.99 * ema + 0.01 * share
    assert len(records) == 3 and np.allclose(rec["groups"]["1"], ema, atol=1e-12)
    out = tmp_path / "ema"
    r = run_cli(["tools/merge_experts.py", native, "--out", str(out), "--method", "ema", "--no-val"])
    assert r.returncode == 0, r.stderr
    assert "averaged over training" in r.stdout
    rep = json.loads((out / "merge_report.json").read_text())
    assert np.allclose(rep["expert_weights"]["group1"], ema, atol=1e-6)
    # a model without the record (written before it existed): one line naming the way out, exit 2
    bare = tmp_path / "bare"
    shutil.copytree(native, bare)
    conf = json.loads((bare / "config.json").read_text())
    conf["history"] = [{k: v for k, v in h.items() if k != "routing_ema"} for h in conf["history"]]
    (bare / "config.json").write_text(json.dumps(conf))
    r = run_cli(["tools/merge_experts.py", str(bare), "--out", str(tmp_path / "x"), "--method", "ema", "--no-val"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "use --method routing" in r.stderr
    assert not (tmp_path / "x").exists()


def test_merging_identical_experts_changes_nothing(native, tmp_path):
    from safetensors.torch import load_file, save_file

    same = tmp_path / "same"
    shutil.copytree(native, same)
    state = load_file(str(same / "model.safetensors"))
    torch.manual_seed(2)
    for k in ("A1", "B1", "A2", "B2"):
        key = f"model.groups.1.block.ffn.{k}"
        one = torch.randn_like(state[key][:1]) * 0.05
        state[key] = one.expand_as(state[key]).contiguous()
    save_file(state, str(same / "model.safetensors"))
    for method in ("uniform", "routing"):
        out = tmp_path / method
        r = run_cli(
            ["tools/merge_experts.py", str(same), "--out", str(out), "--method", method, "--calib-batches", "2"]
        )
        assert r.returncode == 0, r.stderr
        rep = json.loads((out / "merge_report.json").read_text())
        assert rep["before"]["val_masked"] > 1000
        assert rep["after"]["val_loss"] == pytest.approx(rep["before"]["val_loss"], rel=1e-6), rep
        # the report rounds each of the 8 weights to 6 decimals: their sum may be off by up to 8 x 5e-7
        assert sum(rep["expert_weights"]["group1"]) == pytest.approx(1.0, abs=4e-6)


_FRESH = r"""
import json, sys, torch
# a user's machine has no ModernALBERT checkout: the export must load without any of the project's packages
for name in ("model", "config_check", "validation", "fileio", "scoring", "data_prep", "pretrain", "tools"):
    sys.modules[name] = None
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
d, remote, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
batch = torch.load(sys.argv[4])
model = AutoModelForMaskedLM.from_pretrained(d, **({"trust_remote_code": True} if remote else {})).eval()
with torch.no_grad():
    logits = model(input_ids=batch["ids"], attention_mask=batch["mask"]).logits[batch["mask"].bool()]
tok = AutoTokenizer.from_pretrained(d)
fill = pipeline("fill-mask", model=model, tokenizer=tok)("The [MASK] of the world.")
model.save_pretrained(out)
again = AutoModelForMaskedLM.from_pretrained(out, **({"trust_remote_code": True} if remote else {})).eval()
with torch.no_grad():
    logits2 = again(input_ids=batch["ids"], attention_mask=batch["mask"]).logits[batch["mask"].bool()]
torch.save({"logits": logits, "roundtrip": (logits2 - logits).abs().max().item(), "class": type(model).__name__,
            "fill": fill, "encoded": tok("The quick brown fox.")["input_ids"]}, out + ".result.pt")
"""


@pytest.mark.parametrize("fmt", ["modernalbert", "modernbert"])
def test_hf_exports_load_in_a_fresh_offline_process_and_match(native, tmp_path, fmt):
    from data_prep.tokenizer import Tokenizer
    from tools.convert_to_hf import native_logits, sample_batch

    src = native
    if fmt == "modernbert":
        src = str(tmp_path / "folded")
        r = run_cli(["tools/merge_experts.py", native, "--out", src, "--fold", "--val-batches", "1"])
        assert r.returncode == 0, r.stderr
    hf_dir = str(tmp_path / "hf")
    r = run_cli(["tools/convert_to_hf.py", src, "--out", hf_dir, "--format", fmt])
    assert r.returncode == 0, r.stderr
    assert "verify: max |logits_hf - logits_native|" in r.stdout
    if fmt == "modernbert":
        assert not any(f.endswith(".py") for f in os.listdir(hf_dir))  # no custom code at all
        assert json.load(open(os.path.join(hf_dir, "config.json")))["model_type"] == "modernbert"
    model, doc = _load(src)
    ids, mask = sample_batch(doc, src)
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH,
            hf_dir,
            "1" if fmt == "modernalbert" else "0",
            str(tmp_path / "resaved"),
            str(tmp_path / "batch.pt"),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = torch.load(str(tmp_path / "resaved") + ".result.pt", weights_only=False)
    assert res["class"] == ("ModernAlbertForMaskedLM" if fmt == "modernalbert" else "ModernBertForMaskedLM")
    assert (res["logits"] - native_logits(model, ids, mask)).abs().max() <= 1e-4
    assert res["roundtrip"] == 0.0
    assert len(res["fill"]) == 5 and all(0 < f["score"] <= 1 for f in res["fill"])
    ours = Tokenizer(os.path.join(src, "tokenizer.model"))
    sid = ours.special_ids
    assert res["encoded"] == [sid.cls, *ours.encode(["The quick brown fox."])[0], sid.sep]


def test_hf_fast_tokenizer_matches_sentencepiece_on_the_whole_corpus(shards_dir, tmp_path):
    from transformers import AutoTokenizer

    from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
    from data_prep.tokenizer import Tokenizer
    from tools.hf_tokenizer import save_hf_tokenizer

    ours = Tokenizer(os.path.join(shards_dir, "tokenizer.model"))
    save_hf_tokenizer(os.path.join(shards_dir, "tokenizer.model"), ours.special_ids.as_dict(), str(tmp_path), 512)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    docs = list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])))
    got = [e.ids for e in hf.backend_tokenizer.encode_batch(docs, add_special_tokens=False)]
    want = ours.encode(docs)
    differ = [i for i in range(len(docs)) if got[i] != want[i]]
    # the only allowed difference: Viterbi ties (equal-score splits, e.g. a run of 49 '*' into 1 + 16·3 or
    # 16 + 1 + 32), broken differently by the two libraries: the same pieces in another order
    ties = [i for i in differ if sorted(got[i]) == sorted(want[i])]
    assert len(docs) > 3000 and differ == ties, f"{len(differ) - len(ties)} documents differ beyond ties"
    assert len(ties) <= 2


# A user of the export, as the README's quickstart ends: tokenizer, base model, a long text cut by truncation=True,
# fill-mask. stdin is closed, so a trust_remote_code prompt would show in the output (not wait for an answer).
_HUB_USER = r"""
import json, sys, torch
for name in ("model", "config_check", "validation", "fileio", "scoring", "data_prep", "pretrain", "tools"):
    sys.modules[name] = None
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast, pipeline
d, remote, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
kw = {"trust_remote_code": True} if remote else {}
tok = AutoTokenizer.from_pretrained(d, **kw)  # the stock formats: no trust_remote_code at all
plain = PreTrainedTokenizerFast.from_pretrained(d)  # every format: the stock class, no flag
text = " ".join(["And he said unto them, Go ye into all the world, and preach the gospel to every creature."] * 40)
enc = tok(text, truncation=True, return_tensors="pt")
model = AutoModel.from_pretrained(d, **kw).eval()
with torch.no_grad():
    hidden = model(**enc).last_hidden_state
fill = pipeline("fill-mask", model=d, **kw)("And he said unto them, Go ye into all the [MASK], and preach the gospel.")
open(out, "w").write(json.dumps({
    "tokenizer": type(tok).__name__, "max_length": tok.model_max_length, "plain_max_length": plain.model_max_length,
    "untruncated": len(tok(text)["input_ids"]), "truncated": enc["input_ids"].shape[1], "same_ids":
    plain(text, truncation=True)["input_ids"] == enc["input_ids"][0].tolist(), "model": type(model).__name__,
    "hidden": list(hidden.shape), "finite": bool(hidden.isfinite().all()), "fill": len(fill),
}))
"""
_BARE_TOKENIZER = r"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
open(sys.argv[2], "w").write(json.dumps({"max_length": tok.model_max_length}))
"""


@pytest.fixture(scope="module")
def students(shards_dir, tmp_path_factory) -> dict[str, str]:
    """Tiny random-init native models without experts, each with a position count no default has: ModernBERT's
    block (RoPE, 384 declared) and the BERT family's (a 320-row absolute table, as a teacher's student has)."""
    import dataclasses

    from data_prep.tokenizer import Tokenizer
    from model.config import BERT_BLOCK, MoLConfig, preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.native_format import save_native

    tok = os.path.join(shards_dir, "tokenizer.model")
    base = preset("tiny", vocab_size=Tokenizer(tok).vocab_size, mol=MoLConfig(groups=()))
    out = {}
    for name, fields in (
        ("rope", {"max_position_embeddings": 384}),
        ("absolute", {**BERT_BLOCK, "global_every": 1, "max_position_embeddings": 320}),
    ):
        torch.manual_seed(0)
        model = ModernAlbertForMaskedLM(dataclasses.replace(base, **fields).validate())
        out[name] = str(tmp_path_factory.mktemp("students") / name)
        os.makedirs(out[name])
        save_native(out[name], model.state_dict(), model.cfg, tok, None, [])
    return out


def _as_hub_user(tmp_path, script: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``script`` in a fresh, offline process with stdin closed (a prompt gets EOF), outside the repo."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=str(tmp_path),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "fmt, student, positions",
    [
        ("modernalbert", "rope", 384),
        ("modernalbert", "absolute", 320),
        ("modernbert", "rope", 384),
        ("albert", "absolute", 320),
    ],
)
def test_every_hf_export_loads_truncates_and_fills_masks_like_a_hub_model(students, tmp_path, fmt, student, positions):
    """The tokenizer is the stock PreTrainedTokenizerFast with the model's positions as its model_max_length (was
    8192: a 700-token text with truncation=True broke the model's 320-row table), and nothing asks or warns."""
    hf = str(tmp_path / "hf")
    r = run_cli(["tools/convert_to_hf.py", students[student], "--out", hf, "--format", fmt])
    assert r.returncode == 0, r.stderr
    tok_cfg = json.load(open(os.path.join(hf, "tokenizer_config.json")))
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in tok_cfg
    assert tok_cfg["model_max_length"] == positions
    assert json.load(open(os.path.join(hf, "config.json")))["max_position_embeddings"] == positions
    remote = fmt == "modernalbert"
    r = _as_hub_user(tmp_path, _HUB_USER, hf, "1" if remote else "0", str(tmp_path / "user.json"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Do you wish to run the custom code" not in out and "trust_remote_code" not in out, out[-3000:]
    assert "to instantiate a model of type" not in out, out[-3000:]
    if remote:  # our base class takes the checkpoint's heads as expected leftovers (the stock ones list them)
        assert "LOAD REPORT" not in out and "UNEXPECTED" not in out and "MISSING" not in out, out[-3000:]
    res = json.loads((tmp_path / "user.json").read_text())
    assert res["max_length"] == res["plain_max_length"] == positions
    assert res["untruncated"] >= 700 and res["truncated"] == positions and res["same_ids"]
    assert res["hidden"] == [1, positions, 64] and res["finite"]
    assert (
        res["model"]
        == {"modernalbert": "ModernAlbertModel", "modernbert": "ModernBertModel", "albert": "AlbertModel"}[fmt]
    )
    assert res["fill"] == 5
    if remote:
        # transformers 5's AutoTokenizer reads config.json through AutoConfig before tokenizer_config.json, and a
        # custom-code config asks for trust_remote_code: without it (stdin closed) the answer is no, and the
        # tokenizer still loads, the same one (the prompt is printed; docs/tools.md says to pass the flag)
        r = _as_hub_user(tmp_path, _BARE_TOKENIZER, hf, str(tmp_path / "bare.json"), timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((tmp_path / "bare.json").read_text())["max_length"] == positions


def test_native_config_json_has_a_model_type_and_older_ones_still_load(native_dir, tmp_path):
    from transformers import AutoConfig, PretrainedConfig

    from model.native_format import load_native

    doc = json.load(open(os.path.join(native_dir, "config.json")))
    assert doc["model_type"] == "modernalbert" and doc["format"] == "modernalbert-native"
    assert PretrainedConfig.get_config_dict(native_dir)[0]["model_type"] == "modernalbert"
    with pytest.raises(ValueError, match="model type `modernalbert`"):  # named, not "Should have a model_type key"
        AutoConfig.from_pretrained(native_dir)
    old = tmp_path / "old"
    shutil.copytree(native_dir, old)
    del doc["model_type"]  # a directory written before the field
    (old / "config.json").write_text(json.dumps(doc))
    (new, _), (before, old_doc) = load_native(native_dir), load_native(str(old))
    assert "model_type" not in old_doc and new.cfg == before.cfg
    for k, v in new.state_dict().items():
        assert torch.equal(v, before.state_dict()[k]), k


def test_max_length_defaults_to_the_models_positions_and_only_rope_declares_more():
    from model.config import BERT_BLOCK, preset
    from model.native_format import InputError
    from tools.convert_to_hf import declared_lengths

    rope, absolute = (
        preset("tiny", max_position_embeddings=384),
        preset("tiny", **BERT_BLOCK, max_position_embeddings=320),
    )
    assert declared_lengths(rope) == (384, 384) and declared_lengths(absolute) == (320, 320)
    # a RoPE model declares the length it was trained at when that is longer; a table keeps its rows
    assert declared_lengths(rope, None, 1024) == (1024, 1024) and declared_lengths(rope, None, 128) == (384, 384)
    assert declared_lengths(absolute, None, 1024) == (320, 320)
    # (config.json's max_position_embeddings, the tokenizer's model_max_length): a table's rows stay
    assert declared_lengths(rope, 1024) == (1024, 1024) and declared_lengths(absolute, 128) == (320, 128)
    with pytest.raises(InputError, match="--max-length 512: allowed: 1 to 320"):
        declared_lengths(absolute, 512)
