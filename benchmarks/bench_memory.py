"""Training state per rank under ZeRO-3 (FSDP2): parameter, gradient and optimizer bytes on N ranks.

    python benchmarks/bench_memory.py [--presets 50m 120m] [--ranks 1 2 4 8]

Each (preset, N) is a real launch of N gloo processes on CPU (torchrun): the model is built on the meta
device and parallelised exactly as ``pretrain/train.py`` does it (``build_model``: materialised, initialised
and sharded group by group), then AdamW with the training loop's parameter groups takes one step on zero
gradients, so every state tensor exists. Each rank counts the bytes it holds locally (the shards of
DTensors), and rank 0 prints them. No forward runs: activations depend on the batch, not on N, and are
not part of this table. The bytes fall as 1/N except for what every rank keeps whole (tensors smaller
than N rows are padded, and AdamW's step counters).

``--activations`` adds the bytes autograd saves per token (the model in bf16, one micro-batch of
1 024 tokens on CPU) and a predicted per-GPU total for 8 × H100 at micro-batch 32 × 1024: measured
state at 8 ranks + two gathered bf16 units and one unit's fp32 gradients + activations. The CPU
attention path (SDPA per document) saves the attention probabilities, which flash-attn on a GPU does
not: the activation figure is an upper bound there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state_bytes(preset: str, vocab_size: int, rank: int, world: int) -> dict:
    """This rank's bytes of parameters, gradients and AdamW state after one step (the model is freed on return)."""
    import torch

    from pretrain.config import RunConfig, load_config
    from pretrain.dryrun import state_bytes
    from pretrain.parallel_dims import ParallelDims
    from pretrain.train import Runtime, _param_groups, build_model

    # bf16 as a GPU run (and the dry run) holds the state: FSDP's shards fp32, the routers whole on every rank
    overrides = [f"model.preset={preset}", f"model.vocab_size={vocab_size}", "parallel.precision=bf16"]
    cfg: RunConfig = load_config(None, overrides)
    rt = Runtime(index=None, device=torch.device("cpu"), rank=rank, dims=ParallelDims(world), accum=1, init_state=None)
    model, _ = build_model(cfg, rt)
    opt = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=1e-4)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    return state_bytes(model, opt)


def measure(preset: str, vocab_size: int) -> None:
    """Run under torchrun: this rank's parameter/gradient/optimizer bytes, gathered and printed by rank 0."""
    import torch.distributed as dist

    from pretrain.train import teardown

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = _state_bytes(preset, vocab_size, rank, world)
    out = [None] * world
    dist.all_gather_object(out, mine)
    if rank == 0:
        print("RESULT " + json.dumps({"preset": preset, "ranks": world, "per_rank": out}))
    teardown(agreed=True)


def activation_bytes_per_token(preset: str, vocab_size: int, seq_len: int = 1024, docs: int = 2) -> float:
    """Bytes autograd saves for the backward per token, the model in bf16 (as FSDP2 computes it on GPU).

    One micro-batch of ``docs`` documents filling ``seq_len`` tokens, 30 % of them masked, on CPU with the
    SDPA attention path; saved tensors that are parameters are not counted (FSDP frees those itself).
    """
    import torch

    from model.config import preset as make_preset
    from model.modernalbert import ModernAlbertForMaskedLM

    cfg = make_preset(preset)
    cfg.vocab_size = vocab_size
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(cfg).to(torch.bfloat16)
    param_ptrs = {q.data_ptr() for q in model.parameters()}
    ids = torch.randint(5, vocab_size, (seq_len,))
    cu = torch.linspace(0, seq_len, docs + 1).to(torch.int32)
    pos = torch.randperm(seq_len)[: int(0.3 * seq_len)].sort().values
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        if t.data_ptr() not in param_ptrs:
            saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, cu_seqlens=cu, max_seqlen=seq_len // docs, mlm_positions=pos, mlm_labels=ids[pos])
    del out
    return saved / seq_len


def _largest_unit(preset: str, vocab_size: int) -> int:
    """Parameters of the largest FSDP unit (a recursive group, or the root's embeddings and head)."""
    import torch

    from model.config import preset as make_preset
    from model.modernalbert import ModernAlbertForMaskedLM

    cfg = make_preset(preset)
    cfg.vocab_size = vocab_size
    with torch.device("meta"):
        model = ModernAlbertForMaskedLM(cfg)
    groups = [sum(p.numel() for p in g.parameters()) for g in model.model.groups]
    return max(*groups, sum(p.numel() for p in model.parameters()) - sum(groups))


def predict_h100(results: list[dict], micro_batch: int = 32, seq_len: int = 1024, ranks: int = 8) -> list[str]:
    """Per-GPU memory on ``ranks`` H100s at micro-batch ``micro_batch`` x ``seq_len``, bf16, from the measurements."""
    lines = []
    for act in (r for r in results if "activation_bytes_per_token" in r):
        state = next((r for r in results if r.get("preset") == act["preset"] and r.get("ranks") == ranks), None)
        if state is None:
            continue
        worst = max(state["per_rank"], key=lambda x: x["params"] + x["grads"] + x["optimizer"])
        s = worst["params"] + worst["grads"] + worst["optimizer"]
        gathered = 2 * act["largest_unit_params"] * 2  # bf16 all-gather of the current unit + the prefetched one
        reduce = act["largest_unit_params"] * 4  # one unit's unsharded fp32 gradients before the reduce-scatter
        acts = act["activation_bytes_per_token"] * micro_batch * seq_len
        gib = 1 << 30
        lines.append(
            f"| {act['preset']} | {s / gib:.2f} | {(gathered + reduce) / gib:.2f} | {acts / gib:.1f} | "
            f"**{(s + gathered + reduce + acts) / gib:.1f}** |"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["50m", "120m"])
    p.add_argument("--ranks", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--activations",
        action="store_true",
        help="also measure the activation bytes per token (bf16, one forward per preset on CPU)",
    )
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the per-rank part, under torchrun
    a = p.parse_args()
    if a.measure:
        measure(a.measure, a.vocab_size)
        return 0
    results = []
    for preset in a.presets:
        for n in a.ranks:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={n}",
                os.path.abspath(__file__),
                "--measure",
                preset,
                "--vocab-size",
                str(a.vocab_size),
            ]
            r = subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
            line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
            if r.returncode or line is None:
                sys.exit(f"{preset} on {n} ranks failed:\n{r.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT ") :]))
            print(f"{preset} x {n}: done", file=sys.stderr, flush=True)
    if a.activations:
        for preset in a.presets:
            per_token = activation_bytes_per_token(preset, a.vocab_size)
            results.append(
                {
                    "preset": preset,
                    "activation_bytes_per_token": per_token,
                    "largest_unit_params": _largest_unit(preset, a.vocab_size),
                }
            )
            print(f"{preset}: {per_token / 1024:,.1f} KiB of saved activations per token (bf16)", file=sys.stderr)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    mib = 1 << 20
    print(
        "| preset | ranks | params MiB/rank | grads MiB/rank | AdamW state MiB/rank | total MiB/rank | "
        "× ranks ÷ total on 1 rank |"
    )
    print("|---|---|---|---|---|---|---|")
    single = {}
    for r in results:
        if "per_rank" not in r:
            continue
        worst = max(r["per_rank"], key=lambda x: x["params"] + x["grads"] + x["optimizer"])
        total = worst["params"] + worst["grads"] + worst["optimizer"]
        single.setdefault(r["preset"], total) if r["ranks"] == 1 else None
        ratio = total * r["ranks"] / single[r["preset"]] if r["preset"] in single else float("nan")
        print(
            f"| {r['preset']} ({worst['unique_params'] / 1e6:.1f} M params) | {r['ranks']} | "
            f"{worst['params'] / mib:,.1f} | "
            f"{worst['grads'] / mib:,.1f} | {worst['optimizer'] / mib:,.1f} | {total / mib:,.1f} | {ratio:.3f} |"
        )
    rows = predict_h100(results)
    if rows:
        print("\nPredicted per GPU, 8 x H100, bf16, micro-batch 32 x 1024, no activation checkpointing (GiB):\n")
        print(
            "| preset | fp32 state (measured, 8 ranks) | gathered bf16 units + fp32 unit grads | saved activations "
            "(measured per token × 32 768) | total |"
        )
        print("|---|---|---|---|---|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
