"""Faults end in one line and a resumable state: checkpoint verification and fallback, bad shards under
2 ranks, the torchrun wrapper's exit status, and the CLIs' user errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, torchrun, wrapped_pretrain
from pretrain import checkpoint

TINY = ["--config", "pretrain/configs/tiny.yaml"]


def _fake_checkpoint(ckpt_dir: str, step: int) -> str:
    """A checkpoint written by the real protocol (one process), with a stand-in for the model state."""

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, "__0_0.distcp"), "wb") as f:
            f.write(np.random.default_rng(step).bytes(50_000))
        open(os.path.join(tmp, ".metadata"), "wb").write(b"meta")

    return checkpoint.save_with(ckpt_dir, step, write, {"scheduler": {}, "loader": {}}, keep=5)


def _flip_byte(path: str, at: int = 1000) -> None:
    raw = bytearray(open(path, "rb").read())
    raw[at] ^= 0xFF
    open(path, "wb").write(bytes(raw))


# ---------------------------------------------------------------------------------------------- verify


def test_verify_names_truncated_changed_missing_and_corrupted_files(tmp_path):
    ckpt = str(tmp_path)
    paths = [_fake_checkpoint(ckpt, s) for s in (1, 2, 3, 4, 5)]
    assert [checkpoint.verify(p) for p in paths] == [None] * 5
    assert json.load(open(os.path.join(paths[0], "manifest.json")))["files"].keys() == {
        ".metadata",
        "__0_0.distcp",
        "rng_rank0.pt",
        "trainer.json",
    }
    os.truncate(os.path.join(paths[0], "__0_0.distcp"), 100)
    assert checkpoint.verify(paths[0]) == "__0_0.distcp truncated: 100 bytes, the manifest says 50,000"
    _flip_byte(os.path.join(paths[1], "__0_0.distcp"))  # same size: only the hash can tell
    assert checkpoint.verify(paths[1]) == "__0_0.distcp does not match its sha256 in manifest.json (corrupted)"
    os.remove(os.path.join(paths[2], "rng_rank0.pt"))
    assert checkpoint.verify(paths[2]) == "rng_rank0.pt is missing"
    with open(os.path.join(paths[3], "trainer.json"), "a") as f:
        f.write("x")
    assert checkpoint.verify(paths[3]).startswith("trainer.json changed")
    open(os.path.join(paths[4], "manifest.json"), "w").write("{")
    assert checkpoint.verify(paths[4]).startswith("manifest.json unreadable")
    # a checkpoint from before manifests: its files are checked, not their contents
    os.remove(os.path.join(paths[4], "manifest.json"))
    assert checkpoint.verify(paths[4]) is None
    os.remove(os.path.join(paths[4], ".metadata"))
    assert checkpoint.verify(paths[4]).startswith("no model state")


def test_hash_shares_cover_every_file(tmp_path):
    path = _fake_checkpoint(str(tmp_path), 1)
    _flip_byte(os.path.join(path, "__0_0.distcp"))
    # the cheap size checks pass; of the 4 files (.metadata, __0_0.distcp, rng, trainer.json) rank 1 of 3
    # hashes the 2nd only: it alone finds the corruption, as verify_collective gathers every rank's answer
    assert [checkpoint.verify(path, (r, 3)) for r in range(3)] == [
        None,
        "__0_0.distcp does not match its sha256 in manifest.json (corrupted)",
        None,
    ]


def test_resume_point_falls_back_and_sets_bad_ones_aside(tmp_path):
    ckpt = str(tmp_path)
    good, bad1, bad2 = (_fake_checkpoint(ckpt, s) for s in (2, 4, 6))
    _flip_byte(os.path.join(bad1, "__0_0.distcp"))
    os.truncate(os.path.join(bad2, "__0_0.distcp"), 10)
    lines: list[str] = []
    assert checkpoint.resume_point(ckpt, lines.append) == good
    assert sorted(os.listdir(ckpt)) == ["corrupt-step_00000004", "corrupt-step_00000006", "latest", "step_00000002"]
    assert open(os.path.join(ckpt, "latest")).read().strip() == "step_00000002"
    assert lines[-1] == f"falling back to the newest intact checkpoint, {good}" and len(lines) == 3
    assert "step_00000006: __0_0.distcp truncated" in lines[0]
    # a save after the fallback purges by step among intact checkpoints only; the set-aside ones stay
    checkpoint.save_with(ckpt, 3, lambda tmp: open(os.path.join(tmp, ".metadata"), "wb").write(b"m"), {}, keep=1)
    assert sorted(os.listdir(ckpt)) == ["corrupt-step_00000004", "corrupt-step_00000006", "latest", "step_00000003"]


def test_no_intact_checkpoint_is_one_error_and_renames_nothing(tmp_path):
    ckpt = str(tmp_path)
    for s in (2, 4):
        _flip_byte(os.path.join(_fake_checkpoint(ckpt, s), "__0_0.distcp"))
    before = sorted(os.listdir(ckpt))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.resume_point(ckpt)
    assert str(e.value).startswith(f"no intact checkpoint in {ckpt} (step_00000004: __0_0.distcp does not match")
    assert "\n" not in str(e.value) and sorted(os.listdir(ckpt)) == before
    assert checkpoint.resume_point(str(tmp_path / "fresh")) is None  # no checkpoints at all: a fresh start


def test_a_killed_save_leaves_no_stale_temp_dirs_behind_the_next_save(tmp_path):
    ckpt = str(tmp_path)
    _fake_checkpoint(ckpt, 1)
    os.makedirs(os.path.join(ckpt, ".tmp_step_00000007"))  # a save killed half way, at another step
    _fake_checkpoint(ckpt, 2)
    assert sorted(os.listdir(ckpt)) == ["latest", "step_00000001", "step_00000002"]


def test_consolidation_names_the_bad_checkpoint_and_the_newest_intact_one(tmp_path):
    ckpt = tmp_path / "checkpoints"
    intact, bad = (_fake_checkpoint(str(ckpt), s) for s in (3, 6))
    os.truncate(os.path.join(bad, "__0_0.distcp"), 7)
    r = run_cli(["tools/consolidate_checkpoint.py", str(tmp_path), "--out", str(tmp_path / "native")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.strip() == (
        f"error: checkpoint {bad}: __0_0.distcp truncated: 7 bytes, the manifest says 50,000; "
        f"the newest intact checkpoint is {intact}: pass it instead"
    )
    assert not (tmp_path / "native").exists()


# ---------------------------------------------------------------------------------------------- training


def _train_args(run_dir, data_dir, steps, extra=()):
    return [
        *TINY,
        f"data.dir={data_dir}",
        f"run_dir={run_dir}",
        f"train.steps={steps}",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "schedule.warmup_steps=3",
        "eval.every=0",
        *extra,
    ]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.distributed
@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_on_two_ranks_and_resumes_exactly(shards_dir, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = torchrun(1, ["-m", "pretrain.train", *_train_args(ref, shards_dir, 8, ["checkpoint.every=4"])])
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(ref, run)
    (run / "metrics.jsonl").unlink()
    _flip_byte(str(run / "checkpoints" / "step_00000008" / "__0_0.distcp"))
    r = wrapped_pretrain(2, _train_args(run, shards_dir, 8, ["checkpoint.every=4", "train.log_every=1"]))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert out.count("falling back to the newest intact checkpoint") == 1  # rank 0 only
    assert f"checkpoint {run}/checkpoints/step_00000008: __0_0.distcp does not match its sha256" in out
    assert f"resumed from {run}/checkpoints/step_00000004 at step 4" in out
    assert (run / "checkpoints" / "corrupt-step_00000008").is_dir()
    ref_losses = {json.loads(x)["step"]: json.loads(x)["loss"] for x in open(ref / "metrics.jsonl")}
    got = {json.loads(x)["step"]: json.loads(x)["loss"] for x in open(run / "metrics.jsonl")}
    assert sorted(got) == [5, 6, 7, 8]
    for s in got:
        assert got[s] == pytest.approx(ref_losses[s], rel=1e-5), s


@pytest.mark.distributed
@pytest.mark.slow
def test_a_bad_shard_mid_run_stops_both_ranks_with_one_line_and_exit_2(shards_dir, tmp_path):
    from data_prep.shards import ShardIndex
    from pretrain.data import SampleOrder

    data = tmp_path / "data"
    shutil.copytree(shards_dir, data)
    index = ShardIndex.load(str(data))
    entries = index.splits["train"]
    order = SampleOrder([e.samples for e in entries], seed=0, epoch=0, shuffle=True)
    second = entries[int(order.shard_order[1])]  # first read once the first shard in the order is used up
    _flip_byte(str(data / second.file), 5000)
    first_bad_step = int(order.ends[0]) // 16 + 1  # 16 samples per step (2048 tokens / 128)
    run = tmp_path / "run"
    r = wrapped_pretrain(2, _train_args(run, data, first_bad_step + 5, ["checkpoint.every=10", "data.num_workers=1"]))
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1, r.stderr[-3000:]
    last = (first_bad_step - 1) // 10 * 10
    assert lines[0].startswith(f"error: shard {second.file}: corrupt (sha256")
    assert f"Training stopped before step {first_bad_step}" in lines[0]
    assert f"the last good checkpoint is {run}/checkpoints/step_{last:08d}" in lines[0]
    # rebuilt (here: restored) shard → the relaunch resumes from that checkpoint and finishes
    shutil.copy(os.path.join(shards_dir, second.file), data / second.file)
    r = wrapped_pretrain(2, _train_args(run, data, first_bad_step + 5, ["checkpoint.every=10", "data.num_workers=1"]))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/step_{last:08d}" in r.stdout


@pytest.mark.distributed
def test_torchrun_wrapper_passes_the_exit_status_on_with_one_line(shards_dir, tmp_path):
    r = wrapped_pretrain(2, _train_args(tmp_path, shards_dir, 2, ["train.stepz=3"]))
    assert r.returncode == 2
    assert _error_lines(r.stderr) == [
        "error: train.stepz: unknown field (allowed: global_batch_tokens, log_every, micro_batch_size, "
        "routing_ema_decay, seed, steps)"
    ]
    killed = tmp_path / "kill.py"
    killed.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run(
        [sys.executable, "-m", "pretrain.torchrun", "--standalone", "--nproc-per-node=2", str(killed)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 137
    assert _error_lines(r.stderr)[-1].endswith("was killed by SIGKILL (exit status 137)")


# ---------------------------------------------------------------------------------------------- CLIs


def test_pretrain_data_verifies_every_shard_and_names_each_bad_one(shards_dir, tmp_path, capsys):
    from pretrain.data import main

    data = tmp_path / "data"
    shutil.copytree(shards_dir, data)
    assert main([str(data)]) == 0
    assert capsys.readouterr().out.startswith("verified: ")
    os.truncate(data / "train-000001.tar", 2000)
    (data / "val-000000.tar").unlink()
    assert main([str(data)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("bad: shard train-000001.tar: corrupt")
    assert err[1].startswith("bad: shard val-000000.tar: missing")
    assert err[2].startswith("error: 2 of ") and len(err) == 3


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path, capsys):
    from pretrain.train import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n lr: 1\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:3:2: not valid YAML (") and "\n" not in err
    bad.write_text("- a list\n")
    assert main(["--config", str(bad)]) == 2
    assert "a YAML mapping of sections" in capsys.readouterr().err


def test_launcher_checks_data_and_slurm_before_submitting(shards_dir, tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no sbatch/srun on it
    base = [sys.executable, "-m", "pretrain.launch", "--cluster", "slurm", *TINY, f"run_dir={tmp_path}"]
    r = subprocess.run([*base, f"data.dir={tmp_path / 'nowhere'}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert (
        r.returncode == 2 and r.stderr.strip() == f"error: data directory '{tmp_path / 'nowhere'}': no such directory"
    )
    r = subprocess.run([*base, f"data.dir={shards_dir}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --cluster slurm: no sbatch/srun on this")
    assert not os.listdir(tmp_path)


def test_a_failed_build_does_not_block_the_corrected_rerun(tmp_path, capsys):
    from data_prep.build_shards import main
    from data_prep.corpus import SAMPLE_CORPUS_DIR

    out = str(tmp_path / "out")
    (tmp_path / "empty.txt").write_text("\n")
    args = ["--out", out, "--workers", "0", "--no-progress", "--vocab-size", "1000", "--seq-len", "64"]
    assert main([str(tmp_path / "empty.txt"), *args]) == 2
    assert "no documents" in capsys.readouterr().err
    assert main([os.path.join(SAMPLE_CORPUS_DIR, "devils_dictionary.txt"), *args]) == 0
    assert "replacing an earlier build that finished no shard" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(out, "index.json"))


@pytest.mark.parametrize("model_type", [{}, {"model_type": "modernalbert"}])  # written before / since the field
def test_fill_mask_on_a_native_directory_says_to_export_it(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"format": "modernalbert-native", **model_type}))
    r = run_cli(["tools/fill_mask.py", str(tmp_path), "a [MASK] b"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "not a HuggingFace export" in r.stderr and "tools/convert_to_hf.py" in r.stderr


def test_native_tools_on_a_huggingface_directory_say_what_they_take(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "modernbert"}))
    r = run_cli(["tools/convert_to_hf.py", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "a HuggingFace model directory (model_type 'modernbert')" in r.stderr


@pytest.mark.parametrize("script", ["finetune/train.py", "studies/finetune_regimes.py"])
def test_finetune_scripts_also_run_as_plain_scripts(script):
    """As scripts, finetune/ comes first on sys.path, where finetune/model.py used to shadow the model package."""
    r = run_cli([script, "--help"])
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]


def test_gpu_check_says_in_one_line_that_there_is_no_gpu(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: scripts/gpu_check.sh would run for real")
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUT": str(tmp_path / "out")},
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("gpu_check: no python3 on PATH imports a CUDA-enabled torch that sees a GPU (tried: ")
    assert r.stderr.endswith("; set PYTHON=/path/to/python3\n") and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    # given an interpreter whose torch sees no GPU: the same, one line, nothing written
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable},
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sees no CUDA GPU" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
