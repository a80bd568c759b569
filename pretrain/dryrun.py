"""Plan a cluster run on one CPU machine: a training step at any world size, with memory, traffic and time.

    python -m pretrain.dryrun --config pretrain/configs/120m.yaml --world-size 64 [--gpus-per-node 8]
        [--hardware h100|h200] [--gpu-memory-gb 80] [--json plan.json] [key=value overrides …]

This process stands for rank 0 of a ``--world-size`` job. It builds the model exactly as
``pretrain/train.py`` does (meta device, then ``parallelize()``: FSDP2 over all ranks, expert
parallelism over ``parallel.ep``, activation checkpointing, the bf16 policy of a GPU run), on a
simulated process group (``pretrain/simulated_pg.py``: no peers, every rank assumed to hold the same
data, every collective recorded). Then the training loop's own ``Trainer.step`` runs: ``accum``
micro-batches of forward and backward, gradient clipping and AdamW, three times with small stand-in
micro-batches: one micro-batch of ``--probe-tokens`` tokens (one segment), one of twice that, and two
micro-batches. What depends on tokens (saved activations, all-to-all payloads) is linear in them and
what depends on the micro-batches per step (FSDP gathers and reduce-scatters run per micro-batch) is
linear in those, so the three probes give the step at the configured geometry
(``train.micro_batch_size`` x the shards' sequence length, accumulated to ``train.global_batch_tokens``)
in seconds at any world size. Weights are cheap seeded values, not the real initialisation (a 120m model's
truncated-normal draw alone takes longer than the rest); shapes and sharding are the real ones.

Reported per rank: parameter, gradient and AdamW bytes (the shards this rank holds), gathered units,
saved activations, each collective kind with its count and bytes per step (intra- or inter-node from
the mesh), FLOPs per step (``model/flops.py``), and from ``pretrain/cost_model.py`` the step time,
tokens/s, MFU and the scaling efficiency against one node (a second dry run at ``--gpus-per-node``).

A config that cannot run at that size stops with one line naming the field, exit status 2: the world
size and ``parallel.ep`` (divisibility), the global batch (whole micro-batches on every rank), or the
predicted memory per GPU over ``--gpu-memory-gb`` (default: the hardware's memory).

Check the estimates against real processes (the same step on N gloo processes, every collective
counted; tests/test_dryrun.py does it at N = 2, RESULTS.md records N = 8):
    python -m pretrain.torchrun --standalone --nproc-per-node 8 -m pretrain.dryrun \\
        --config pretrain/configs/tiny.yaml --world-size 8 --seq-len 256 train.micro_batch_size=4 parallel.ep=2 \\
        --real --json real8.json
    python -m pretrain.dryrun --config pretrain/configs/tiny.yaml --world-size 8 --seq-len 256 \\
        train.micro_batch_size=4 parallel.ep=2 --compare real8.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from data_prep.errors import DataPrepError
from config_check import ConfigError
from model.init import module_generator
from model.modernalbert import ModernAlbertForMaskedLM
from model.routing import Router
from pretrain import cost_model, exit_codes
from pretrain.config import RunConfig, load_config
from pretrain.engine import Engine
from pretrain.parallel_dims import ParallelDims
from pretrain.simulated_pg import COUNTING, LEDGER, SIMULATED, register
from pretrain.train import Runtime, Trainer, check_init_tokenizer, teardown

DEFAULT_SEQ_LEN = 1024  # when data.dir has no shard index to read it from
GIB = 1 << 30


def check_world(cfg: RunConfig, world: int, seq_len: int, gpus_per_node: int) -> int:
    """The parallel dimensions at ``world`` ranks, checked before anything is built; returns the micro-batches
    per rank and step. Raises ConfigError naming the field. (``parallel.ep`` against the experts is the
    config's own check, at load time.)"""
    if world < 1:
        raise ConfigError(f"--world-size={world}: must be >= 1")
    if gpus_per_node < 1:
        raise ConfigError(f"--gpus-per-node={gpus_per_node}: must be >= 1")
    if world > gpus_per_node and world % gpus_per_node:
        raise ConfigError(f"--world-size={world}: not a whole number of nodes of --gpus-per-node={gpus_per_node}")
    ParallelDims.check(world, cfg.parallel.ep)
    return cfg.accumulation_steps(seq_len, world)


def cheap_fill(model: ModernAlbertForMaskedLM, select) -> None:
    """Seeded uniform weights with the init's scale (norms 1, biases 0): finite, varied routing, fast."""
    std = model.cfg.init_std
    for name, m in model.named_modules():
        if not select(name):
            continue
        g = module_generator(0, name)
        with torch.no_grad():
            for pname, p in m.named_parameters(recurse=False):
                if isinstance(m, nn.LayerNorm) and pname == "weight":
                    p.fill_(1.0)
                elif p.dim() >= 2 or isinstance(m, Router):
                    p.uniform_(-std * math.sqrt(3), std * math.sqrt(3), generator=g)
                else:
                    p.zero_()


class PlanningTrainer(Trainer):
    """The run as training builds it (meta device, ``parallelize``, engine), with cheap weights and no loaders:
    what the probe steps run on. Shapes, sharding and collectives are training's."""

    def fill_weights(self, model: ModernAlbertForMaskedLM, select) -> None:
        cheap_fill(model, select)

    def build_data(self) -> None:
        pass


def probe_batches(cfg: RunConfig, tokens: int):
    """Loader-shaped micro-batches of one ``tokens``-long segment, the configured share of it masked; the same
    on every rank (the dry run's symmetric job)."""
    g = torch.Generator().manual_seed(0)
    masked = max(1, round(cfg.data.mlm.mask_prob * tokens))
    i = 0
    while True:
        ids = torch.randint(5, cfg.model.vocab_size, (tokens,), generator=g)
        pos = torch.randperm(tokens, generator=g)[:masked].sort().values
        yield {
            "input_ids": ids,
            "cu_seqlens": torch.tensor([0, tokens], dtype=torch.int32),
            "max_seqlen": tokens,
            "mlm_positions": pos,
            "mlm_labels": ids[pos],
            "num_tokens": tokens,
            "position": (0, i),
        }
        i += 1


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds (a DTensor's shard, or ``t``)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The training state this rank holds after an optimizer step: its parameter shards, their gradients (the
    training step sets them to None after the step: then counted as the parameters' shape and dtype, which they
    have) and AdamW state; and the number of parameters (global sizes: DTensor.numel is global).
    ``benchmarks/bench_memory.py`` counts with it too."""

    def nbytes(t: torch.Tensor) -> int:
        return _local(t).numel() * _local(t).element_size()

    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "params": sum(nbytes(p) for p in params),
        "grads": sum(nbytes(p.grad if p.grad is not None else p) for p in params),
        "optimizer": sum(nbytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
        "unique_params": sum(p.numel() for p in params),
    }


class SavedActivations:
    """Bytes autograd keeps for the backward, per micro-batch (distinct storages; parameters excluded)."""

    def __init__(self, model: nn.Module) -> None:
        self.param_ptrs = {_local(p).untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}
        self.per_micro: list[int] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter) and not isinstance(t._base, nn.Parameter):  # weights (or views: Wᵀ)
            inner = getattr(t, "elem", t)  # a functional collective's result wraps its tensor
            try:
                key, size = inner.untyped_storage().data_ptr(), inner.untyped_storage().nbytes()
            except RuntimeError:  # another wrapper subclass without storage: its own size
                key, size = id(t), t.numel() * t.element_size()
            if key not in self.param_ptrs:
                self.seen[key] = size
        return t

    def close_micro_batch(self) -> None:
        self.per_micro.append(sum(self.seen.values()))
        self.seen = {}


class MarkedBackward:
    """An engine whose ``backward`` also calls ``after``: the end of each micro-batch, where the probe closes
    its count of saved activations. Everything else is the wrapped engine's."""

    def __init__(self, engine: Engine, after: Callable[[], None]) -> None:
        self.engine, self.after = engine, after
        self.module, self.optimizer = engine.module, engine.optimizer

    def __call__(self, **inputs):
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss, last)
        self.after()

    def step(self) -> torch.Tensor:
        return self.engine.step()

    def save(self, ckpt_dir: str, step: int, trainer_state: dict, keep: int) -> str:
        return self.engine.save(ckpt_dir, step, trainer_state, keep)

    def load(self, path: str, world: int) -> dict:
        return self.engine.load(path, world)


PROBES = ((1, 1), (2, 1), (1, 2))  # (multiple of --probe-tokens, micro-batches): base, tokens+, micro-batches+


STARTED = time.perf_counter()  # the progress lines say how long the dry run has been going


def say(what: str) -> None:
    """One progress line on stderr (each stage takes seconds to a minute; stdout keeps the report)."""
    print(f"dry run: {what} [{time.perf_counter() - STARTED:.0f} s]", file=sys.stderr, flush=True)


def run_probes(cfg: RunConfig, world: int, rank: int, seq_len: int, accum: int, probe_tokens: int) -> dict:
    """Build the run as training does, then one ``Trainer.step`` per probe in ``PROBES``: what rank ``rank``
    held, saved and sent. Needs the process group (simulated or real) to be initialised. Rank 0 says which
    stage it is in (``say``)."""
    note = say if rank == 0 else lambda what: None
    dims = ParallelDims(world, cfg.parallel.ep)
    rt = Runtime(
        index=None, device=torch.device("cpu"), rank=rank, dims=dims, accum=accum, init_state=None, seq_len=seq_len
    )
    note(f"building the model as rank 0 of {world} (meta device, parallelize, cheap weights) …")
    trainer = PlanningTrainer(cfg, rt, preemption=None)
    probes = []
    engine = trainer.engine
    for i, (scale, micro) in enumerate(PROBES):
        tokens = scale * probe_tokens
        note(f"probe step {i + 1}/{len(PROBES)}: {micro} micro-batch(es) of {tokens} tokens …")
        saved = SavedActivations(trainer.model)
        trainer.engine, rt.accum = MarkedBackward(engine, saved.close_micro_batch), micro
        LEDGER.records, LEDGER.on = [], True
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            trainer.step(probe_batches(cfg, tokens), is_log=False)
        LEDGER.on = False  # the metrics' read below happens on log steps only: not part of a step's collectives
        record = trainer.flush()[-1][0]
        probes.append(
            {
                "tokens": tokens,
                "micro_batches": micro,
                "loss": record["loss"],
                "activations": max(saved.per_micro),
                "collectives": [(c.kind, list(c.ranks), c.in_bytes, c.out_bytes) for c in LEDGER.records],
            }
        )
    trainer.engine, rt.accum = engine, accum
    return {"state": state_bytes(trainer.model, trainer.engine.optimizer), "probes": probes}


def _buckets(collectives: list) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for kind, ranks, in_b, out_b in collectives:
        b = out[(kind, tuple(ranks))]
        b[0], b[1], b[2] = b[0] + 1, b[1] + in_b, b[2] + out_b
    return out


def extrapolate(probes: list[dict], tokens: int, micro_batches: int) -> tuple[list[dict], float]:
    """One step's collectives per (kind, group) and the saved activations per micro-batch at ``tokens`` per
    micro-batch and ``micro_batches`` per step.

    Per group and kind, count and bytes = per step + micro_batches x (per micro-batch at the base probe
    + slope x (tokens - base tokens)): the base, tokens+ and micro-batches+ probes give the three terms.
    Exact when each micro-batch runs the same collectives and payloads are linear in tokens (FSDP's do not
    depend on tokens; all-to-all payloads are tokens x top-k rows).
    """
    base, more_tokens, more_micro = probes
    t0, dt = base["tokens"], more_tokens["tokens"] - base["tokens"]
    b0, bt, bm = (_buckets(p["collectives"]) for p in (base, more_tokens, more_micro))
    if set(b0) != set(bt) or set(b0) != set(bm):
        raise RuntimeError("the probe steps ran collectives on different groups; the dry run cannot scale them")
    rows = []
    for key in b0:
        per_micro = [m - b for m, b in zip(bm[key], b0[key])]
        slope = [(t - b) / dt for t, b in zip(bt[key], b0[key])]
        per_step = [b - m for b, m in zip(b0[key], per_micro)]
        count, in_b, out_b = (
            c + micro_batches * (m + s * (tokens - t0)) for c, m, s in zip(per_step, per_micro, slope)
        )
        rows.append(
            {"kind": key[0], "ranks": list(key[1]), "count": round(count), "in_bytes": in_b, "out_bytes": out_b}
        )
    acts = base["activations"] + (more_tokens["activations"] - base["activations"]) * (tokens - t0) / dt
    return rows, acts


def summarize(collectives: list[dict], hw: cost_model.Hardware, gpus_per_node: int) -> list[dict]:
    """Per (kind, intra/inter node, group size): count, bytes sent per step, bytes on the wire, seconds."""
    rows: dict[tuple, dict] = defaultdict(lambda: {"count": 0, "bytes": 0.0, "wire_bytes": 0.0, "seconds": 0.0})
    for c in collectives:
        n, k = len(c["ranks"]), max(c["count"], 1)
        inter = len({r // gpus_per_node for r in c["ranks"]}) > 1
        row = rows[(c["kind"], "inter" if inter else "intra", n)]
        row["count"] += c["count"]
        row["bytes"] += c["in_bytes"]
        row["wire_bytes"] += cost_model.wire_bytes(c["kind"], n, c["in_bytes"], c["out_bytes"])
        # priced per call (latency each time), on the group's mean payload
        row["seconds"] += k * cost_model.collective_seconds(
            hw, c["kind"], n, inter, c["in_bytes"] / k, c["out_bytes"] / k
        )
    return [{"kind": k, "scope": s, "group_size": n, **v} for (k, s, n), v in sorted(rows.items())]


def plan(
    cfg: RunConfig,
    world: int,
    gpus_per_node: int,
    seq_len: int,
    hw: cost_model.Hardware,
    probe_tokens: int,
    measured: dict,
) -> dict:
    """The report: memory per GPU, collectives per step, FLOPs and the predicted step (cost model)."""
    from model.flops import TrainingFlops

    accum = cfg.accumulation_steps(seq_len, world)
    micro_tokens = cfg.train.micro_batch_size * seq_len
    collectives, acts = extrapolate(measured["probes"], micro_tokens, accum)
    kinds = summarize(collectives, hw, gpus_per_node)
    state = measured["state"]
    base = measured["probes"][0]["collectives"]  # FSDP's payloads do not depend on tokens
    gathers = [out_b for kind, _, _, out_b in base if kind == "all_gather"]
    scatters = [in_b for kind, _, in_b, _ in base if kind == "reduce_scatter"]
    transient = 2 * max(gathers, default=0) + max(scatters, default=0)
    memory = {
        "params": state["params"],
        "grads": state["grads"],
        "optimizer": state["optimizer"],
        "gathered_units": transient,
        "activations": acts,
        "reserved": hw.reserved_gb * cost_model.GB,
    }
    memory["total"] = sum(memory.values())
    cu = torch.arange(cfg.train.micro_batch_size + 1, dtype=torch.int32) * seq_len  # one document per sample
    masked = round(cfg.data.mlm.mask_prob * micro_tokens)
    flops = TrainingFlops(cfg.model)(cu, masked) * accum
    fsdp_s = sum(k["seconds"] for k in kinds if k["kind"] in ("all_gather", "reduce_scatter"))
    ep_s = sum(k["seconds"] for k in kinds if k["kind"] == "all_to_all")
    other_s = sum(k["seconds"] for k in kinds if k["kind"] not in ("all_gather", "reduce_scatter", "all_to_all"))
    step = cost_model.step_seconds(hw, flops, cfg.parallel.activation_checkpointing, fsdp_s, ep_s + other_s)
    tokens_per_rank = micro_tokens * accum
    return {
        "world_size": world,
        "gpus_per_node": gpus_per_node,
        "nodes": -(-world // gpus_per_node),
        "hardware": hw.name,
        "unique_params": state["unique_params"],
        "ep": cfg.parallel.ep,
        "seq_len": seq_len,
        "micro_batch_size": cfg.train.micro_batch_size,
        "accumulation_steps": accum,
        "global_batch_tokens": tokens_per_rank * world,
        "precision": "bf16" if _bf16(cfg) else "fp32",
        "activation_checkpointing": cfg.parallel.activation_checkpointing,
        "probe_tokens": probe_tokens,
        "probe_loss": measured["probes"][0]["loss"],
        "memory_bytes": memory,
        "collectives": kinds,
        "flops_per_rank_step": flops,
        "prediction": {
            **step,
            "fsdp_comm_s": fsdp_s,
            "ep_comm_s": ep_s,
            "other_comm_s": other_s,
            "tokens_per_s": tokens_per_rank * world / step["step_s"],
            "tokens_per_s_per_gpu": tokens_per_rank / step["step_s"],
        },
    }


def _bf16(cfg: RunConfig) -> bool:
    return cfg.parallel.bf16("cuda")  # the dry run plans a GPU run: "auto" means bf16 there


def gpu_precision(cfg: RunConfig) -> RunConfig:
    """The dry run plans a GPU run: ``parallel.precision=auto`` means bf16 there (FSDP2's bf16 policy).
    ``parallel.compile`` is not applied (Inductor on CPU takes minutes; shapes and collectives do not change,
    compiled kernels may save somewhat less activation memory than the eager probe measures)."""
    if cfg.parallel.precision == "auto":
        cfg.parallel.precision = "bf16" if _bf16(cfg) else "fp32"
    cfg.parallel.compile = False
    return cfg


def simulate(cfg: RunConfig, world: int, seq_len: int, probe_tokens: int, gpus_per_node: int) -> dict:
    """``run_probes`` as rank 0 of ``world`` on the simulated process group (created and destroyed here)."""
    accum = check_world(cfg, world, seq_len, gpus_per_node)
    if cfg.engine != "fsdp2":
        raise ConfigError(f"engine={cfg.engine}: the dry run models the FSDP2 engine only")
    register()
    dist.init_process_group(SIMULATED, store=dist.HashStore(), rank=0, world_size=world)
    try:
        return run_probes(cfg, world, 0, seq_len, accum, probe_tokens)
    finally:
        teardown(agreed=False)  # the model's objects are collected while Python runs (see teardown)


def format_report(r: dict) -> str:
    m = r["memory_bytes"]
    p = r["prediction"]
    lines = [
        f"dry run: {r['world_size']} ranks ({r['nodes']} node(s) of {r['gpus_per_node']} GPUs), {r['hardware']}, "
        f"{r['unique_params'] / 1e6:.1f} M parameters, ep {r['ep']}, {r['precision']}, activation checkpointing "
        f"{'on' if r['activation_checkpointing'] else 'off'}",
        f"batch: {r['micro_batch_size']} x {r['seq_len']} tokens per micro-batch, {r['accumulation_steps']} "
        f"micro-batch(es) per rank and step, {r['global_batch_tokens']:,} tokens per step",
        "",
        "memory per GPU (GiB)",
        *(
            f"  {k:<16}{m[k] / GIB:9.2f}"
            for k in ("params", "grads", "optimizer", "gathered_units", "activations", "reserved")
        ),
        f"  {'total':<16}{m['total'] / GIB:9.2f}",
        "",
        "collectives per step (rank 0)",
        f"  {'kind':<15}{'scope':<7}{'ranks':>6}{'count':>7}{'MiB sent':>12}{'MiB on wire':>13}{'ms':>9}",
        *(
            f"  {c['kind']:<15}{c['scope']:<7}{c['group_size']:>6}{c['count']:>7}{c['bytes'] / 2**20:>12.1f}"
            f"{c['wire_bytes'] / 2**20:>13.1f}{1e3 * c['seconds']:>9.2f}"
            for c in r["collectives"]
        ),
        "",
        f"FLOPs per rank and step: {r['flops_per_rank_step']:.3e}",
        f"predicted step: {p['step_s'] * 1e3:.1f} ms (compute {p['compute_s'] * 1e3:.1f}, FSDP comm "
        f"{p['fsdp_comm_s'] * 1e3:.1f} overlapped, all-to-all {p['ep_comm_s'] * 1e3:.1f}, all-reduce "
        f"{p['other_comm_s'] * 1e3:.1f}); bound by {p['bound']}",
        f"predicted throughput: {p['tokens_per_s']:,.0f} tokens/s ({p['tokens_per_s_per_gpu']:,.0f} per GPU), "
        f"MFU {100 * p['mfu']:.1f} %",
    ]
    if r.get("scaling_efficiency") is not None:
        lines.append(
            f"scaling efficiency against 1 node ({r['gpus_per_node']} GPUs): {100 * r['scaling_efficiency']:.1f} %"
        )
    lines.append(f"(dry run took {r['dry_run_seconds']:.1f} s; cost model: pretrain/configs/hardware.yaml)")
    return "\n".join(lines)


def _init_config(cfg: RunConfig) -> None:
    from model.config import ModelConfig
    from model.native_format import InputError, read_config

    try:
        doc = read_config(cfg.init_from)
        cfg.model = ModelConfig.from_dict(doc["model"])
    except InputError as e:
        raise ConfigError(f"init_from: {e}") from None
    if os.path.isfile(os.path.join(cfg.data.dir, "index.json")):  # the job would refuse another tokenizer's shards
        from pretrain.shard_cache import load_index

        check_init_tokenizer(cfg, load_index(cfg.data.dir), doc)


def _seq_len_and_vocab(cfg: RunConfig, seq_len: int | None) -> int:
    """The shards' sequence length and vocabulary when data.dir holds an index here, else ``--seq-len``."""
    index_path = os.path.join(cfg.data.dir, "index.json")
    if os.path.isfile(index_path):
        from pretrain.shard_cache import load_index

        index = load_index(cfg.data.dir)
        cfg.model.vocab_size = index.vocab_size
        return seq_len or index.seq_len
    return seq_len or DEFAULT_SEQ_LEN


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.dryrun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="YAML config (pretrain/configs/50m.yaml, 120m.yaml, …)")
    p.add_argument("--world-size", type=int, required=True, help="ranks (GPUs) of the planned job")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--hardware", default="h100", help="an entry of --hardware-file (h100, h200)")
    p.add_argument("--hardware-file", default=cost_model.DEFAULT_FILE)
    p.add_argument("--mfu", type=float, default=None, help="override the hardware's assumed MFU (cost model)")
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="refuse above this (default: the hardware's)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help=f"tokens per sample (default: the shards' in data.dir, else {DEFAULT_SEQ_LEN})",
    )
    p.add_argument("--probe-tokens", type=int, default=16, help="stand-in micro-batch size (then twice that)")
    p.add_argument("--no-reference", action="store_true", help="skip the 1-node run for the scaling efficiency")
    p.add_argument("--json", help="also write the report here")
    p.add_argument(
        "--real",
        action="store_true",
        help="under torchrun: the same step on real gloo processes, collectives counted (a check)",
    )
    p.add_argument(
        "--compare",
        metavar="REAL_JSON",
        help="check this dry run against a --real run's --json: state bytes and every collective",
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    a = p.parse_args(argv)
    started = time.time()
    try:
        cfg = gpu_precision(load_config(a.config, a.overrides))
        hw = cost_model.load_hardware(a.hardware, a.hardware_file, mfu=a.mfu)
        seq_len = _seq_len_and_vocab(cfg, a.seq_len)
        if cfg.distill.teacher:
            print(
                "note: distill.teacher is not modelled (its forward and memory are not in the estimates)",
                file=sys.stderr,
            )
            cfg.distill.teacher = ""
        if cfg.init_from:  # training takes the model config from there (the weights do not matter here)
            _init_config(cfg)
        if a.real:
            measured, world = _real(cfg, a.world_size, seq_len, a.probe_tokens, a.gpus_per_node)
            if measured is None:
                return 0  # not rank 0
        else:
            measured, world = simulate(cfg, a.world_size, seq_len, a.probe_tokens, a.gpus_per_node), a.world_size
        report = plan(cfg, world, a.gpus_per_node, seq_len, hw, a.probe_tokens, measured)
        report["measured"] = measured
        report["scaling_efficiency"] = None
        if not a.real and not a.no_reference and world > a.gpus_per_node:
            say(f"the 1-node reference: the same dry run at world size {a.gpus_per_node} (scaling efficiency) …")
            ref = _reference(a, world)
            if ref is not None:
                report["scaling_efficiency"] = (
                    report["prediction"]["tokens_per_s_per_gpu"] / ref["prediction"]["tokens_per_s_per_gpu"]
                )
        report["dry_run_seconds"] = time.time() - started
        print(format_report(report), flush=True)
        if a.json:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
        if a.compare:
            with open(a.compare, encoding="utf-8") as f:
                differences = compare(measured, json.load(f)["measured"])
            print("\n".join(differences) or f"equal to {a.compare}: state bytes and every collective of every probe")
            if differences:
                return 1
        limit = a.gpu_memory_gb if a.gpu_memory_gb is not None else hw.memory_gb
        total = report["memory_bytes"]["total"] / cost_model.GB
        if total > limit:
            biggest = max(
                ("params", "grads", "optimizer", "gathered_units", "activations"),
                key=lambda k: report["memory_bytes"][k],
            )
            raise ConfigError(
                f"train.micro_batch_size={cfg.train.micro_batch_size}: predicted {total:.1f} GB per GPU "
                f"at world size {world} exceeds --gpu-memory-gb {limit:g} (largest part: {biggest}); "
                "lower it, or set parallel.activation_checkpointing=true"
            )
    except (ConfigError, DataPrepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.USER_ERROR
    return 0


def _reference(a: argparse.Namespace, world: int) -> dict | None:
    """The same dry run at one node (a fresh process: one process group per process), for scaling efficiency."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ref.json")
        cmd = [
            sys.executable,
            "-m",
            "pretrain.dryrun",
            "--config",
            a.config,
            "--world-size",
            str(a.gpus_per_node),
            "--gpus-per-node",
            str(a.gpus_per_node),
            "--hardware",
            a.hardware,
            "--hardware-file",
            a.hardware_file,
            "--probe-tokens",
            str(a.probe_tokens),
            "--gpu-memory-gb",
            "1e9",
            "--no-reference",
            "--json",
            out,
            *(["--mfu", str(a.mfu)] if a.mfu is not None else []),
            *(["--seq-len", str(a.seq_len)] if a.seq_len else []),
            *a.overrides,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:  # e.g. the global batch does not split over one node: no reference
            print(f"note: no 1-node reference ({(r.stderr.strip().splitlines() or ['?'])[-1]})", file=sys.stderr)
            return None
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def _real(cfg: RunConfig, world: int, seq_len: int, probe_tokens: int, gpus_per_node: int):
    """``run_probes`` on real gloo processes (under torchrun), collectives counted; rank 0 returns them."""
    if int(os.environ.get("WORLD_SIZE", "1")) != world:
        raise ConfigError(
            f"--real --world-size={world}: launch it with "
            f"python -m pretrain.torchrun --standalone --nproc-per-node {world} -m pretrain.dryrun … --real"
        )
    accum = check_world(cfg, world, seq_len, gpus_per_node)
    register()
    dist.init_process_group(COUNTING)
    agreed = False
    try:
        rank = dist.get_rank()
        mine = run_probes(cfg, world, rank, seq_len, accum, probe_tokens)
        every: list = [None] * world
        dist.all_gather_object(every, mine)
        agreed = True
    finally:
        teardown(agreed)  # barrier, then the model's objects collected while Python runs: no abort at exit
    return (rank_mean(every), world) if rank == 0 else (None, world)


def compare(sim: dict, real: dict) -> list[str]:
    """Where a dry run's measurements differ from a real run's (``--real``): empty when they are equal."""
    out = [
        f"state {k}: dry run {sim['state'][k]}, real {real['state'][k]}"
        for k in sim["state"]
        if sim["state"][k] != real["state"].get(k)
    ]
    if len(sim["probes"]) != len(real["probes"]):
        return [*out, f"probes: dry run {len(sim['probes'])}, real {len(real['probes'])}"]
    for i, (ps, pr) in enumerate(zip(sim["probes"], real["probes"])):
        if len(ps["collectives"]) != len(pr["collectives"]):
            out.append(f"probe {i}: {len(ps['collectives'])} collectives, real {len(pr['collectives'])}")
            continue
        for j, (a, b) in enumerate(zip(ps["collectives"], pr["collectives"])):
            if list(a[:2]) != list(b[:2]) or [float(x) for x in a[2:]] != [float(x) for x in b[2:]]:
                out.append(f"probe {i} collective {j}: dry run {a}, real {b}")
    return out


def rank_mean(per_rank: list[dict]) -> dict:
    """Rank 0's state with every probe's payloads and activations averaged over the ranks.

    The simulated job assumes received = sent in every all-to-all; in a real one each rank receives what
    its routing sends it, but every token-expert pair leaves one rank and arrives at one, so the mean over
    ranks is the simulated value. Everything else is the same on every rank of a symmetric job.
    """
    out = {"state": per_rank[0]["state"], "probes": [], "per_rank": per_rank}
    for i, p0 in enumerate(per_rank[0]["probes"]):
        ps = [r["probes"][i] for r in per_rank]
        rows = [
            (
                k,
                ranks,
                sum(p["collectives"][j][2] for p in ps) / len(ps),
                sum(p["collectives"][j][3] for p in ps) / len(ps),
            )
            for j, (k, ranks, _, _) in enumerate(p0["collectives"])
        ]
        out["probes"].append({**p0, "collectives": rows, "activations": sum(p["activations"] for p in ps) / len(ps)})
    return out


if __name__ == "__main__":
    sys.exit(main())
