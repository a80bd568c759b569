"""Your own corpus, end to end, without surprises (issue 46): shards built with build_shards.py's defaults
(--seq-len 1024) and the `tiny` preset (set for samples of 256), a tokenizer smaller than asked for, a val
split smaller than a batch, a run that ends inside its warm-up, and the resolved config printed."""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import run_cli, wrapped_pretrain

TINY = "pretrain/configs/tiny.yaml"


def _overrides(error: str) -> list[str]:
    """The overrides an error line proposes ("pass a=1 (…) or b=2 (…)")."""
    return re.findall(r"(?:pass|or) ([a-z_.]+=\d+) \(", error)


@pytest.mark.parametrize(
    "tokens, micro, seq_len, world",
    [(8192, 16, 1024, 2), (8192, 16, 1024, 1), (8192, 16, 512, 3), (1048576, 16, 1024, 1024), (5000, 7, 300, 4)],
)
def test_a_batch_that_does_not_fit_names_overrides_that_do(tokens, micro, seq_len, world):
    from config_check import ConfigError
    from pretrain.config import load_config

    cfg = load_config(TINY, [f"train.global_batch_tokens={tokens}", f"train.micro_batch_size={micro}"])
    with pytest.raises(ConfigError) as e:
        cfg.accumulation_steps(seq_len, world)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"train.global_batch_tokens={tokens}: at seq_len {seq_len}")
    proposed = _overrides(message)
    assert proposed and proposed[-1].startswith("train.global_batch_tokens="), message
    samples = -(-tokens // seq_len)
    for override in proposed:
        fixed = load_config(TINY, [f"train.global_batch_tokens={tokens}", f"train.micro_batch_size={micro}", override])
        accum = fixed.accumulation_steps(seq_len, world)  # fits now
        if override.startswith("train.micro_batch_size="):  # the same global batch, smaller micro-batches
            assert accum * fixed.train.micro_batch_size * world == samples
            assert fixed.train.micro_batch_size < micro
        else:  # the same micro-batches, the global batch rounded up
            assert fixed.train.micro_batch_size == micro and fixed.train.global_batch_tokens >= tokens


@pytest.fixture(scope="module")
def own_shards(shards_dir, tmp_path_factory) -> str:
    """A user's build: build_shards.py with its defaults (--seq-len 1024); a reused tokenizer and 300 documents
    keep it fast. Its val split (1 % of the documents) holds less than one batch."""
    out = str(tmp_path_factory.mktemp("own") / "shards")
    tok = os.path.join(shards_dir, "tokenizer.model")
    r = run_cli(["data_prep/build_shards.py", "--out", out, "--tokenizer", tok, "--max-docs", "300", "--workers", "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samples of <= 1024" in r.stdout
    return out


@pytest.fixture(scope="module")
def own_run(own_shards, tmp_path_factory):
    """tiny on the default shards with 2 processes, as a user types it: refused with the overrides that fit,
    then run (2 steps) with the first one."""
    run_dir = str(tmp_path_factory.mktemp("own") / "run")
    args = ["--config", TINY, f"data.dir={own_shards}", f"run_dir={run_dir}", "train.steps=2"]
    refused = wrapped_pretrain(2, args, timeout=300)
    fix = _overrides(refused.stderr)
    ran = wrapped_pretrain(2, [*args, *fix[:1]], timeout=300)
    return refused, fix, ran, run_dir


@pytest.mark.distributed
def test_tiny_on_default_shards_says_which_override_fits_and_runs_with_it(own_run):
    refused, fix, ran, run_dir = own_run
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip() == (
        "error: train.global_batch_tokens=8192: at seq_len 1024 that is 8 samples, not a multiple of "
        "train.micro_batch_size x world size = 32 (16 x 2); pass train.micro_batch_size=4 (the same global batch: "
        "1 micro-batch of 4 per rank) or train.global_batch_tokens=32768 (the same micro-batches: 32 samples of 1024)"
    )
    assert fix == ["train.micro_batch_size=4", "train.global_batch_tokens=32768"]
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "done: 2 steps" in ran.stdout


def test_the_dry_run_and_the_launcher_refuse_with_the_same_line(own_shards, tmp_path, capsys):
    from pretrain import dryrun, launch

    common = ["--config", TINY, f"data.dir={own_shards}", f"run_dir={tmp_path}"]
    for main, args in (
        (dryrun.main, ["--world-size", "2", "--gpus-per-node", "2", "--no-reference", *common]),
        (launch.main, ["--cluster", "local", "--tasks-per-node", "2", *common]),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            "error: train.global_batch_tokens=8192: at seq_len 1024 that is 8 samples, not a multiple of "
        ), err
        assert "pass train.micro_batch_size=4 " in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "submitit").exists()


@pytest.mark.distributed
def test_merge_follows_trainings_rule_for_a_val_split_under_one_batch(own_run, tmp_path, capsys):
    """The run skipped validation (1 val sample); merging its experts skips it too, saying why."""
    from tools import merge_experts

    refused, fix, ran, run_dir = own_run
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "validation skipped: " in ran.stdout  # training's rule
    native = str(tmp_path / "native")
    r = run_cli(["tools/consolidate_checkpoint.py", run_dir, "--out", native])
    assert r.returncode == 0, r.stderr[-2000:]
    assert merge_experts.main([native, "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("validation skipped: ")]
    assert len(notes) == 1 and "has only 1 samples, fewer than one global batch" in notes[0], out
    assert "(as in training; --val DIR compares on other shards)" in notes[0]
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["before"] is None and report["after"] is None and report["val_shards"] is None
    # asked for by name, the same split is an error that says how to go on without it
    own_shards = json.loads(open(os.path.join(native, "config.json")).read())["data_dir"]
    assert merge_experts.main([native, "--out", str(tmp_path / "m2"), "--val", own_shards]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --val {own_shards}: micro_batch_size=16 x ") and "\n" not in err
    assert err.endswith("; pass --no-val to merge without the comparison") and not (tmp_path / "m2").exists()
    assert merge_experts.main([native, "--out", str(tmp_path / "m3"), "--fold", "--no-val"]) == 0
    out = capsys.readouterr().out
    assert "no validation (--no-val)" in out and "skipped" not in out


@pytest.mark.distributed
def test_a_run_that_ends_inside_its_warmup_says_so_once_at_start(own_run):
    refused, fix, ran, run_dir = own_run  # train.steps=2 with tiny's schedule.warmup_steps=20
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [line for line in ran.stdout.splitlines() + ran.stderr.splitlines() if "warm-up" in line]
    assert lines == [
        "warning: train.steps=2 ends inside its warm-up (schedule.warmup_steps=20): the last step runs at lr "
        "3.00e-04 (2/20 of optim.lr=0.003) and the lr never decays; set schedule.warmup_steps=0 (no warm-up) or "
        "another value below 2"
    ], ran.stdout[-3000:]
    assert ran.stdout.index("warning: train.steps=2") < ran.stdout.index("step      2/2")  # at start
    last = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()[-1])
    assert last["step"] == 2 and last["lr"] == pytest.approx(3.0e-4)  # the lr the warning named
