"""tools/plot_run.py: the series read from a run's logs (resumed launches, fields a run did not log, torn lines),
the one-line errors, and the picture of a real 2-process run that was killed and resumed."""

from __future__ import annotations

import json
import os
import struct
import sys

import pytest

from conftest import pretrain, run_cli
from tools.plot_run import latest_records, main, parse_run


def _write(path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _record(step: int, launch: int, **extra) -> dict:
    # launch 1 or 2: the value says which launch wrote the step
    return {"step": step, "loss": 10.0 * launch + step / 100, "lr": 1e-3, "grad_norm": 0.5, **extra}


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_later_launch_replaces_the_steps_it_repeats(tmp_path):
    """Steps 1..10, then a launch resumed from step 5 writes 6..12 into the same log: 1..12, 6..12 the second's."""
    first = [_record(s, 1) for s in range(1, 11)]
    second = [_record(s, 2) for s in range(6, 13)]
    records, skipped = latest_records(json.dumps(r) for r in first + second)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["loss"] for r in records] == [10 + s / 100 for s in range(1, 6)] + [20 + s / 100 for s in range(6, 13)]
    assert skipped == 5  # the first launch's 6..10

    _write(tmp_path / "metrics.jsonl", first + second)
    _write(tmp_path / "eval.jsonl", [{"step": s, "val_loss": 9.0 - s / 10} for s in (0, 4, 8, 4, 8, 12)])
    run = parse_run(str(tmp_path))
    assert run.train_loss.steps == list(range(1, 13))
    assert run.train_loss.values[5:] == [20 + s / 100 for s in range(6, 13)]
    assert run.val_loss.steps == [0, 4, 8, 12] and run.skipped == 5 + 2


def test_fields_a_run_did_not_log_leave_empty_series_and_a_picture(tmp_path):
    """A run without MFU (CPU), without routing (no MoL) and with DeepSpeed's NaN for a missing grad norm:
    those series are empty, the rest are read, a torn last line is skipped, and the PNG is drawn."""
    pytest.importorskip("matplotlib")
    perf = {"tokens_per_s": 1000.0, "tflops_per_device": 0.1}
    records = [_record(1, 1, grad_norm=float("nan")), _record(2, 1, **perf), '{"step": 3, "loss": 1']
    _write(tmp_path / "metrics.jsonl", records)
    run = parse_run(str(tmp_path))
    assert run.train_loss.steps == [1, 2] and run.tokens_per_s.steps == [2] and run.grad_norm.steps == [2]
    assert run.mfu.steps == [] and run.expert_load == {} and run.router_entropy == {} and run.val_loss.steps == []
    assert run.skipped == 1
    assert main([str(tmp_path)]) == 0
    assert _png_size(tmp_path / "plot.png") == (1200, 1300)


def test_expert_load_is_max_over_mean_and_entropy_per_layer(tmp_path):
    routing = {
        "tokens_per_expert": {"layer2.ffn": [30, 10, 10, 10], "layer3.ffn": [15, 15, 15, 15]},
        "router_entropy": {"layer2.ffn": 1.2, "layer3.ffn": 1.3},
    }
    _write(tmp_path / "metrics.jsonl", [_record(1, 1), _record(2, 1, **routing)])
    run = parse_run(str(tmp_path))
    assert {k: (s.steps, s.values) for k, s in run.expert_load.items()} == {
        "layer2.ffn": ([2], [2.0]),
        "layer3.ffn": ([2], [1.0]),
    }
    assert run.router_entropy["layer3.ffn"].values == [1.3] and run.num_experts == {"layer2.ffn": 4, "layer3.ffn": 4}


def test_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    r = run_cli(["tools/plot_run.py", str(tmp_path)])  # as users run it: a directory without metrics
    assert r.returncode == 2 and "no training records" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    _write(tmp_path / "metrics.jsonl", [_record(1, 1)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err
    assert not os.path.exists(tmp_path / "plot.png")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_and_resumed_two_process_run(shards_dir, tmp_path):
    """2 ranks, killed after step 4 (checkpoint at 3), relaunched to step 6: its picture has steps 1..6 once,
    the relaunch's step 4, the routing series on the log steps, and val loss at steps 0, 3 and 6."""
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    args = [
        f"data.dir={shards_dir}",
        f"run_dir={run_dir}",
        "train.steps=6",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "train.log_every=2",
        "checkpoint.every=3",
        "eval.every=3",
        "eval.max_batches=2",
        "schedule.warmup_steps=3",
    ]
    killed = pretrain(2, args, env={"MODERNALBERT_KILL_AFTER_STEP": "4"})
    assert killed.returncode != 0
    with open(run_dir / "metrics.jsonl") as f:
        first_step4 = [json.loads(line) for line in f][3]
    resumed = pretrain(2, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = tmp_path / "picture.png"
    assert main([str(run_dir), "--out", str(out)]) == 0  # in this process: test_errors_… runs the script itself
    assert _png_size(out) == (1200, 1300) and os.path.getsize(out) > 30_000

    run = parse_run(str(run_dir))
    assert run.train_loss.steps == run.lr.steps == run.grad_norm.steps == [1, 2, 3, 4, 5, 6]
    with open(run_dir / "metrics.superseded.jsonl") as f:
        assert [json.loads(line) for line in f] == [first_step4]  # the killed launch's step 4: not drawn
    assert run.tokens_per_s.steps == [2, 4, 6] and run.mfu.steps == []  # no MFU on CPU
    assert sorted(run.expert_load) == sorted(run.router_entropy) == ["layer2.ffn", "layer3.ffn"]
    for series in (*run.expert_load.values(), *run.router_entropy.values()):
        assert series.steps == [2, 4, 6]
    assert all(1.0 <= v for s in run.expert_load.values() for v in s.values)
    assert run.val_loss.steps == [0, 3, 6]
