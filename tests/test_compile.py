"""Compiled blocks trace whole: no graph break and a bounded number of graphs, as ``parallelize`` builds them.

Each configuration runs in its own process (dynamo's caches and counters are per process): the tiny preset,
parallelised by ``pretrain.parallelize`` on a 1-rank gloo group (FSDP2 units, the bf16 policy, routers as
the bf16 runs keep them), compiled, then six training steps whose token count, segment count and longest
segment all change. ``fullgraph=True`` makes a graph break an error in the blocks that must trace whole;
the counters catch one anywhere else. The attention there is the CPU reference as one custom op, so the
trace is the graph a GPU compiles with flash-attn in its place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.abspath(__file__)

# (name, groups K x depth G, MoL groups, activation checkpointing), all bf16, the precision of GPU runs (fp32
# compiles, MoL in pieces with its warning, in tests/test_train.py's compiled run). The MoL case has the shape of
# 50m/120m at tiny widths: a dense group, then MoL groups whose applications repeat each kind several times
# (the graphs must not depend on what was recorded before), with activation checkpointing (the recompute must
# run the graph the forward ran).
CASES = [("dense-bf16", 2, 2, (), False), ("mol-bf16-ac", 3, 3, (1, 2), True)]


def _worker(name: str) -> dict:
    import dataclasses

    import torch.distributed as dist
    from torch._dynamo.utils import counters

    from model.config import preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from pretrain.parallel_dims import ParallelDims
    from pretrain.parallelize import compile_bound, parallelize

    _, K, G, groups, ac = next(c for c in CASES if c[0] == name)
    store = os.environ["STORE"]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    tiny = preset("tiny", vocab_size=512)
    cfg = dataclasses.replace(tiny, num_groups=K, group_depth=G, mol=dataclasses.replace(tiny.mol, groups=groups))
    cfg = cfg.validate()
    losses: dict[str, list[float]] = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = ModernAlbertForMaskedLM(cfg)
        model, _ = parallelize(
            model,
            torch.device("cpu"),
            lambda select: model.init_weights(0, select=select),
            ParallelDims(1),
            compile=mode == "compiled",
            activation_checkpointing=ac,
            bf16=True,
        )
        model.eval()  # no router jitter: eager and compiled see the same routing
        gen = torch.Generator().manual_seed(1)
        out = []
        for lens in ([30, 50], [64, 16, 20], [128], [10, 10, 10, 10, 60], [33, 7], [100, 90, 5]):
            T = sum(lens)
            ids = torch.randint(5, 500, (T,), generator=gen)
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
            pos = torch.arange(0, T, 7)
            o = model(input_ids=ids, cu_seqlens=cu, max_seqlen=max(lens), mlm_positions=pos, mlm_labels=ids[pos])
            o.mlm_loss.backward()
            out.append(float(o.mlm_loss))
        losses[mode] = out
    dist.destroy_process_group()
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "break_reasons": [str(k)[:200] for k in counters["graph_break"]],
        "graphs": counters["stats"]["unique_graphs"],
        "bound": compile_bound(cfg),
        "losses": losses,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_compiled_blocks_have_no_graph_break_and_bounded_graphs(name, tmp_path):
    env = {**os.environ, "STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, HERE, name], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["graph_breaks"] == 0, got["break_reasons"]
    # six training steps of changing shapes: each kind of block application compiles at most twice (static,
    # dynamic); the bound also has room for evaluation's graphs
    assert 0 < got["graphs"] <= got["bound"], got
    eager, compiled = got["losses"]["eager"], got["losses"]["compiled"]
    assert max(abs(a - b) for a, b in zip(eager, compiled)) < 0.05, (eager, compiled)  # bf16: fusions round differently


def test_compile_bound_counts_the_kinds_of_application():
    from model.config import preset
    from pretrain.parallelize import application_kinds, compile_bound

    tiny = preset("tiny")  # K 2 x G 2, global every 3rd layer, MoL in group 1
    assert application_kinds(tiny) == {
        ((False, False, True), True, True),  # layer 0
        ((False, False, True), False, False),  # layer 1
        ((True, False, False), False, False),  # layer 2
        ((True, False, False), False, True),  # layer 3
    }
    assert compile_bound(tiny) == 16  # x 2 shapes (static, dynamic) x 2 modes (training, evaluation)
    for name in ("50m", "120m"):  # the shipped presets: 6 kinds of application each
        assert compile_bound(preset(name)) == 24


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_attention_op_equals_the_reference_forward_and_backward(dtype):
    from model.attention import sdpa_varlen, sdpa_varlen_op

    torch.manual_seed(0)
    lens = [7, 12, 7, 30, 1]
    T, H, Dh = sum(lens), 2, 8
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    for window in (None, 3):
        qkv = [torch.randn(T, H, Dh, dtype=dtype, requires_grad=True) for _ in range(3)]
        want = sdpa_varlen(*qkv, cu, max(lens), window)
        grad = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, qkv, grad)
        got = sdpa_varlen_op(*qkv, cu, max(lens), -1 if window is None else window)
        got_grads = torch.autograd.grad(got, qkv, grad)
        atol = 1e-5 if dtype == torch.float32 else 3e-2
        assert torch.allclose(got, want, atol=atol)
        for g, w in zip(got_grads, want_grads):
            assert torch.allclose(g.float(), w.float(), atol=atol), float((g.float() - w.float()).abs().max())


def test_a_grouped_matmul_that_cannot_use_grouped_mm_warns_once_naming_why():
    from model import mol

    x = torch.randn(6, 6)  # fp32 rows of 6: not a multiple of 16 bytes
    w = torch.randn(2, 4, 6)
    blocks = mol.ExpertBlocks(torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    mol._WARNED.clear()
    with pytest.warns(UserWarning, match="per-expert matmul loop runs instead of F.grouped_mm: inner sizes 6, 4"):
        out = mol.grouped_matmul(x, w, blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mol.grouped_matmul(x, w, blocks)  # the same reason again: silent
    assert torch.allclose(out, torch.cat([x[:3] @ w[0].t(), x[3:] @ w[1].t()]))


def _count_table(*args: str) -> dict[str, list[str]]:
    repo = os.path.dirname(os.path.dirname(HERE))
    cmd = [sys.executable, "benchmarks/bench_mol.py", "--count", "--preset", "tiny", "--tokens", "256", *args]
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [
        line.strip("|").split("|")
        for line in r.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| FFN |")
    ]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_bench_mol_counts_bytes_eager_and_after_inductor_fusion():
    """Both counts of ``bench_mol.py --count``: the floor row (the dense FFN on every (token, expert) pair) is
    1.00 by construction, each MoL form moves more than that floor, and under compile the dense FFN's GeGLU
    forward and backward are one generated kernel each, around its 6 matmuls (2 forward, 4 backward): the
    count sees Inductor's fusion, which the eager count cannot."""
    for args in ((), ("--compile",)):
        t = _count_table("--dtype", "bfloat16", *args)
        assert set(t) == {"dense FFN", "dense FFN on the T·K pairs", "MoL, grouped", "MoL, slots"}, t
        assert t["dense FFN on the T·K pairs"][-1] == "1.00", t
        for name in ("MoL, grouped", "MoL, slots"):
            assert float(t[name][-1]) > 1.0, t
    assert t["dense FFN"][:2] == ["2", "6"], t  # compiled: kernels generated, matmul calls


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1])))
