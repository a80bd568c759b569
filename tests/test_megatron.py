"""Megatron-LM indexed datasets in and out: ``build_shards.py --megatron`` reads them, and
``tools/shards_to_megatron.py`` writes them, both through megatron-core (the requirements-megatron.txt
extra); the datasets here are made and read with megatron-core's own IndexedDatasetBuilder/IndexedDataset."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest

from conftest import TINY_BUILD, run_cli, wrapped_pretrain
from data_prep.build_shards import BuildConfig, build, main as build_main
from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.megatron_io import INSTALL
from data_prep.shards import ShardIndex, ShardReader, iter_documents
from data_prep.tokenizer import Tokenizer
from tools.shards_to_megatron import main as export_main

with warnings.catch_warnings():  # megatron.core warns on CPU that Transformer Engine and Apex are missing
    warnings.simplefilter("ignore")
    mcore = pytest.importorskip("megatron.core.datasets.indexed_dataset", reason=INSTALL)

# the build options of conftest's shards_dir, with the shards_dir tokenizer given instead of trained
_OPTS = {k: v for k, v in TINY_BUILD.items() if k not in ("inputs", "vocab_size", "tokenizer_sample_mb")}


def _write(prefix: str, docs: list[np.ndarray], vocab_size: int) -> None:
    """A dataset as Megatron-LM's preprocess_data.py writes one: a document of several sequences
    ("sentences") where it is long enough, the dtype chosen for the vocabulary."""
    builder = mcore.IndexedDatasetBuilder(prefix + ".bin", dtype=mcore.DType.optimal_dtype(vocab_size))
    for d in docs:
        cuts = [0, len(d) // 3, 2 * len(d) // 3, len(d)] if len(d) >= 3 else [0, len(d)]
        builder.add_document(d, [b - a for a, b in zip(cuts, cuts[1:])])
    builder.finalize(prefix + ".idx")


def _read(prefix: str) -> list[np.ndarray]:
    """Every document of a dataset, its sequences joined, read with megatron-core's IndexedDataset."""
    ds = mcore.IndexedDataset(prefix)
    bounds = ds.document_indices
    return [
        np.concatenate([np.asarray(ds[s]) for s in range(bounds[d], bounds[d + 1])] or [np.zeros(0, np.int64)])
        for d in range(len(bounds) - 1)
    ]


def _documents(data_dir: str) -> dict[int, list[int]]:
    index = ShardIndex.load(data_dir)
    return {i: t.tolist() for split in index.splits for i, t in iter_documents(index, split)}


def _streams(data_dir: str) -> dict[str, np.ndarray]:
    """Each split's samples back to back, shard after shard."""
    index = ShardIndex.load(data_dir)
    out = {}
    for split, entries in index.splits.items():
        parts = []
        for e in entries:
            r = ShardReader(index.shard_path(e), e.sha256, e.samples)
            parts += [r.sample(i)[0] for i in range(len(r))]
        out[split] = np.concatenate(parts)
    return out


def _tars(path: str) -> dict[str, bytes]:
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path)) if n.endswith(".tar")}


@pytest.fixture(scope="module")
def corpus(shards_dir, tmp_path_factory):
    """The shipped corpus tokenized with the shards_dir tokenizer, as a Megatron dataset: (prefix, documents, tok)."""
    tok_path = os.path.join(shards_dir, "tokenizer.model")
    tok = Tokenizer(tok_path)
    docs = [np.asarray(ids, np.int64) for ids in tok.encode(list(CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR]))))]
    prefix = str(tmp_path_factory.mktemp("megatron") / "corpus_text_document")
    _write(prefix, docs, tok.vocab_size)
    return prefix, docs, tok_path


@pytest.fixture(scope="module")
def megatron_shards(corpus, tmp_path_factory) -> str:
    prefix, _, tok_path = corpus
    out = str(tmp_path_factory.mktemp("mshards"))
    build(BuildConfig(inputs=[prefix], megatron=True, tokenizer=tok_path, **_OPTS), out, workers=2, progress=False)
    return out


def test_a_megatron_dataset_becomes_shards_by_the_text_rules(corpus, megatron_shards, shards_dir):
    prefix, docs, tok_path = corpus
    assert [d.tolist() for d in _read(prefix)] == [d.tolist() for d in docs]  # what megatron-core reads back
    ds = mcore.IndexedDataset(prefix)  # (arrays it hands out are views of its maps: keep it while they live)
    assert len(ds.sequence_lengths) > len(docs)  # several sequences ("sentences") per document
    # every document comes back whole, under its position as id, its ids as they were
    assert _documents(megatron_shards) == {i: d.tolist() for i, d in enumerate(docs)}
    # the same tokens, split and packing as the text build of the same corpus: each split's sample stream
    # is the text build's (shard cuts differ: --shard-mb counts token bytes here, text there)
    text, mega = _streams(shards_dir), _streams(megatron_shards)
    assert text.keys() == mega.keys() and all(np.array_equal(text[s], mega[s]) for s in text)
    index, ref = json.load(open(os.path.join(megatron_shards, "index.json"))), ShardIndex.load(shards_dir).raw
    assert (
        index["tokenizer"]["sha256"] == ref["tokenizer"]["sha256"] and index["tokenizer"]["file"] == "tokenizer.model"
    )
    assert os.path.isfile(os.path.join(megatron_shards, "tokenizer.model"))
    assert index["build_args"]["megatron"] is True and "megatron" not in ref["build_args"]
    assert index["stats"]["input_files"] == [
        {
            "path": prefix,
            "format": "megatron",
            "compression": None,
            "bytes": os.path.getsize(prefix + ".bin") + os.path.getsize(prefix + ".idx"),
            "documents": len(docs),
        }
    ]
    for key in ("documents", "split_documents", "content_tokens", "tokens_with_specials", "samples"):
        if key != "samples":
            assert index["stats"][key] == ref["stats"][key], key
    assert index["stats"]["special_tokens_in_documents"] == {}
    for split in ("train", "val"):
        assert index["splits"][split]["documents"] == ref["splits"][split]["documents"]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_train_on_shards_from_a_megatron_dataset(megatron_shards, tmp_path):
    run_dir = str(tmp_path / "run")
    r = wrapped_pretrain(
        2,
        [
            "--config",
            "pretrain/configs/tiny.yaml",
            f"data.dir={megatron_shards}",
            f"run_dir={run_dir}",
            "train.steps=3",
            "train.micro_batch_size=8",
            "train.global_batch_tokens=2048",
            "checkpoint.every=3",
            "eval.every=0",
            "schedule.warmup_steps=1",
            "train.log_every=1",
        ],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses


def test_shards_to_megatron_and_back_gives_the_same_shards(corpus, megatron_shards, tmp_path):
    prefix, docs, tok_path = corpus
    out_prefix = str(tmp_path / "out" / "roundtrip")
    assert export_main([megatron_shards, "--out", out_prefix]) == 0
    # one Megatron document (of one sequence) per original document, specials stripped, in id order
    assert [d.tolist() for d in _read(out_prefix)] == [d.tolist() for d in docs]
    ds = mcore.IndexedDataset(out_prefix)
    assert ds.sequence_lengths.tolist() == [len(d) for d in docs]
    assert ds.index.dtype == np.uint16  # preprocess_data.py's choice at vocab 4000
    again = str(tmp_path / "again")
    build(
        BuildConfig(inputs=[out_prefix], megatron=True, tokenizer=tok_path, **_OPTS), again, workers=0, progress=False
    )
    assert _tars(again) == _tars(megatron_shards) and len(_tars(again)) >= 4
    a, b = (json.load(open(os.path.join(d, "index.json"))) for d in (again, megatron_shards))
    for idx in (a, b):  # what names the inputs differs; everything else is the same
        del idx["fingerprint"], idx["build_args"]["inputs"], idx["stats"]["input_files"]
    assert a == b
    assert export_main([again, "--out", str(tmp_path / "twice")]) == 0
    for ext in (".bin", ".idx"):
        assert open(out_prefix + ext, "rb").read() == open(str(tmp_path / "twice") + ext, "rb").read()


def test_empty_documents_and_specials_survive_the_round_trip(corpus, tmp_path):
    """Documents without tokens are dropped from the shards but written back as empty documents, so
    ids stay positions (also at the start and the end); an end-of-document id inside is kept as it is."""
    _, docs, tok_path = corpus
    sep = Tokenizer(tok_path).special_ids.sep
    empty = np.zeros(0, np.int64)
    small = [empty, *docs[:40], empty, np.append(docs[40], sep), *docs[41:80], empty, empty]
    src = str(tmp_path / "small")
    _write(src, small, 4000)
    opts = dict(seq_len=64, shard_mb=0.004, val_fraction=0.1)
    first = str(tmp_path / "s1")
    index = build(
        BuildConfig(inputs=[src], megatron=True, tokenizer=tok_path, **opts), first, workers=0, progress=False
    )
    assert index["stats"]["documents"] == len(small) and index["stats"]["tokenless_documents_skipped"] == 4
    assert index["stats"]["special_tokens_in_documents"] == {"sep": 1}
    assert len(index["splits"]["val"]["shards"]) >= 1 and len(index["splits"]["train"]["shards"]) >= 2
    back = str(tmp_path / "back")
    assert export_main([first, "--out", back]) == 0
    assert [d.tolist() for d in _read(back)] == [d.tolist() for d in small]
    second = str(tmp_path / "s2")
    build(
        BuildConfig(inputs=[back + ".bin"], megatron=True, tokenizer=tok_path, **opts),
        second,
        workers=0,
        progress=False,
    )
    assert _tars(second) == _tars(first)
    # one split only: its documents, renumbered, nothing filled in
    assert export_main([first, "--out", str(tmp_path / "val"), "--split", "val"]) == 0
    val = _documents(first)
    val_ids = [i for i, _ in iter_documents(ShardIndex.load(first), "val")]
    assert [d.tolist() for d in _read(str(tmp_path / "val"))] == [val[i] for i in val_ids]


def test_a_rerun_keeps_the_finished_shards_and_rebuilds_a_corrupt_one(corpus, tmp_path, capsys):
    _, docs, tok_path = corpus
    src = str(tmp_path / "part")
    _write(src, docs[:300], 4000)
    cfg = BuildConfig(inputs=[src], megatron=True, tokenizer=tok_path, seq_len=64, shard_mb=0.01, val_fraction=0.1)
    out = str(tmp_path / "s")
    build(cfg, out, workers=0, progress=False)
    good = _tars(out)
    assert len(good) >= 4
    with open(os.path.join(out, "train-000001.tar"), "r+b") as f:
        f.seek(2000)
        f.write(b"garbage")
    capsys.readouterr()
    build(cfg, out, workers=0, progress=False)
    assert f"(built 1, kept {len(good) - 1} verified from an earlier run)" in capsys.readouterr().out
    assert _tars(out) == good


@pytest.mark.slow  # a fresh interpreter imports megatron-core
def test_a_text_build_exports_its_documents(corpus, shards_dir, tmp_path):
    _, docs, _ = corpus
    out = str(tmp_path / "text_build")
    r = run_cli(["tools/shards_to_megatron.py", shards_dir, "--out", out])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "3,574 documents" in r.stdout and "--megatron --tokenizer" in r.stdout
    assert [d.tolist() for d in _read(out)] == [d.tolist() for d in docs]


def _copy(prefix: str, dest: str) -> str:
    for ext in (".bin", ".idx"):
        shutil.copyfile(prefix + ext, dest + ext)
    return dest


def _refused(capsys, argv: list[str], out: str, *words: str) -> None:
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    assert not os.path.exists(out), "nothing is written on a refused build"


def test_bad_datasets_and_tokenizers_are_refused_in_one_line(corpus, tmp_path, capsys, monkeypatch):
    prefix, docs, tok_path = corpus
    out = str(tmp_path / "out")
    args = ["--megatron", "--tokenizer", tok_path, "--out", out, "--workers", "0", "--no-progress"]

    bad = _copy(prefix, str(tmp_path / "bad_header"))
    with open(bad + ".idx", "r+b") as f:
        f.write(b"NOTMMIDX")
    _refused(capsys, [bad, *args], out, "bad_header.idx", "no MMIDIDX header")

    cut = _copy(prefix, str(tmp_path / "cut_idx"))
    with open(cut + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(cut + ".idx") - 100)
    _refused(capsys, [cut, *args], out, "cut_idx.idx", "its header counts")

    for name, change in (("long_bin", 2), ("short_bin", -2)):
        wrong = _copy(prefix, str(tmp_path / name))
        with open(wrong + ".bin", "r+b") as f:
            f.truncate(os.path.getsize(wrong + ".bin") + change)
        _refused(capsys, [wrong, *args], out, f"{name}.bin", "bytes, but")

    _refused(capsys, [str(tmp_path / "nothing"), *args], out, "no Megatron dataset")

    # a tokenizer whose vocabulary lacks ids the dataset holds (given as a HuggingFace tokenizer directory)
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    hf = HFTokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])}, unk_token="[UNK]"
        )
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf_dir = tmp_path / "small_tokenizer"
    hf_dir.mkdir()
    hf.save(str(hf_dir / "tokenizer.json"))
    small_vocab = [prefix, "--megatron", "--tokenizer", str(hf_dir), "--out", out, "--workers", "0"]
    _refused(capsys, small_vocab, out, "small_tokenizer/tokenizer.json", "vocabulary (6 tokens) has no id")

    _refused(capsys, [prefix, "--megatron", "--out", out], out, "--tokenizer=None", "the tokenizer it was made with")

    monkeypatch.setitem(sys.modules, "megatron.core.datasets", None)  # as if megatron-core were not installed
    _refused(capsys, [prefix, *args], out, "need megatron-core", INSTALL)


@pytest.mark.slow  # a fresh interpreter imports megatron-core
def test_the_cli_refuses_a_corrupt_index_in_one_line(corpus, tmp_path):
    """In a fresh process: megatron-core's import warnings and its reader's own failure stay quiet."""
    prefix, _, tok_path = corpus
    bad = _copy(prefix, str(tmp_path / "bad"))
    with open(bad + ".idx", "r+b") as f:
        f.seek(9)
        f.write(b"\x07")  # index version 7
    out = str(tmp_path / "out")
    r = run_cli(["data_prep/build_shards.py", bad, "--megatron", "--tokenizer", tok_path, "--out", out])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: input") and r.stderr.count("\n") == 1 and "version 7" in r.stderr, r.stderr
    assert not os.path.exists(out)


def test_export_errors_are_one_line_and_write_nothing(megatron_shards, tmp_path, capsys):
    assert export_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o" / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such directory" in err
    assert not os.path.exists(tmp_path / "o")
    broken = str(tmp_path / "broken")
    shutil.copytree(megatron_shards, broken)
    with open(os.path.join(broken, "train-000002.tar"), "r+b") as f:
        f.seek(3000)
        f.write(b"garbage")
    out = tmp_path / "o2"
    assert export_main([broken, "--out", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shard train-000002.tar: corrupt") and err.count("\n") == 1, err
    assert not os.path.exists(out)
