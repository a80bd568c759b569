"""The grouped MoL FFN, forward + backward: one ``F.grouped_mm`` per expert factor vs a matmul per expert.

    python benchmarks/bench_mol.py [--preset 50m|120m] [--tokens 4096] [--steps 20] [--dtype float32|bfloat16]
        [--device cpu|cuda]
    python benchmarks/bench_mol.py --count [--preset 120m] [--tokens 16384] [--dtype bfloat16]
    python benchmarks/bench_mol.py --count --compile --preset 120m --tokens 16384 --dtype bfloat16
    python benchmarks/bench_mol.py --compile --preset 120m --tokens 16384 --dtype bfloat16   # on a GPU

The preset's MoL layer (50m: d 768, I 1152 GeGLU, 8 experts, rank 16, top-2) on random tokens with a
learned router. ``loop`` is the reference path (block sizes read on the host with ``.tolist()``: a device
sync on GPU); ``grouped_mm`` keeps the block ends on the device; ``slots`` is ``mol.compute=slots`` (a masked
dense matmul per routing slot); ``dense`` is the same FFN without experts. The four alternate; the median step
is reported.

``--count`` times nothing: it runs one forward + backward of the dense FFN and of both MoL forms under a
``TorchDispatchMode`` that counts the aten operators launched and the bytes their outputs write (views write
nothing; in-place ops write their output). Both numbers are exact and the same on any device, so a CPU run
tells what a GPU step launches and moves; the extra bytes of MoL are also given in units of its unavoidable
K-fold intermediate activation (T·K rows of Wi's output width).

``--count --compile`` counts what the compiled step moves instead, where the eager count cannot see fusion:
each FFN's forward and backward through ``torch.compile`` (Inductor, caches off so every graph is lowered),
and Inductor's own tally after fusion (``graph.count_bytes``): the kernels it generates, the matmuls it calls
(extern kernels) and the bytes every scheduled node reads and writes, matmuls included. The fusion decisions
are Inductor's CPU backend's; its GPU backend fuses the same pointwise chains, so the figures stand for a
compiled GPU step up to layout details, not as a measurement of one.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model.config import preset
from model.mol import DenseFFN, MoLFFN, grouped_mm_fits, wi_width


class OpCounter(TorchDispatchMode):
    """Every aten operator call under it: how many, and the bytes of the tensors they write."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.bytes_written = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out  # a view: metadata only
        self.ops[str(func.overloadpacket.__name__)] += 1
        self.bytes_written += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


_COMPILED: dict[str, object] = {}


def run(
    path: str, m: MoLFFN, dense: DenseFFN, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, compile: bool = False
) -> None:
    """One forward + backward of ``path``: dense, loop (per-expert matmuls), grouped_mm, or slots; with
    ``compile``, the forward through ``torch.compile`` (one compiled function per path)."""
    m.grouped_ffn.grouped_mm = path != "loop"
    m.grouped_ffn.compute = "slots" if path == "slots" else "grouped"

    def forward(x, idx, w):
        return dense(x) if path == "dense" else m.grouped(x, idx, w)

    fn = _COMPILED.setdefault(path, torch.compile(forward)) if compile else forward
    out = fn(x, idx, w)  # type: ignore[operator]
    out.float().square().mean().backward()


PAIRS = "dense FFN on the T·K pairs"


def counted_runs(m: MoLFFN, x: torch.Tensor) -> list[tuple[str, str, torch.Tensor]]:
    """What the counts compare: the dense FFN on the T tokens, the dense FFN on T·K rows (every (token, expert)
    pair through the shared FFN: the K-fold activation's own cost, the floor MoL is measured against), and the
    two MoL forms on the T tokens."""
    pairs = x.detach().repeat(m.cfg.top_k, 1).requires_grad_()
    return [
        ("dense FFN", "dense", x),
        (PAIRS, "dense", pairs),
        ("MoL, grouped", "grouped_mm", x),
        ("MoL, slots", "slots", x),
    ]


def count(m: MoLFFN, dense: DenseFFN, x: torch.Tensor) -> dict[str, OpCounter]:
    """One forward + backward of each FFN (the router's output taken as given), counted."""
    r = m.router(x)
    idx, w = r.topk_idx_TK, r.topk_w_TK.detach()
    out: dict[str, OpCounter] = {}
    for name, path, x_in in counted_runs(m, x):
        with OpCounter() as c:
            run(path, m, dense, x_in, idx, w)
        out[name] = c
    return out


def count_compiled(m: MoLFFN, dense: DenseFFN, x: torch.Tensor) -> dict[str, dict[str, int]]:
    """One compiled forward + backward of each FFN: Inductor's kernels, extern (matmul) calls and bytes read
    + written after fusion, summed over the forward and the backward graph."""
    import logging

    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import compile_fx, metrics

    # Inductor tallies bytes only with its metrics log enabled; the records go nowhere
    log = compile_fx.inductor_metrics_log
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    r = m.router(x)
    idx, w = r.topk_idx_TK, r.topk_w_TK.detach()
    out: dict[str, dict[str, int]] = {}
    try:
        with (
            inductor_config.patch(fx_graph_cache=False),  # a cached graph is not lowered, so not counted
            functorch_config.patch(enable_autograd_cache=False),
        ):
            for name, path, x_in in counted_runs(m, x):
                torch._dynamo.reset()
                _COMPILED.clear()
                metrics.reset()
                run(path, m, dense, x_in, idx, w, compile=True)
                nodes = [n for n, _ in metrics.nodes_num_elem]
                out[name] = {
                    "kernels": metrics.generated_kernel_count,
                    "extern": sum(type(n).__name__ == "ExternKernelSchedulerNode" for n in nodes),
                    "bytes": metrics.num_bytes_accessed,
                }
    finally:
        log.setLevel(level)
        log.propagate = propagate
    return out


EXTRA_HEAD = "extra over the dense FFN, in T·K·F activations | ÷ the dense FFN's own extra on the T·K pairs |"


def extra_cells(nbytes: dict[str, int], name: str, unit: int) -> str:
    """A row's bytes beyond the dense FFN's, in units of the K-fold activation and as a multiple of what the
    dense FFN itself costs on every pair (the floor: any MoL form computes at least that)."""
    if name == "dense FFN":
        return " | |"
    extra, floor = nbytes[name] - nbytes["dense FFN"], nbytes[PAIRS] - nbytes["dense FFN"]
    return f"{extra / unit:.2f} | {extra / floor:.2f} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench_mol.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--preset", default="50m", choices=("tiny", "50m", "120m"))
    p.add_argument("--count", action="store_true", help="count aten ops and bytes written instead of timing")
    p.add_argument(
        "--compile",
        action="store_true",
        help="time the forwards through torch.compile (no loop path); with --count, count the compiled kernels' bytes",
    )
    a = p.parse_args(argv)
    cfg = preset(a.preset)
    dtype, dev = getattr(torch, a.dtype), torch.device(a.device)
    torch.manual_seed(0)
    m = MoLFFN(cfg.hidden_size, cfg.intermediate_size, cfg.mol).to(dev, dtype)
    dense = DenseFFN(cfg.hidden_size, cfg.intermediate_size).to(dev, dtype)
    with torch.no_grad():
        m.B1.normal_(std=0.02)
        m.B2.normal_(std=0.02)
        m.router.weight.normal_(std=0.5)
        dense.load_state_dict({k: v for k, v in m.state_dict().items() if k.startswith(("Wi.", "Wo."))})
    x = torch.randn(a.tokens, cfg.hidden_size, device=dev, dtype=dtype, requires_grad=True)
    r = m.router(x)
    assert grouped_mm_fits(x, m.A2), "this layout/dtype/device does not take the grouped_mm path"
    cpu = platform.processor() or platform.machine()
    where = (
        f"{a.tokens} tokens, {a.preset}: d {cfg.hidden_size}, I {cfg.intermediate_size}, E {cfg.mol.num_experts}, "
        f"r {cfg.mol.rank}, top-{cfg.mol.top_k}, {a.dtype} on {a.device} ({cpu}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    K, F_ = cfg.mol.top_k, wi_width(cfg.intermediate_size, cfg.ffn_activation)
    unit = a.tokens * K * F_ * x.element_size()  # the K-fold intermediate activation h_NF
    if a.count and a.compile:
        compiled = count_compiled(m, dense, x)
        print(f"FFN forward + backward, compiled (Inductor after fusion), {where}")
        print("| FFN | generated kernels | matmul calls | bytes read + written | " + EXTRA_HEAD)
        print("|---|---|---|---|---|---|")
        for name, c in compiled.items():
            cells = extra_cells({k: v["bytes"] for k, v in compiled.items()}, name, unit)
            print(f"| {name} | {c['kernels']} | {c['extern']} | {c['bytes'] / 2**20:,.1f} MiB | {cells}")
        return 0
    if a.count:
        counted = count(m, dense, x)
        print(f"FFN forward + backward, aten ops and bytes written, {where}")
        print("| FFN | aten ops | bytes written | " + EXTRA_HEAD)
        print("|---|---|---|---|---|")
        for name, c in counted.items():
            cells = extra_cells({k: v.bytes_written for k, v in counted.items()}, name, unit)
            print(f"| {name} | {sum(c.ops.values())} | {c.bytes_written / 2**20:,.1f} MiB | {cells}")
        for name, c in counted.items():
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in c.ops.most_common()))
        return 0

    def step(path: str) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        run(path, m, dense, x, r.topk_idx_TK, r.topk_w_TK.detach(), a.compile)  # the router is not timed
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    paths = ("grouped_mm", "slots", "dense") if a.compile else ("loop", "grouped_mm", "slots", "dense")
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(3):  # warm-up
        for k in times:
            step(k)
    for _ in range(a.steps):
        for k in times:
            times[k].append(step(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"FFN fwd+bwd{', compiled' if a.compile else ''}, {where}")
    for k, v in med.items():
        print(f"  {k:<11} {v * 1e3:8.2f} ms  ({a.tokens / v:,.0f} tokens/s)")
    if "loop" in med:
        print(f"  loop / grouped_mm = {med['loop'] / med['grouped_mm']:.2f}")
    for k in ("grouped_mm", "slots"):
        print(f"  {k} / dense = {med[k] / med['dense']:.2f}  (the MoL cost; 1.00 = free)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
