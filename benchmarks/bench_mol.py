"""The grouped MoL FFN, forward + backward: one ``F.grouped_mm`` per expert factor vs a matmul per expert.

    python benchmarks/bench_mol.py [--tokens 4096] [--steps 20] [--dtype float32|bfloat16] [--device cpu|cuda]

The ``50m`` preset's MoL layer (d 768, I 1152 GeGLU, 8 experts, rank 16, top-2) on random tokens with a
learned router. ``loop`` is the reference path (block sizes read on the host with ``.tolist()``: a device
sync on GPU); ``grouped_mm`` keeps the block ends on the device. The two alternate; the median step is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from model.config import preset
from model.mol import MoLFFN, grouped_mm_fits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench_mol.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    a = p.parse_args(argv)
    cfg = preset("50m")
    dtype, dev = getattr(torch, a.dtype), torch.device(a.device)
    torch.manual_seed(0)
    m = MoLFFN(cfg.hidden_size, cfg.intermediate_size, cfg.mol).to(dev, dtype)
    with torch.no_grad():
        m.B1.normal_(std=0.02)
        m.B2.normal_(std=0.02)
        m.router.weight.normal_(std=0.5)
    x = torch.randn(a.tokens, cfg.hidden_size, device=dev, dtype=dtype, requires_grad=True)
    r = m.router(x)
    assert grouped_mm_fits(x, m.A2), "this layout/dtype/device does not take the grouped_mm path"

    def step(fast: bool) -> float:
        m.grouped_ffn.grouped_mm = fast
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = m.grouped(x, r.topk_idx_TK, r.topk_w_TK.detach())  # the router is not timed
        out.float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"loop": [], "grouped_mm": []}
    for _ in range(3):  # warm-up
        step(False), step(True)
    for _ in range(a.steps):
        times["loop"].append(step(False))
        times["grouped_mm"].append(step(True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"MoL FFN fwd+bwd, {a.tokens} tokens, d {cfg.hidden_size}, I {cfg.intermediate_size}, "
        f"E {cfg.mol.num_experts}, r {cfg.mol.rank}, top-{cfg.mol.top_k}, {a.dtype} on {a.device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    for k, v in med.items():
        print(f"  {k:<11} {v * 1e3:8.2f} ms  ({a.tokens / v:,.0f} tokens/s)")
    print(f"  loop / grouped_mm = {med['loop'] / med['grouped_mm']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
