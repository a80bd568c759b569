"""Where a training step's time goes: the model's forward + backward under torch.profiler, and the attention
backends side by side.

    python benchmarks/profile_model.py --preset 120m --tokens 16384 --dtype bfloat16 --compile --out DIR
    python benchmarks/profile_model.py --preset tiny --tokens 1024 --dtype float32 --out DIR   # a CPU rehearsal

One batch of ``--tokens`` tokens in documents of seeded random lengths (up to ``--max-len``), 30 % of them
masked, through ``ModernAlbertForMaskedLM`` (MoL as the preset has it, ``--dense`` without) built as training
builds it on one process (``pretrain.parallelize``: the blocks compiled with ``--compile``; no FSDP, so the
routers are cast with the model). Writes ``DIR/profile.md``: the median step time of each attention backend
that runs here (eager), then the top ``--rows`` operators/kernels by device time (by CPU time on the CPU) over
``--active`` profiled steps after warm-up, and ``DIR/trace.json`` (chrome://tracing, Perfetto).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import torch

from model.attention import resolve_backend
from model.config import MoLConfig, preset
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain.parallel_dims import ParallelDims
from pretrain.parallelize import parallelize

BACKENDS = ("sdpa", "torch_varlen", "flash_attn")


def batch(tokens: int, max_len: int, vocab: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens: list[int] = []
    while sum(lens) < tokens:
        lens.append(min(int(torch.randint(16, max_len + 1, (1,), generator=g)), tokens - sum(lens)))
    ids = torch.randint(5, vocab, (tokens,), generator=g)
    pos = torch.randperm(tokens, generator=g)[: int(0.3 * tokens)].sort().values
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "input_ids": ids.to(device),
        "cu_seqlens": cu.to(device),
        "max_seqlen": max(lens),
        "mlm_positions": pos.to(device),
        "mlm_labels": ids[pos].to(device),
    }


def build(cfg, device: torch.device, dtype: torch.dtype, compile: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = ModernAlbertForMaskedLM(cfg)
    model, _ = parallelize(
        model,
        device,
        lambda select: model.init_weights(0, select=select),
        ParallelDims(1),
        compile=compile,
        fsdp=False,
        bf16=dtype == torch.bfloat16,
    )
    return model.to(dtype)


def step(model: torch.nn.Module, b: dict) -> None:
    model(**b).mlm_loss.backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model: torch.nn.Module, b: dict, device: torch.device, steps: int) -> float:
    for _ in range(2):
        step(model, b)
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step(model, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/profile_model.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="120m", choices=("tiny", "50m", "120m"))
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--max-len", type=int, default=1024, help="longest document")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--dense", action="store_true", help="without MoL")
    p.add_argument("--compile", action="store_true", help="the blocks compiled, as parallel.compile=true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per attention backend")
    p.add_argument("--active", type=int, default=3, help="profiled steps")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, a.dtype)
    cfg = preset(a.preset, vocab_size=32768)
    if a.dense:
        cfg = dataclasses.replace(cfg, mol=MoLConfig(groups=()))
    b = batch(a.tokens, min(a.max_len, cfg.max_position_embeddings), cfg.vocab_size, device)
    os.makedirs(a.out, exist_ok=True)
    where = (
        f"{a.preset}{' dense' if a.dense else ''}, {a.tokens} tokens in {len(b['cu_seqlens']) - 1} documents "
        f"(longest {b['max_seqlen']}), {len(b['mlm_positions'])} masked, {a.dtype}, "
        f"compile {'on' if a.compile else 'off'}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} "
        f"({platform.machine()}), torch {torch.__version__}"
    )
    lines = [f"# Model step profile: {where}", "", "| attention backend (eager) | median fwd+bwd s |", "|---|---|"]
    probe = torch.zeros(1, device=device, dtype=dtype)
    for name in BACKENDS:
        try:
            resolve_backend(name, probe)
        except RuntimeError as e:
            lines.append(f"| {name} | not here: {e} |")
            continue
        model = build(dataclasses.replace(cfg, attn_backend=name), device, dtype, compile=False)
        lines.append(f"| {name} | {timed(model, b, device, a.steps):.4f} |")
        del model
    model = build(cfg, device, dtype, compile=a.compile)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(2):  # warm-up (and compilation) outside the profile
        step(model, b)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(a.active):
            step(model, b)
        sync(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=a.rows, max_name_column_width=60)
    prof.export_chrome_trace(os.path.join(a.out, "trace.json"))
    lines += ["", f"Top {a.rows} by {key.replace('_', ' ')}, {a.active} steps, auto attention backend:", "", "```"]
    lines += [table.rstrip(), "```"]
    with open(os.path.join(a.out, "profile.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    print(f"-> {os.path.join(a.out, 'profile.md')}, {os.path.join(a.out, 'trace.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
