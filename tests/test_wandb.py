"""The W&B logger for real: a few steps with log.wandb=offline, the offline run read back from its
.wandb file (metrics present), and a requeued run that continues the same run id."""

from __future__ import annotations

import glob
import json
import os
import struct

import pytest

from conftest import pretrain

pytest.importorskip("wandb", reason="wandb is a dev requirement (requirements-dev.txt)")
pytestmark = [pytest.mark.slow]


def read_wandb_log(path: str) -> list:
    """The protobuf records of a .wandb file (W&B's LevelDB-style log: 7-byte header, 32 KiB blocks,
    each record chunk = crc32 (4) + length (2) + type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            records.append(rec)
    return records


def _history(records) -> list[dict]:
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            )
    return rows


def test_offline_run_holds_the_metrics_and_a_requeued_run_continues_its_id(shards_dir, tmp_path):
    args = [
        f"data.dir={shards_dir}",
        f"run_dir={tmp_path}",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "eval.every=0",
        "train.log_every=1",
        "log.wandb=offline",
        "checkpoint.every=3",
    ]
    env = {"WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    first = pretrain(1, [*args, "train.steps=3"], env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = pretrain(1, [*args, "train.steps=5"], env=env)  # as a requeued job: resumes, same W&B run
    assert second.returncode == 0, second.stderr[-3000:]
    run_id = (tmp_path / "wandb_id").read_text().strip()
    logs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(logs) == 2 and all(os.path.basename(p) == f"run-{run_id}.wandb" for p in logs)
    metrics = {json.loads(line)["step"]: json.loads(line) for line in open(tmp_path / "metrics.jsonl")}
    for path, steps in zip(logs, ([1, 2, 3], [4, 5])):
        records = read_wandb_log(path)
        runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert runs and runs[0].run_id == run_id and runs[0].project == "modernalbert"
        rows = [r for r in _history(records) if "loss" in r]
        assert [r["step"] for r in rows] == steps
        for r in rows:
            assert r["loss"] == pytest.approx(metrics[r["step"]]["loss"])
            assert "grad_norm" in r and "lr" in r and "tokens_per_s" in r
            assert r["router_entropy/layer2.ffn"] == pytest.approx(metrics[r["step"]]["router_entropy"]["layer2.ffn"])
