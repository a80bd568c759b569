"""engine=deepspeed (ZeRO-3, gloo on CPU, torch's AdamW): parity with FSDP2, exact resume, consolidation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import pretrain, run_cli, torchrun

pytest.importorskip(
    "deepspeed", reason="pip install --no-build-isolation -c constraints.txt -r requirements-deepspeed.txt"
)
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _run(run_dir, shards_dir, engine: str, steps: int, nproc: int = 2, extra=(), env=None):
    args = [
        f"data.dir={shards_dir}",
        f"run_dir={run_dir}",
        f"train.steps={steps}",
        "train.micro_batch_size=4",
        "train.global_batch_tokens=2048",
        "checkpoint.every=5",
        "schedule.warmup_steps=3",
        "train.log_every=1",
        "eval.every=0",
        f"engine={engine}",
        *extra,
    ]
    return pretrain(nproc, args, env)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards_dir):
    out = {}
    for engine in ("fsdp2", "deepspeed"):
        d = str(tmp_path_factory.mktemp(engine))
        r = _run(d, shards_dir, engine, 10)  # 2 micro-batches of 4 per rank and step: accumulation is exercised
        assert r.returncode == 0, r.stderr[-3000:]
        out[engine] = d
    return out


def test_deepspeed_losses_equal_fsdp2(runs):
    a, b = _losses(runs["fsdp2"]), _losses(runs["deepspeed"])
    assert sorted(b) == list(range(1, 11))
    for step in range(1, 6):
        assert abs(b[step] - a[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])
    assert b[10] < b[1]


def test_deepspeed_exact_resume_after_sigkill(runs, shards_dir, tmp_path):
    d = str(tmp_path)
    killed = _run(d, shards_dir, "deepspeed", 10, env={"MODERNALBERT_KILL_AFTER_STEP": "7"})
    assert killed.returncode != 0
    assert open(os.path.join(d, "checkpoints", "latest")).read().strip() == "step_00000005"
    resumed = _run(d, shards_dir, "deepspeed", 10)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    ref, got = _losses(runs["deepspeed"]), _losses(d)
    for step in range(6, 11):
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, ref[step], got[step])
    a, b = _consolidated(runs["deepspeed"], tmp_path / "a"), _consolidated(d, tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # a ZeRO checkpoint holds per-rank partitions: another rank count is refused with a clear message
    other = _run(d, shards_dir, "deepspeed", 12, nproc=1)
    assert other.returncode == 2 and "holds ZeRO partitions of 2 ranks; resume it on 2 ranks" in other.stderr


def _consolidated(run_dir, out) -> dict[str, torch.Tensor]:
    from model.native_format import load_native

    r = run_cli(["tools/consolidate_checkpoint.py", run_dir, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return load_native(str(out))[0].state_dict()


_GATHER = r"""
import sys, torch
from pretrain.config import load_config
from pretrain.train import teardown, train
import pretrain.deepspeed_engine as de

captured = {}
orig = de.DeepSpeedEngine.load
def load_then_gather(self, path, world):
    state = orig(self, path, world)
    captured["sd"] = self.full_state_dict()
    return state
de.DeepSpeedEngine.load = load_then_gather
cfg = load_config("pretrain/configs/tiny.yaml", sys.argv[2:])
train(cfg)  # resumes the finished run: loads, gathers, has nothing left to do
if torch.distributed.get_rank() == 0:
    torch.save(captured["sd"], sys.argv[1])
teardown(agreed=True)  # leaving the group unsynchronised can abort a rank at exit
"""


def test_consolidated_deepspeed_weights_equal_the_engines_gathered_weights_and_export(runs, shards_dir, tmp_path):
    d = runs["deepspeed"]
    gathered_path = str(tmp_path / "gathered.pt")
    script = tmp_path / "gather.py"
    script.write_text(_GATHER)
    r = torchrun(
        2,
        [
            str(script),
            gathered_path,
            f"data.dir={shards_dir}",
            f"run_dir={d}",
            "train.steps=10",
            "train.micro_batch_size=4",
            "train.global_batch_tokens=2048",
            "eval.every=0",
            "engine=deepspeed",
        ],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    gathered = torch.load(gathered_path)
    consolidated = _consolidated(d, tmp_path / "native")
    assert gathered.keys() == consolidated.keys()
    for k in gathered:
        assert torch.equal(gathered[k], consolidated[k]), k
    fsdp = _consolidated(runs["fsdp2"], tmp_path / "native_fsdp")
    for k in fsdp:  # the two engines end at the same weights
        torch.testing.assert_close(consolidated[k], fsdp[k], rtol=1e-5, atol=1e-6, msg=k)
    r = run_cli(["tools/convert_to_hf.py", str(tmp_path / "native"), "--out", str(tmp_path / "hf")])
    assert r.returncode == 0 and "verify: max |logits_hf - logits_native|" in r.stdout, r.stderr


def test_deepspeed_with_expert_parallelism_is_the_documented_error(shards_dir, tmp_path):
    r = _run(str(tmp_path), shards_dir, "deepspeed", 3, nproc=1, extra=["parallel.ep=2"])
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: parallel.ep=2: engine=deepspeed runs MoL experts unsplit")
    assert "Use engine=fsdp2 for expert parallelism" in r.stderr
