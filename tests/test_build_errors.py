"""Bad input to data_prep/build_shards.py: a one-line error naming the culprit, exit 2, nothing destroyed."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from conftest import run_cli
from data_prep.build_shards import main


def _fails(capsys, argv: list[str]) -> str:
    assert main(argv + ["--workers", "0", "--no-progress", "--vocab-size", "300"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _snapshot(path) -> dict:
    return {n: (path / n).read_bytes() for n in sorted(os.listdir(path))}


def test_missing_path(capsys, tmp_path):
    err = _fails(capsys, [str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert "nope.jsonl" in err and "no such file" in err
    assert not (tmp_path / "o").exists()


def test_glob_matching_nothing(capsys, tmp_path):
    err = _fails(capsys, [str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "o")])
    assert "matches no file" in err


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    err = _fails(capsys, [str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")])
    assert "no documents" in err


@pytest.mark.parametrize("name,what", [("broken.jsonl.gz", "gzip"), ("broken.jsonl.zst", "zstd")])
def test_unreadable_compressed_file(capsys, tmp_path, name, what):
    (tmp_path / name).write_bytes(b"this is not compressed data at all" * 10)
    err = _fails(capsys, [str(tmp_path / name), "--out", str(tmp_path / "o")])
    assert name in err and f"cannot read {what} data" in err


def test_truncated_gzip(capsys, tmp_path):
    data = gzip.compress(b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(5000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    err = _fails(capsys, [str(tmp_path / "cut.jsonl.gz"), "--out", str(tmp_path / "o")])
    assert "cut.jsonl.gz" in err and "gzip" in err


def test_missing_json_field(capsys, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"body": "wrong field", "id": 2}\n')
    err = _fails(capsys, [str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o")])
    assert "c.jsonl" in err and "line 2" in err and "no field 'text'" in err and "body, id" in err


def test_invalid_json_line(capsys, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    err = _fails(capsys, [str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o")])
    assert "c.jsonl" in err and "line 2" in err and "invalid JSON" in err


def test_missing_parquet_column(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "c.parquet")
    err = _fails(capsys, [str(tmp_path / "c.parquet"), "--out", str(tmp_path / "o")])
    assert "c.parquet" in err and "no column 'text'" in err


def test_unsupported_file_type(capsys, tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n")
    err = _fails(capsys, [str(tmp_path / "c.csv"), "--out", str(tmp_path / "o")])
    assert "c.csv" in err and "unsupported file type" in err


def test_bad_argument_names_the_flag(capsys, tmp_path):
    err = _fails(capsys, ["--seq-len", "4", "--out", str(tmp_path / "o")])
    assert "--seq-len=4: must be at least 8" in err
    err = _fails(capsys, ["--val-fraction", "1.5", "--out", str(tmp_path / "o")])
    assert "--val-fraction=1.5: must be in [0, 1)" in err


def test_bad_tokenizer_file(capsys, tmp_path):
    (tmp_path / "tok.model").write_bytes(b"not a model")
    err = _fails(capsys, ["--tokenizer", str(tmp_path / "tok.model"), "--out", str(tmp_path / "o")])
    assert "tok.model" in err and "sentencepiece" in err


def test_output_dir_with_a_different_build_is_left_alone(capsys, tmp_path, shards_dir):
    import shutil

    out = tmp_path / "existing"
    shutil.copytree(shards_dir, out)
    before = _snapshot(out)
    err = _fails(capsys, ["--out", str(out), "--seq-len", "256"])
    assert "holds a different build" in err and "seq_len: 128 -> 256" in err
    assert _snapshot(out) == before


def test_output_dir_with_unrelated_files_is_left_alone(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    err = _fails(capsys, ["--out", str(out)])
    assert "not empty" in err
    assert _snapshot(out) == {"thesis.tex": b"precious"}


def test_cli_exit_code_and_single_line(tmp_path):
    r = run_cli(["data_prep/build_shards.py", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: input '{tmp_path / 'missing.txt'}': no such file or directory"
