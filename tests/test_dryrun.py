"""pretrain/dryrun.py: a training step at any world size on a simulated process group, checked against real
processes (the N = 2 equalities), its extrapolation, its validation and the cost model's arithmetic."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = "pretrain/configs/tiny.yaml"
# tiny.yaml's data.dir (the quickstart's shards) need not exist here; its comment says 256-token samples
TINY_ARGS = ["--config", TINY, "--world-size", "2", "--seq-len", "256", "--no-reference"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _dryrun(args, out=None, timeout=300):
    cmd = [sys.executable, "-m", "pretrain.dryrun", *args, *(["--json", str(out)] if out else [])]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)


def _real(args, out, timeout=300):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "pretrain.dryrun",
        *args,
        "--real",
        "--json",
        str(out),
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)


# ep=2 deviates from tiny.yaml (ep 1) on purpose: expert parallelism is the one path whose payloads depend on
# the routing; the ep=1 case is the shipped default
@pytest.mark.distributed
@pytest.mark.parametrize("ep", [1, 2])
def test_dry_run_equals_a_real_two_process_run(tmp_path, ep):
    """Per-rank state bytes and every collective of every probe step (kind, group, bytes in and out) of the
    simulated rank equal those counted on two real gloo processes running the same step. All-to-all payloads
    follow each rank's routing in the real job; their mean over the ranks is compared (see rank_mean)."""
    args = [*TINY_ARGS, f"parallel.ep={ep}"]
    sim, real = tmp_path / "sim.json", tmp_path / "real.json"
    r = _dryrun(args, sim)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _real(args, real)
    assert r.returncode == 0, r.stderr[-3000:]
    s, q = json.loads(sim.read_text()), json.loads(real.read_text())
    assert s["measured"]["state"] == q["measured"]["state"]
    assert s["measured"]["state"]["params"] > 0
    kinds = set()
    for ps, pq in zip(s["measured"]["probes"], q["measured"]["probes"], strict=True):
        assert [tuple(c[:2]) for c in ps["collectives"]] == [tuple(c[:2]) for c in pq["collectives"]]
        assert [float(b) for c in ps["collectives"] for b in c[2:]] == [b for c in pq["collectives"] for b in c[2:]]
        kinds |= {c[0] for c in ps["collectives"]}
    assert kinds == ({"all_gather", "reduce_scatter", "all_reduce"} | ({"all_to_all"} if ep > 1 else set()))
    # the reports built on them agree too
    assert [(c["kind"], c["count"], c["bytes"]) for c in s["collectives"]] == [
        (c["kind"], c["count"], pytest.approx(c["bytes"])) for c in q["collectives"]
    ]


@pytest.mark.distributed
def test_dry_run_state_bytes_equal_bench_memory(tmp_path):
    """bench_memory.py's real 2-process launch (the table in RESULTS) and the dry run count the same bytes."""
    vocab = 4096
    bench = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_memory.py",
            "--presets",
            "tiny",
            "--ranks",
            "2",
            "--vocab-size",
            str(vocab),
            "--json",
            str(bench),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "dry.json"
    r = _dryrun(
        [
            "--config",
            TINY,
            "--world-size",
            "2",
            "--seq-len",
            "256",
            "--no-reference",
            f"data.dir={tmp_path}/none",
            f"model.vocab_size={vocab}",
        ],
        out,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rank0 = json.loads(bench.read_text())[0]["per_rank"][0]
    assert json.loads(out.read_text())["measured"]["state"] == rank0


def test_extrapolated_step_equals_a_step_at_the_configured_geometry(tmp_path):
    """The three probes scaled to 3 micro-batches of 64 tokens give what a step of exactly that measures."""
    from pretrain import dryrun
    from pretrain.config import load_config

    cfg = dryrun.gpu_precision(
        load_config(
            TINY,
            ["parallel.ep=2", "train.micro_batch_size=2", "train.global_batch_tokens=768", f"data.dir={tmp_path}/none"],
        )
    )
    seq_len, world = 32, 4  # 768 tokens = 24 samples = 2 per micro-batch x 4 ranks x 3 micro-batches
    probed = dryrun.simulate(cfg, world, seq_len, 16, 8)
    rows, acts = dryrun.extrapolate(probed["probes"], 64, 3)
    old = dryrun.PROBES
    try:
        dryrun.PROBES = ((4, 3),)
        direct = dryrun.simulate(cfg, world, seq_len, 16, 8)["probes"][0]
    finally:
        dryrun.PROBES = old
    buckets = dryrun._buckets(direct["collectives"])
    assert {(r["kind"], tuple(r["ranks"])) for r in rows} == set(buckets)
    for r in rows:
        count, in_b, out_b = buckets[(r["kind"], tuple(r["ranks"]))]
        assert r["count"] == count, r
        assert r["in_bytes"] == pytest.approx(in_b) and r["out_bytes"] == pytest.approx(out_b), r
    assert any(r["kind"] == "all_to_all" for r in rows)
    # saved activations are close to linear in tokens, not exactly (routing decides which expert blocks exist)
    assert acts == pytest.approx(direct["activations"], rel=0.05)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config", "pretrain/configs/120m.yaml", "--world-size", "1024"],
            "error: train.global_batch_tokens=1048576: at seq_len 1024 that is 1024 samples, not a multiple of "
            "train.micro_batch_size x world size = 16384",
        ),
        (
            ["--config", "pretrain/configs/120m.yaml", "--world-size", "12", "--gpus-per-node", "4", "parallel.ep=8"],
            "error: parallel.ep=8: must divide the number of processes (12)",
        ),
        (
            [
                "--config",
                "pretrain/configs/120m.yaml",
                "--world-size",
                "48",
                "parallel.ep=16",
                "train.micro_batch_size=1",
            ],
            "error: parallel.ep=16: must divide model.mol.num_experts=8",
        ),
        (
            ["--config", "pretrain/configs/120m.yaml", "--world-size", "12"],
            "error: --world-size=12: not a whole number of nodes of --gpus-per-node=8",
        ),
        (
            ["--config", "pretrain/configs/50m.yaml", "--world-size", "8", "engine=deepspeed"],
            "error: engine=deepspeed: the dry run models the FSDP2 engine only",
        ),
        (
            ["--config", "pretrain/configs/50m.yaml", "--world-size", "8", "--hardware", "a100"],
            "error: --hardware a100: not in",
        ),
    ],
)
def test_configs_that_cannot_run_at_that_size_give_one_line(args, message):
    r = _dryrun(args, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(message), r.stderr


def test_predicted_memory_over_the_limit_gives_one_line_after_the_report():
    r = _dryrun([*TINY_ARGS, "--gpu-memory-gb", "1"])
    assert r.returncode == 2
    assert "memory per GPU (GiB)" in r.stdout and "collectives per step" in r.stdout
    lines = r.stderr.strip().splitlines()  # the stages' progress lines, then the error
    assert all(x.startswith("dry run: ") for x in lines[:-1]), lines
    line = lines[-1]
    assert line.startswith("error: train.micro_batch_size=16: predicted "), line
    assert "exceeds --gpu-memory-gb 1 " in line


def test_each_stage_says_it_started_on_stderr():
    """The dry run takes a minute at the presets' sizes: each stage (build, the three probe steps, the 1-node
    reference) prints one line on stderr as it starts; stdout holds the report alone."""
    r = _dryrun(
        ["--config", TINY, "--world-size", "4", "--gpus-per-node", "2", "--seq-len", "256", "train.micro_batch_size=4"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    stages = [
        "dry run: building the model as rank 0 of 4 ",
        "dry run: probe step 1/3: 1 micro-batch(es) of 16 tokens …",
        "dry run: probe step 2/3: 1 micro-batch(es) of 32 tokens …",
        "dry run: probe step 3/3: 2 micro-batch(es) of 16 tokens …",
        "dry run: the 1-node reference: the same dry run at world size 2 ",
    ]
    assert len(lines) == len(stages) and all(x.startswith(s) for x, s in zip(lines, stages)), lines
    assert all(x.endswith(" s]") for x in lines), lines
    assert r.stdout.startswith("dry run: 4 ranks (2 node(s) of 2 GPUs)") and "scaling efficiency" in r.stdout


def test_launch_runs_the_dry_runs_checks_before_submitting(shards_dir, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.launch",
            "--config",
            TINY,
            "--tasks-per-node",
            "3",
            f"run_dir={tmp_path}",
            f"data.dir={shards_dir}",
            "parallel.ep=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: parallel.ep=2: must divide the number of processes (3)", (
        r.stderr
    )
    assert not (tmp_path / "submitit").exists()


def test_cost_model_arithmetic():
    from pretrain.cost_model import collective_seconds, load_hardware, step_seconds, wire_bytes

    hw = load_hardware("h100")
    assert wire_bytes("all_gather", 8, 100e6, 800e6) == pytest.approx(700e6)
    assert wire_bytes("reduce_scatter", 8, 800e6, 100e6) == pytest.approx(700e6)
    assert wire_bytes("all_reduce", 4, 1e6, 1e6) == pytest.approx(1.5e6)
    assert wire_bytes("all_to_all", 2, 1e6, 1e6) == pytest.approx(0.5e6)
    assert collective_seconds(hw, "all_gather", 1, False, 1e9, 1e9) == 0
    intra = collective_seconds(hw, "all_gather", 8, False, 100e6, 800e6)
    assert intra == pytest.approx(10e-6 + 7 * 2e-6 + 700e6 / (450e9 * 0.7))
    assert collective_seconds(hw, "all_gather", 8, True, 100e6, 800e6) > 8 * intra  # 50 vs 450 GB/s
    s = step_seconds(hw, 989e12 * hw.mfu, False, fsdp_s=0.5, blocking_s=0.25)
    assert s["compute_s"] == pytest.approx(1.0) and s["step_s"] == pytest.approx(1.25)
    assert s["mfu"] == pytest.approx(hw.mfu / 1.25) and s["bound"] == "compute"
    assert step_seconds(hw, 989e12 * hw.mfu, True, 0.0, 0.0)["compute_s"] == pytest.approx(4 / 3)


def test_hardware_file_errors_name_the_key(tmp_path):
    from config_check import ConfigError
    from pretrain.cost_model import load_hardware

    f = tmp_path / "hw.yaml"
    f.write_text("x:\n  peak_tflops: 1\n")
    with pytest.raises(ConfigError, match=r"hardware x in .*: missing keys \['comm_efficiency'"):
        load_hardware("x", str(f))
    good = {
        k: 1
        for k in (
            "peak_tflops",
            "mfu",
            "memory_gb",
            "intra_node_gb_s",
            "inter_node_gb_s",
            "comm_efficiency",
            "latency_us",
            "hop_latency_us",
            "reserved_gb",
        )
    }
    f.write_text("x:\n" + "".join(f"  {k}: {v}\n" for k, v in {**good, "mfu": 1.5}.items()))
    with pytest.raises(ConfigError, match=r"hardware x.mfu=1.5: must be in \(0, 1\]"):
        load_hardware("x", str(f))


def test_slurm_launch_refuses_a_job_the_dry_run_predicts_out_of_memory(shards_dir, tmp_path):
    """On --cluster slurm, pretrain.launch runs the dry run before submitting; its refusal is the launch's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):  # must never run: the dry run refuses first
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\ntouch {tmp_path}/{name}.called\nexit 99\n")
        (bin_dir / name).chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.launch",
            "--cluster",
            "slurm",
            "--tasks-per-node",
            "2",
            "--gpu-memory-gb",
            "1",
            "--config",
            TINY,
            f"run_dir={tmp_path}/run",
            f"data.dir={shards_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: train.micro_batch_size=16: predicted "), line
    assert not list(tmp_path.glob("*.called")) and not (tmp_path / "run" / "submitit").exists()


def test_init_from_decides_the_model_and_a_teacher_is_noted_not_modelled(native_dir, tmp_path):
    """As in training, init_from's model config replaces the YAML's; the distillation teacher is left out."""
    from model.native_format import load_native

    out = tmp_path / "plan.json"
    r = _dryrun([*TINY_ARGS, f"init_from={native_dir}", "distill.teacher=/some/teacher"], out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "note: distill.teacher is not modelled" in r.stderr
    model = load_native(native_dir)[0]
    assert json.loads(out.read_text())["unique_params"] == sum(p.numel() for p in model.parameters())
