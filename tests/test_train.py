"""pretrain/train.py end to end on CPU: FSDP2 (2 ranks, gloo) vs 1 process, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from pretrain.config import load_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _run(run_dir, shards_dir, nproc: int, steps: int, extra=(), env=None):
    # jitter off: its noise comes from each rank's own RNG stream, which no rank count can reproduce
    args = [f"data.dir={shards_dir}", f"run_dir={run_dir}", f"train.steps={steps}", "train.micro_batch_size=8",
            "train.global_batch_tokens=2048", "data.num_workers=0", "model.mol.jitter=0", "checkpoint.every=5",
            "schedule.warmup_steps=3", "train.log_every=1", *extra]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, "-m", "pretrain.train", "--config", "pretrain/configs/tiny.yaml", *args],
                          cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def _losses(run_dir) -> dict[int, float]:
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt = os.path.join(run_dir, "checkpoints", open(os.path.join(run_dir, "checkpoints", "latest")).read().strip())
    dest = os.path.join(run_dir, "final.pt")
    dcp_to_torch_save(ckpt, dest)
    return torch.load(dest, weights_only=False)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards_dir):
    run_dir = str(tmp_path_factory.mktemp("ref"))
    r = _run(run_dir, shards_dir, nproc=1, steps=10)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_two_fsdp_ranks_give_the_losses_of_one_process(reference, shards_dir, tmp_path):
    r = _run(str(tmp_path), shards_dir, nproc=2, steps=5)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _losses(reference), _losses(str(tmp_path))
    assert sorted(two) == [1, 2, 3, 4, 5]
    for step in two:
        assert abs(two[step] - one[step]) <= 1e-5 * abs(one[step]), (step, one[step], two[step])
    assert one[10] < one[1]


def test_sigkill_then_resume_is_exact_also_on_fewer_ranks(reference, shards_dir, tmp_path):
    run_dir = str(tmp_path)
    killed = _run(run_dir, shards_dir, nproc=2, steps=10, env={"MODERNALBERT_KILL_AFTER_STEP": "7"})
    assert killed.returncode != 0
    assert open(os.path.join(run_dir, "checkpoints", "latest")).read().strip() == "step_00000005"
    resumed = _run(run_dir, shards_dir, nproc=1, steps=10)  # 2-rank checkpoint, resumed on 1 rank
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_00000005" in resumed.stdout
    ref, got = _losses(reference), _losses(run_dir)  # steps 6-7 appear twice: the resumed run's count
    for step in range(6, 11):
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, ref[step], got[step])
    a, b = _final_weights(reference), _final_weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_bad_config_and_missing_data_fail_before_any_process_group(tmp_path, shards_dir):
    r = _run(str(tmp_path), shards_dir, nproc=1, steps=0)
    assert r.returncode == 2 and r.stderr.strip() == "error: train.steps=0: must be >= 1"
    r = _run(str(tmp_path), str(tmp_path / "nowhere"), nproc=1, steps=3)
    assert r.returncode == 2 and "nowhere" in r.stderr and "no such directory" in r.stderr
    r = _run(str(tmp_path), shards_dir, nproc=1, steps=3, extra=["train.global_batch_tokens=1500"])
    assert r.returncode == 2 and "train.global_batch_tokens=1500" in r.stderr


def test_yaml_presets_load():
    for name in ("tiny", "50m", "120m"):
        cfg = load_config(f"{REPO}/pretrain/configs/{name}.yaml")
        assert cfg.model.num_layers == (4 if name == "tiny" else 27)
