"""Inference throughput after merging: folded model vs the same model with MoL active vs a dense model.

    python benchmarks/bench_inference.py [--layers 9] [--tokens 4096] [--steps 7]

Three contenders of the ``50m`` shape (depth shortened to --layers groups of depth 1, MoL on groups 2
and 3 as in the preset), timed side by side in one run on the same real documents (unpadded MLM
forward, no grad, logits at 15 % of the positions like a fill-mask batch):
  mol     the trained-shape model with its MoL experts routed per token (random, non-zero experts)
  folded  that model after ``tools/merge_experts.py --fold`` (uniform merge; no MoL left)
  dense   a model built without MoL at all
Target: folded/dense >= 0.98 (merging leaves no overhead). The timings alternate between the three
and report the median step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys

if __package__ in (None, ""):
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch

from benchmarks.bench_model import race, real_batch
from model.config import MoLConfig, preset
from model.modernalbert import ModernAlbertForMaskedLM, mol_layers
from tools.merge_experts import merge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=9)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=7)
    a = p.parse_args()
    torch.manual_seed(0)
    batch = real_batch(a.tokens, 32768)
    V, T = batch["vocab_size"], batch["num_tokens"]
    cfg = dataclasses.replace(
        preset("50m", vocab_size=V), num_groups=a.layers, group_depth=1, mol=MoLConfig(groups=(2, 3), jitter=0.0)
    )
    mol = ModernAlbertForMaskedLM(cfg).eval()
    for m in mol_layers(mol).values():  # trained-like experts: B away from its zero init
        m.B1.data.normal_(0, 0.02)
        m.B2.data.normal_(0, 0.02)
    shares = {
        g: torch.full((m.cfg.num_experts,), 1.0 / m.cfg.num_experts, dtype=torch.float64)
        for g, m in mol_layers(mol).items()
    }
    folded = merge(mol, shares, fold=True)
    dense = ModernAlbertForMaskedLM(dataclasses.replace(cfg, mol=MoLConfig(groups=()))).eval()
    g = torch.Generator().manual_seed(0)
    positions = torch.randperm(T, generator=g)[: max(1, int(0.15 * T))].sort().values
    args = (batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], positions)

    def step(model):
        def run():
            with torch.no_grad():
                model(*args)

        return run

    res = race({"mol": step(mol), "folded": step(folded), "dense": step(dense)}, a.steps)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lens = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).tolist()
    print(
        f"hardware: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}; commit {commit}"
    )
    print(
        f"batch: {T} real tokens in {len(lens)} documents, {len(positions)} predicted positions; vocab {V}; "
        f"{a.layers} layers (50m width); median of {a.steps} forward passes after a warm-up\n"
    )
    print("| model | s/forward | tokens/s | vs dense |\n|---|---|---|---|")
    for k in ("dense", "folded", "mol"):
        print(f"| {k} | {res[k]:.4f} | {T / res[k]:,.0f} | {res['dense'] / res[k]:.3f} |")
    print(
        f"\nfolded/dense throughput: {res['dense'] / res['folded']:.3f} (target >= 0.98); "
        f"MoL active/dense: {res['dense'] / res['mol']:.3f}"
    )


if __name__ == "__main__":
    main()
