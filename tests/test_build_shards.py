"""data_prep/build_shards.py on the shipped corpus: round trip, determinism, resume, tokenizers."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time


from conftest import REPO, TINY_BUILD, run_cli
from data_prep.build_shards import JOURNAL_FILE, BuildConfig, _unit_hash, build
from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.shards import ShardIndex, ShardReader
from data_prep.tokenizer import Tokenizer


def _dir_files(path: str) -> dict[str, bytes]:
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


def _recover_documents(data_dir: str) -> dict[int, list[int]]:
    """Document id → its tokens (specials stripped, pieces joined), read back from every shard."""
    index = ShardIndex.load(data_dir)
    cls, sep = index.special_ids["cls"], index.special_ids["sep"]
    docs: dict[int, list[int]] = {}
    for split, entries in index.splits.items():
        for e in entries:
            reader = ShardReader(index.shard_path(e), e.sha256, e.samples)
            for i in range(len(reader)):
                ids, lens, doc_ids = reader.sample(i)
                assert len(ids) <= index.seq_len and lens.sum() == len(ids)
                off = 0
                for n, d in zip(lens.tolist(), doc_ids.tolist()):
                    seg = ids[off : off + n].tolist()
                    assert seg[0] == cls and seg[-1] == sep
                    docs.setdefault(d, []).extend(seg[1:-1])
                    off += n
    return docs


def test_index_matches_the_shards(shards_dir):
    index = ShardIndex.load(shards_dir)
    raw = index.raw
    assert len(index.splits["train"]) >= 4 and len(index.splits["val"]) >= 1
    for split, entries in index.splits.items():
        for e in entries:
            reader = ShardReader(index.shard_path(e), e.sha256, e.samples)
            assert len(reader) == e.samples
            assert sum(len(reader.sample(i)[0]) for i in range(len(reader))) == e.tokens
        assert raw["splits"][split]["samples"] == sum(e.samples for e in entries)
    st = raw["stats"]
    assert st["documents"] == 3574 == sum(f["documents"] for f in st["input_files"])
    assert raw["splits"]["train"]["documents"] + raw["splits"]["val"]["documents"] == 3574
    assert raw["tokenizer"]["vocab_size"] == 4000 and raw["token_dtype"] == "uint16"
    assert raw["tokenizer"]["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert raw["build_args"]["seq_len"] == 128 and raw["build_args"]["val_fraction"] == 0.05
    assert not os.path.exists(os.path.join(shards_dir, JOURNAL_FILE))


def test_every_document_is_recoverable_in_order(shards_dir):
    tok = Tokenizer(os.path.join(shards_dir, "tokenizer.model"))
    reader = CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR]))
    expected = {i: ids for i, ids in enumerate(tok.encode(list(reader)))}
    recovered = _recover_documents(shards_dir)
    assert recovered == expected
    # the split is by document: each document lives in exactly one split, chosen by the seeded hash
    index = ShardIndex.load(shards_dir)
    val_docs = set()
    for e in index.splits["val"]:
        r = ShardReader(index.shard_path(e))
        for i in range(len(r)):
            val_docs.update(r.sample(i)[2].tolist())
    assert val_docs == {i for i in expected if _unit_hash(0, i) < 0.05}


def test_two_builds_are_byte_identical_whatever_the_worker_count(shards_dir, tmp_path):
    out = str(tmp_path / "again")
    build(BuildConfig(**TINY_BUILD), out, workers=2, progress=False)
    assert _dir_files(out) == _dir_files(shards_dir)


def test_a_killed_build_resumes_to_the_same_bytes(shards_dir, tmp_path):
    # Many small shards so the kill lands midway; reuse the session's tokenizer to skip training.
    tok = os.path.join(shards_dir, "tokenizer.model")
    args = [
        "data_prep/build_shards.py",
        "--out",
        None,
        "--tokenizer",
        tok,
        "--seq-len",
        "128",
        "--shard-mb",
        "0.02",
        "--workers",
        "1",
        "--no-progress",
    ]
    ref = str(tmp_path / "ref")
    args[2] = ref
    assert run_cli(args).returncode == 0

    out = str(tmp_path / "killed")
    args[2] = out
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    journal = os.path.join(out, JOURNAL_FILE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(journal) and open(journal).read().count('"type": "shard"') >= 20:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "index.json")), "the build finished before it was killed"

    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    kept = int(rerun.stdout.split("built ")[1].split("kept ")[1].split()[0])
    assert kept >= 20
    assert _dir_files(out) == _dir_files(ref)


def test_a_corrupted_shard_is_rebuilt_on_rerun(tmp_path, shards_dir):
    out = str(tmp_path / "b")
    cfg = BuildConfig(**{**TINY_BUILD, "tokenizer": os.path.join(shards_dir, "tokenizer.model")})
    build(cfg, out, workers=0, progress=False)
    good = _dir_files(out)
    with open(os.path.join(out, "train-000001.tar"), "r+b") as f:
        f.seek(2000)
        f.write(b"garbage")
    build(cfg, out, workers=0, progress=False)
    assert _dir_files(out) == good


def test_reused_sentencepiece_tokenizer_gives_the_same_shards(shards_dir, tmp_path):
    out = str(tmp_path / "reuse")
    cfg = BuildConfig(**{**TINY_BUILD, "tokenizer": os.path.join(shards_dir, "tokenizer.model")})
    index = build(cfg, out, workers=0, progress=False)
    assert index["tokenizer"]["source"].endswith("tokenizer.model")
    ref = ShardIndex.load(shards_dir)
    assert [e.sha256 for e in ShardIndex.load(out).splits["train"]] == [e.sha256 for e in ref.splits["train"]]


def test_hf_tokenizer_json_is_used_with_its_special_tokens(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    docs = list(CorpusReader(resolve_inputs([os.path.join(SAMPLE_CORPUS_DIR, "devils_dictionary.txt")])))
    hf.train_from_iterator(
        docs, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    path = str(tmp_path / "tokenizer.json")
    hf.save(path)
    out = str(tmp_path / "hf")
    index = build(
        BuildConfig(
            inputs=[os.path.join(SAMPLE_CORPUS_DIR, "devils_dictionary.txt")],
            tokenizer=path,
            seq_len=64,
            val_fraction=0.0,
        ),
        out,
        workers=0,
        progress=False,
    )
    assert index["tokenizer"]["kind"] == "hf" and index["tokenizer"]["file"] == "tokenizer.json"
    assert index["tokenizer"]["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    recovered = _recover_documents(out)
    assert recovered[0] == hf.encode(docs[0], add_special_tokens=False).ids
    assert len(recovered) == len(docs)


def test_bpe_tokenizer_option(tmp_path):
    out = str(tmp_path / "bpe")
    index = build(
        BuildConfig(
            inputs=[os.path.join(SAMPLE_CORPUS_DIR, "devils_dictionary.txt")],
            tokenizer_type="bpe",
            vocab_size=1000,
            seq_len=64,
            val_fraction=0.0,
        ),
        out,
        workers=0,
        progress=False,
    )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    assert sp.GetPieceSize() == 1000 and index["tokenizer"]["vocab_size"] == 1000
    assert index["build_args"]["tokenizer_type"] == "bpe"


def test_all_input_formats_give_the_same_documents(tmp_path):
    """Plain text, JSONL, JSONL.gz, JSONL.zst and Parquet holding the same documents → same shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = list(CorpusReader(resolve_inputs([os.path.join(SAMPLE_CORPUS_DIR, "devils_dictionary.txt")])))[:300]
    jsonl = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)).encode()
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "c.jsonl").write_bytes(jsonl)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    hashes = set()
    for name in ("c.txt", "c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.parquet"):
        index = build(
            BuildConfig(inputs=[str(tmp_path / name)], vocab_size=800, seq_len=64, val_fraction=0.0),
            str(tmp_path / f"out-{name}"),
            workers=0,
            progress=False,
        )
        assert index["stats"]["documents"] == 300
        hashes.add(tuple(s["sha256"] for s in index["splits"]["train"]["shards"]))
    assert len(hashes) == 1


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good text here\n\nbroken \xff\xfe bytes and more words\n\nthe end of it\n")
    index = build(
        BuildConfig(inputs=[str(p)], vocab_size=300, seq_len=16, val_fraction=0.0, tokenizer_sample_mb=1.0),
        str(tmp_path / "o"),
        workers=0,
        progress=False,
    )
    assert index["stats"]["replaced_undecodable_bytes"] == 2
    assert index["stats"]["documents"] == 3


def test_globs_and_directories_expand_sorted(tmp_path):
    for n in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / n).write_text('{"text": "x"}\n' if n.endswith("jsonl") else "x\n")
    (tmp_path / "notes.csv").write_text("ignored by directory expansion")
    assert [os.path.basename(f.path) for f in resolve_inputs([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt"]
    assert [os.path.basename(f.path) for f in resolve_inputs([str(tmp_path)])] == ["a.txt", "b.txt", "c.jsonl"]
    # explicit order is kept, duplicates dropped
    files = resolve_inputs([str(tmp_path / "c.jsonl"), str(tmp_path / "*.txt"), str(tmp_path / "a.txt")])
    assert [os.path.basename(f.path) for f in files] == ["c.jsonl", "a.txt", "b.txt"]


def test_help_works_from_the_repo_root():
    r = run_cli(["data_prep/build_shards.py", "--help"])
    assert r.returncode == 0 and "--seq-len" in r.stdout and "--tokenizer" in r.stdout


def test_summary_is_printed(tmp_path):
    r = run_cli(
        [
            "data_prep/build_shards.py",
            "--out",
            str(tmp_path / "s"),
            "--max-docs",
            "200",
            "--vocab-size",
            "500",
            "--seq-len",
            "64",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "shipped sample corpus" in r.stdout
    for word in ("documents  200", "tokens", "shards", "tokens/s"):
        assert word in r.stdout
    assert json.load(open(tmp_path / "s" / "index.json"))["stats"]["documents"] == 200


def test_a_tokenizer_smaller_than_asked_is_said_at_build_time(tmp_path):
    """--vocab-size 32768 (the default) on 0.3 MB of text: sentencepiece stops at the pieces the text holds."""
    out = tmp_path / "s"
    args = ["data_prep/build_shards.py", "--out", str(out), "--max-docs", "1000", "--tokenizer-sample-mb", "0.3"]
    r = run_cli([*args, "--workers", "0", "--no-progress"])
    assert r.returncode == 0, r.stderr
    size = json.load(open(out / "index.json"))["tokenizer"]["vocab_size"]
    assert 300 < size < 32768
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: tokenizer: {size:,} pieces, not the 32,768 of --vocab-size: its sample of the corpus (0.3 M chars) "
        f"is too small for that many; the shards use {size:,} (a larger --tokenizer-sample-mb than 0.3 gives more)"
    ], r.stdout
    assert "vocab 32768" not in r.stdout.split("...")[-1]  # only the request names the asked-for size
    assert f"  tokenizer  tokenizer.model, vocab {size:,} (32,768 asked: too little text for more)" in r.stdout
    again = run_cli([*args, "--workers", "0", "--no-progress"])  # a rerun keeps it, and its summary still says so
    assert again.returncode == 0 and "warning" not in again.stdout + again.stderr
    assert f"vocab {size:,} (32,768 asked" in again.stdout


_TINY_CLI = [
    "--seq-len",
    "128",
    "--vocab-size",
    "4000",
    "--shard-mb",
    "0.3",
    "--val-fraction",
    "0.05",
    "--tokenizer-sample-mb",
    "1.0",
    "--workers",
    "0",
    "--no-progress",
]  # conftest's TINY_BUILD


def test_a_three_task_slurm_array_build_is_byte_identical_to_one_machine(shards_dir, tmp_path):
    """slurm/build_shards.sh as the array's 3 tasks, all at once on one shared --out; the last writes the index."""
    out = tmp_path / "dist"
    procs = [
        subprocess.Popen(
            ["bash", "slurm/build_shards.sh", "--out", str(out), *_TINY_CLI],
            cwd=REPO,
            env={
                **os.environ,
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_ID": str(i + 1),
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_CPUS_PER_TASK": "0",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (2, 1, 0)
    ]  # task 0 last: the others wait for its tokenizer
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sum(log.count("done: ") for log in logs) >= 1  # someone finalised
    assert _dir_files(str(out)) == _dir_files(shards_dir)  # no bookkeeping left, every byte equal


def test_finalize_names_unfinished_tasks_and_joins_them_once_done(shards_dir, tmp_path, capsys):
    from data_prep.build_shards import main

    out = str(tmp_path / "dist")
    base = ["--out", out, *_TINY_CLI, "--num-tasks", "3"]
    assert main([*base, "--task-id", "0"]) == 0
    assert "waiting for 2 other task(s)" in capsys.readouterr().out
    assert main([*base, "--finalize"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --finalize: task(s) 1, 2 of 3 have not finished")
    assert main([*base, "--task-id", "1", "--seq-len", "64"]) == 2  # another build into the same --out
    err = capsys.readouterr().err
    assert "holds a different build" in err and "seq_len: 128 -> 64" in err
    for i in (1, 2):
        assert main([*base, "--task-id", str(i)]) == 0
    assert _dir_files(out) == _dir_files(shards_dir)
    assert main([*base, "--task-id", "3"]) == 2
    assert "--task-id=3: must be in [0, 3)" in capsys.readouterr().err
