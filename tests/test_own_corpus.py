"""Your own corpus, end to end, without surprises (issue 46): shards built with build_shards.py's defaults
(--seq-len 1024) and the `tiny` preset (set for samples of 256), a tokenizer smaller than asked for, a val
split smaller than a batch, a run that ends inside its warm-up, and the resolved config printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, wrapped_pretrain

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
    args = ["--config", TINY, f"data.dir={own_shards}", f"run_dir={run_dir}", "train.steps=2", "data.num_workers=0"]
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


def test_the_dry_run_and_the_launcher_refuse_with_the_same_line(own_shards, tmp_path):
    expected = "error: train.global_batch_tokens=8192: at seq_len 1024 that is 8 samples, not a multiple of "
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--config", TINY, f"data.dir={own_shards}", f"run_dir={tmp_path}"]
    for cmd in (
        ["-m", "pretrain.dryrun", "--world-size", "2", "--gpus-per-node", "2", "--no-reference", *common],
        ["-m", "pretrain.launch", "--cluster", "local", "--tasks-per-node", "2", *common],
    ):
        r = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2 and r.stderr.startswith(expected), (cmd, r.stderr[-2000:])
        assert "pass train.micro_batch_size=4 " in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "submitit").exists()
