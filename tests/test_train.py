"""pretrain/train.py end to end on CPU: FSDP2 (2 ranks, gloo) vs 1 process, exact resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, final_weights, pretrain
from pretrain.config import load_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _args(run_dir, shards_dir, steps: int, extra=()) -> list[str]:
    # the shipped tiny preset (router jitter on, one loader worker); only the batch is smaller, for speed
    return [
        f"data.dir={shards_dir}",
        f"run_dir={run_dir}",
        f"train.steps={steps}",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "checkpoint.every=5",
        "schedule.warmup_steps=3",
        "train.log_every=1",
        *extra,
    ]


def _run(run_dir, shards_dir, nproc: int, steps: int, extra=(), env=None):
    return pretrain(nproc, _args(run_dir, shards_dir, steps, extra), env)


def _losses(run_dir) -> dict[int, float]:
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards_dir):
    run_dir = str(tmp_path_factory.mktemp("ref"))
    r = _run(run_dir, shards_dir, nproc=1, steps=10, extra=["log.peak_tflops=0.5"])
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp_path_factory.getbasetemp() / "ref_stdout.txt").write_text(r.stdout)
    return run_dir


def test_metrics_carry_throughput_mfu_memory_and_expert_load(reference, tmp_path_factory):
    records = [json.loads(line) for line in open(os.path.join(reference, "metrics.jsonl"))]
    assert [r["step"] for r in records] == list(range(1, 11))
    for r in records:
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.5)
        assert 0 < r["memory_gib"] < 8 and r["tokens_per_s"] > 0
        # tiny: MoL on group 1 (layers 2 and 3), 8 experts, top-2: every token counted twice per layer
        assert sorted(r["tokens_per_expert"]) == ["layer2.ffn", "layer3.ffn"]
        for counts in r["tokens_per_expert"].values():
            assert len(counts) == 8 and sum(counts) == 2 * r["tokens"]
        # the router's mean per-token entropy, nats: below ln 8 (uniform over the 8), well above 0 near init
        assert sorted(r["router_entropy"]) == ["layer2.ffn", "layer3.ffn"]
        assert all(1.0 < h < math.log(8) for h in r["router_entropy"].values()), r["router_entropy"]
        total = r["aux/mol_load_balance"] * 0.01 + r["aux/mol_z"] * 0.001
        assert r["aux_loss"] == pytest.approx(total, rel=1e-5)
    stdout = (tmp_path_factory.getbasetemp() / "ref_stdout.txt").read_text()
    assert "step     10/10" in stdout and "MFU" in stdout and "load max/mean" in stdout


@pytest.fixture(scope="module")
def fsdp2_ranks(tmp_path_factory, shards_dir):
    """2 ranks, EP=1: 5 of 10 steps (killed after the step-5 checkpoint, so the schedule is the 10-step one)."""
    run_dir = str(tmp_path_factory.mktemp("fsdp2"))
    r = _run(
        run_dir,
        shards_dir,
        nproc=2,
        steps=10,
        extra=["eval.micro_batch_size=4"],  # global 8, as 1 process
        env={"MODERNALBERT_KILL_AFTER_STEP": "5"},
    )
    assert "step      5/10" in r.stdout, r.stderr[-3000:]
    return run_dir


def test_two_fsdp_ranks_give_the_losses_of_one_process(reference, fsdp2_ranks):
    one, two = _losses(reference), _losses(fsdp2_ranks)
    assert sorted(two) == [1, 2, 3, 4, 5]
    for step in two:
        assert abs(two[step] - one[step]) <= 1e-5 * abs(one[step]), (step, one[step], two[step])
    assert one[10] < one[1]
    # validation before step 1: the same model gives the same number on 1 and 2 ranks
    val_one, val_two = (json.loads(open(os.path.join(d, "eval.jsonl")).readline()) for d in (reference, fsdp2_ranks))
    assert val_one["step"] == val_two["step"] == 0 and val_one["val_masked"] == val_two["val_masked"] > 1000
    assert val_two["val_loss"] == pytest.approx(val_one["val_loss"], rel=1e-6)


def test_expert_parallel_gives_the_losses_and_weights_of_ep1(reference, fsdp2_ranks, shards_dir, tmp_path):
    run_dir = str(tmp_path)
    r = _run(run_dir, shards_dir, nproc=2, steps=10, extra=["parallel.ep=2"], env={"MODERNALBERT_KILL_AFTER_STEP": "5"})
    assert "step      5/10" in r.stdout, r.stderr[-3000:]
    ep1, ep2 = _losses(fsdp2_ranks), _losses(run_dir)
    assert sorted(ep2) == [1, 2, 3, 4, 5]
    for step in ep2:
        assert abs(ep2[step] - ep1[step]) <= 1e-5 * abs(ep1[step]), (step, ep1[step], ep2[step])
    a, b = final_weights(fsdp2_ranks), final_weights(run_dir)
    assert a.keys() == b.keys()
    experts = [k for k in a if k.rsplit(".", 1)[-1] in ("A1", "B1", "A2", "B2")]
    assert len(experts) == 4 and all(b[k].shape[0] == 8 for k in experts)  # full [E, ...] tensors saved
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    assert all(not torch.equal(b[k], torch.zeros_like(b[k])) for k in experts)  # B moved off its zero init
    # an EP=2 checkpoint resumes in one process (EP=1) and continues exactly
    resumed = _run(run_dir, shards_dir, nproc=1, steps=10)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, got = _losses(reference), _losses(run_dir)
    for step in range(6, 11):
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, ref[step], got[step])


def test_activation_checkpointing_does_not_change_the_losses(reference, shards_dir, tmp_path):
    r = _run(str(tmp_path), shards_dir, nproc=1, steps=3, extra=["parallel.activation_checkpointing=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    # router jitter is on (the preset's 0.01): the recompute must replay the forward's noise, else the
    # gradients, and so the losses of steps 2 and 3, differ
    ac, plain = _losses(str(tmp_path)), _losses(reference)
    for step in (1, 2, 3):
        assert abs(ac[step] - plain[step]) <= 1e-6 * abs(plain[step]), (step, plain[step], ac[step])


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
    a, b = final_weights(reference), final_weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_the_shipped_preset_is_bitwise_reproducible_and_resumes_bitwise(shards_dir, tmp_path):
    """Two runs of one command, and a SIGKILL + relaunch, end with the same bits (2 ranks, router jitter
    on, loader workers): every random draw is a function of the seed and the micro-batch's data position."""
    runs = [str(tmp_path / name) for name in ("a", "b", "killed")]
    for run_dir in runs[:2]:
        r = _run(run_dir, shards_dir, nproc=2, steps=8, extra=["checkpoint.every=3"])
        assert r.returncode == 0, r.stderr[-3000:]
    killed = _run(
        runs[2], shards_dir, nproc=2, steps=8, extra=["checkpoint.every=3"], env={"MODERNALBERT_KILL_AFTER_STEP": "5"}
    )
    assert (
        killed.returncode != 0
        and open(os.path.join(runs[2], "checkpoints", "latest")).read().strip() == "step_00000003"
    )
    resumed = _run(runs[2], shards_dir, nproc=2, steps=8, extra=["checkpoint.every=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b, c = (final_weights(d) for d in runs)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: two runs of one command differ"
        assert torch.equal(a[k], c[k]), f"{k}: the killed and relaunched run differs from the uninterrupted one"
    assert _losses(runs[0]) == _losses(runs[1])
    # the routing-share average (merge weights) is training state too: restored, it ends the same
    from pretrain.checkpoint import latest_checkpoint, read_trainer_state

    ema = [read_trainer_state(latest_checkpoint(os.path.join(d, "checkpoints")))["routing_ema"] for d in runs]
    assert ema[0]["updates"] == 8 and ema[0] == ema[1] == ema[2]


def test_compiled_blocks_give_the_losses_of_eager(reference, shards_dir, tmp_path):
    r = _run(str(tmp_path), shards_dir, nproc=1, steps=3, extra=["parallel.compile=true"])  # ~90 s of compiling
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _losses(reference), _losses(str(tmp_path))
    for step in (1, 2, 3):
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, ref[step], got[step])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.steps=0"], "error: train.steps=0: must be >= 1"),
        (["parallel.ep=3"], "error: parallel.ep=3: must divide model.mol.num_experts=8"),
        (["parallel.ep=2"], "error: parallel.ep=2: must divide the number of processes (1)"),
        (["model.mol.top_k=9"], "error: model.mol.top_k=9: must be in [1, num_experts=8]"),
        (["data.mlm.mask_prob=1.5"], "error: data.mlm.mask_prob=1.5: must be in (0, 1)"),
        (["log.wandb=cloud"], "error: log.wandb='cloud': allowed: disabled, offline, online"),
        (["log.wandb=on"], "error: log.wandb='on': allowed: disabled, offline, online"),  # not YAML's True
        (["checkpoint.resume=no"], "error: checkpoint.resume='no': must be true or false"),
        (["engine=deepspeed", "deepspeed.zero_stage=4"], "error: deepspeed.zero_stage=4: allowed: 1, 2, 3"),
        (["optim.lr=fast"], "error: optim.lr='fast': must be a number"),
        (["model.norm_position=mid"], "error: model.norm_position='mid': allowed: pre, post"),
        (
            ["model.position_embedding=absolute", "model.max_position_embeddings=64"],
            "error: model.max_position_embeddings=64: the shards' samples have up to 128 tokens",
        ),
        (
            ["optim.lrate=1"],
            "error: optim.lrate: unknown field (allowed: beta1, beta2, eps, grad_clip, lr, weight_decay)",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line_naming_the_field(tmp_path, shards_dir, capsys, extra, message):
    """In process (no subprocess per case): main() returns 2 and prints exactly one line."""
    from pretrain.train import main

    rc = main(["--config", "pretrain/configs/tiny.yaml", f"run_dir={tmp_path}", f"data.dir={shards_dir}", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith(message), err  # some messages go on to name the data dir
    assert not os.listdir(tmp_path)  # nothing written before the config is known to be good


def test_missing_data_and_bad_batch_geometry_fail_before_any_process_group(tmp_path, shards_dir, capsys):
    from pretrain.train import main

    base = ["--config", "pretrain/configs/tiny.yaml", f"run_dir={tmp_path}"]
    assert main([*base, f"data.dir={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and "no such directory" in err
    assert main([*base, f"data.dir={shards_dir}", "train.global_batch_tokens=1500"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: train.global_batch_tokens=1500: at seq_len 128")


def test_yaml_presets_load():
    for name in ("tiny", "50m", "120m"):
        cfg = load_config(f"{REPO}/pretrain/configs/{name}.yaml")
        assert cfg.model.num_layers == (4 if name == "tiny" else 27)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_sigusr1_saves_at_a_step_boundary_and_exits_for_requeue(reference, shards_dir, tmp_path):
    import time

    run_dir = str(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "pretrain.train",
        "--config",
        "pretrain/configs/tiny.yaml",
        *_args(run_dir, shards_dir, 10),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.005)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGUSR1)  # one rank only: the ranks must agree among themselves
    out, err = proc.communicate(timeout=300)
    marker = os.path.join(run_dir, "preempted")
    assert os.path.exists(marker), err[-3000:]
    stopped = int(open(marker).read())
    assert 2 <= stopped < 10
    assert proc.returncode != 0  # torchrun reports the workers' exit code 75 as a failure
    latest = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    assert latest == f"step_{stopped:08d}"
    resumed = _run(run_dir, shards_dir, nproc=2, steps=10)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not os.path.exists(marker)
    ref, got = _losses(reference), _losses(run_dir)
    for step in range(stopped + 1, 11):
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, ref[step], got[step])


def test_preempted_single_process_exits_with_the_requeue_code(shards_dir, tmp_path):
    import time

    cmd = [
        sys.executable,
        "-m",
        "pretrain.train",
        "--config",
        "pretrain/configs/tiny.yaml",
        f"data.dir={shards_dir}",
        f"run_dir={tmp_path}",
        "train.steps=200",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=1024",
        "checkpoint.every=0",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 1):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "preempted: saved" in err
    stopped = int((tmp_path / "preempted").read_text())
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(shards_dir, tmp_path):
    r = _run(
        str(tmp_path),
        shards_dir,
        nproc=1,
        steps=10,
        extra=["checkpoint.every=2"],
        env={"MODERNALBERT_NAN_AT_STEP": "5"},
    )
    assert r.returncode == 2
    assert "error: step 5: loss is nan" in r.stderr and "step_00000004" in r.stderr
    assert open(os.path.join(tmp_path, "checkpoints", "latest")).read().strip() == "step_00000004"
    assert max(_losses(str(tmp_path))) == 4


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(reference, shards_dir, tmp_path):
    r = _run(
        str(tmp_path),
        shards_dir,
        nproc=1,
        steps=10,
        extra=["checkpoint.every=3"],
        env={"MODERNALBERT_KILL_DURING_SAVE": "6"},
    )
    assert r.returncode == -signal.SIGKILL
    ckpts = os.listdir(os.path.join(tmp_path, "checkpoints"))
    assert ".tmp_step_00000006" in ckpts and "step_00000006" not in ckpts
    assert open(os.path.join(tmp_path, "checkpoints", "latest")).read().strip() == "step_00000003"
    resumed = _run(str(tmp_path), shards_dir, nproc=1, steps=10, extra=["checkpoint.every=3"])
    assert resumed.returncode == 0 and "step_00000003" in resumed.stdout
    assert ".tmp_step_00000006" not in os.listdir(os.path.join(tmp_path, "checkpoints"))


_DUMMY_TERM = r"""
import sys
import pretrain.train as T
from pretrain.loss_terms import LossTerm

declared = T.declare
# one new term, one edit: a constant per micro-batch (normalised by micro-batches), logged, not optimised
T.declare = lambda cfg, teacher=None: declared(cfg, teacher) + [
    LossTerm("dummy", "micro_batches", 0.0, lambda mb: mb.out.mlm_loss.detach() * 0 + 3.0, "dummy")]
sys.exit(T.main(sys.argv[1:]))
"""


def test_a_declared_loss_term_is_summed_reduced_and_logged_on_two_ranks(reference, shards_dir, tmp_path):
    """pretrain/loss_terms.py is the one place a term is declared: a dummy term added there alone reaches
    metrics.jsonl (sum over 2 ranks x micro-batches / their count = 3) and the console line, and leaves the
    losses of the 1-process reference untouched (weight 0)."""
    from conftest import torchrun

    script = tmp_path / "dummy.py"
    script.write_text(_DUMMY_TERM)
    run_dir = str(tmp_path / "run")
    r = torchrun(
        2, [str(script), "--config", "pretrain/configs/tiny.yaml", *_args(run_dir, shards_dir, 10, ["eval.every=0"])]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [rec["dummy"] for rec in records] == [3.0] * 10
    assert "acc" in r.stdout and "dummy 3.0000" in r.stdout
    ref = _losses(reference)
    for rec in records[:5]:  # as test_two_fsdp_ranks_give_the_losses_of_one_process (2 x 1 micro-batch of 8)
        assert abs(rec["loss"] - ref[rec["step"]]) <= 1e-5 * abs(ref[rec["step"]]), rec["step"]


_COUNT_HOST_READS = r"""
import collections, json, os, sys, traceback
import torch
import pretrain.train as T

REPO = os.getcwd()
counts = collections.Counter()
on = [False]


def site():
    # the innermost frame in the repo names the read; torch.optim's own reads are its step counters
    for fr in reversed(traceback.extract_stack()[:-2]):
        if "/torch/optim/" in fr.filename:
            return "torch.optim"
        if fr.filename.startswith(REPO + "/") and "site-packages" not in fr.filename:
            return f"{os.path.relpath(fr.filename, REPO)}:{fr.name}"
    return "?"


def counted(name):
    orig = getattr(torch.Tensor, name)

    def read(self, *a, **k):
        if on[0]:
            counts[site()] += 1
        return orig(self, *a, **k)
    setattr(torch.Tensor, name, read)


for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
    counted(name)
run = T.Trainer.run


def counting_run(self):
    on[0] = True
    try:
        return run(self)
    finally:
        on[0] = False
        json.dump(dict(counts), open(os.environ["HOST_READS"], "w"))


T.Trainer.run = counting_run
sys.exit(T.main(sys.argv[1:]))
"""


def test_a_step_reads_the_device_once_and_a_log_step_twice(shards_dir, tmp_path):
    """Host reads of tensors (.item/.tolist/bool/int/float: each a device sync on GPU) during 8 steps with
    train.log_every=4, by call site: the batch counts' all-reduce (which also carries the preemption, fault
    and non-finite flags) once per step, the metrics once per log step, none in the model's MoL/routing code
    or the loss terms. Before this count was taken the loop read 3 times per step and the MoL forward once per
    application. Host-side tensors are read on CPU too and are listed apart: the loader's batches (FLOPs), torch
    AdamW's step counters, and the reference attention backend's length grouping (sdpa, CPU's; on GPU
    flash_attn/torch_varlen take cu_seqlens as they are)."""
    from conftest import torchrun

    script = tmp_path / "count.py"
    script.write_text(_COUNT_HOST_READS)
    out = tmp_path / "reads.json"
    extra = ["train.log_every=4", "eval.every=0", "checkpoint.every=0"]
    r = torchrun(
        1,
        [str(script), "--config", "pretrain/configs/tiny.yaml", *_args(tmp_path / "run", shards_dir, 8, extra)],
        env={"HOST_READS": str(out)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    reads = json.loads(out.read_text())
    host_side = {
        k: v
        for k, v in reads.items()
        if k == "torch.optim"
        or k.startswith(("model/flops.py:", "pretrain/data.py:"))
        or k == "model/attention.py:length_groups"
    }
    device = {k: v for k, v in reads.items() if k not in host_side}
    assert device == {"pretrain/train.py:step": 8, "pretrain/train.py:flush": 2}, reads
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [rec["step"] for rec in records] == list(range(1, 9))  # every step's record, written at its log step
