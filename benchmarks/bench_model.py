"""Forward+backward throughput of ModernALBERT on CPU, measured side by side in one run.

    python benchmarks/bench_model.py [--layers 9] [--tokens 2048] [--steps 3]

(a) MoL overhead: the ``50m`` MLM model (d 768, I 1152, MoL on groups 2 and 3) with MoL vs the same
    model with MoL disabled. Depth is shortened to --layers groups of depth 1 (default 9 = K, so
    2 of 9 layers carry MoL, the same share as the full 27-layer preset's 6 of 27).
(b) Our encoder (MoL off) vs HuggingFace ``ModernBertModel`` with the same dimensions and depth
    (unrolled, random weights, sdpa attention), on the same documents: ours runs them unpadded as one
    token stream, HF runs them padded to the longest with an attention mask (its CPU path). Also on
    equal-length documents, where padding costs HF nothing.

Tokens are real: samples of a shard build of the shipped corpus (seq_len 1024), ~--tokens per step.
Timings alternate between the contenders and report the median step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch

from data_prep.build_shards import BuildConfig, build
from model.config import MoLConfig, preset
from model.losses import combine_losses
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain.data import LoaderConfig, PretrainLoader


def real_batch(tokens: int, vocab_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        build(BuildConfig(seq_len=1024, vocab_size=vocab_size, val_fraction=0.0), tmp, workers=0, progress=False)
        loader = PretrainLoader(LoaderConfig(tmp, micro_batch_size=max(1, tokens // 1024), num_workers=0))
        batch = next(iter(loader))
        batch["vocab_size"] = loader.index.vocab_size
    return batch


def padded(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    cu = batch["cu_seqlens"].long()
    lens = (cu[1:] - cu[:-1]).tolist()
    L = max(lens)
    ids = torch.zeros(len(lens), L, dtype=torch.long)
    mask = torch.zeros(len(lens), L, dtype=torch.long)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        ids[n, : b - a] = batch["input_ids"][a:b]
        mask[n, : b - a] = 1
    return ids, mask


def timed(step, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def race(contenders: dict, steps: int) -> dict[str, float]:
    """Warm each up once, then alternate single steps; median seconds per step."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(steps):
        for k, fn in contenders.items():
            times[k] += timed(fn, 1)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=9)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--parts", default="abc", help="which comparisons to run (default: %(default)s)")
    a = p.parse_args()
    torch.manual_seed(0)
    batch = real_batch(a.tokens, 32768)
    V, T = batch["vocab_size"], batch["num_tokens"]
    base = dataclasses.replace(
        preset("50m", vocab_size=V), num_groups=a.layers, group_depth=1, mol=MoLConfig(groups=(2, 3))
    )
    args = (batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], batch["mlm_positions"], batch["mlm_labels"])

    # (a) MoL vs no MoL: full training step of the MLM model
    mol_model = ModernAlbertForMaskedLM(base).train()
    plain_model = ModernAlbertForMaskedLM(dataclasses.replace(base, mol=MoLConfig(groups=()))).train()

    def mlm_step(model):
        def run():
            out = model(*args)
            combine_losses(model.cfg, out.mlm_loss, out.aux_losses).backward()
            model.zero_grad(set_to_none=True)

        return run

    res_a = race({"mol": mlm_step(mol_model), "no_mol": mlm_step(plain_model)}, a.steps) if "a" in a.parts else {}
    del mol_model

    # (b) encoders: ours (unpadded) vs HF ModernBertModel (padded), same documents
    from transformers import ModernBertConfig, ModernBertModel

    hf_cfg = ModernBertConfig(
        vocab_size=V,
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=a.layers,
        num_attention_heads=12,
        local_attention=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
        attn_implementation="sdpa",
    )
    hf = ModernBertModel(hf_cfg).train()
    ours = plain_model.model
    ids_pad, mask = padded(batch)

    def ours_step(ids, cu, max_len):
        def run():
            h, _ = ours(ids, cu, max_len)
            h.float().square().mean().backward()
            ours.zero_grad(set_to_none=True)

        return run

    def hf_step(ids, m):
        def run():
            h = hf(input_ids=ids, attention_mask=m).last_hidden_state
            h[m.bool()].float().square().mean().backward()
            hf.zero_grad(set_to_none=True)

        return run

    res_b = (
        race(
            {
                "ours": ours_step(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"]),
                "hf": hf_step(ids_pad, mask),
            },
            a.steps,
        )
        if "b" in a.parts
        else {}
    )
    n_eq, L_eq = max(1, T // 512), 512  # equal-length documents: no padding for HF either
    ids_eq = batch["input_ids"][: n_eq * L_eq].clone()
    cu_eq = torch.arange(0, n_eq * L_eq + 1, L_eq, dtype=torch.int32)
    res_c = (
        race(
            {
                "ours": ours_step(ids_eq, cu_eq, L_eq),
                "hf": hf_step(ids_eq.view(n_eq, L_eq), torch.ones(n_eq, L_eq, dtype=torch.long)),
            },
            a.steps,
        )
        if "c" in a.parts
        else {}
    )

    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lens = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).tolist()
    print(
        f"\nhardware: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}; commit {commit}"
    )
    print(
        f"batch: {T} real tokens in {len(lens)} documents (longest {max(lens)}, padded HF batch "
        f"{ids_pad.numel()} positions), {len(batch['mlm_positions'])} MLM targets; vocab {V}; "
        f"{a.layers} layers; median of {a.steps} steps after a warm-up"
    )
    if res_a:
        print("\n(a) MoL overhead, 50m shape, MLM forward+backward")
        print("| model | s/step | tokens/s |\n|---|---|---|")
        for k in ("no_mol", "mol"):
            print(f"| {k} | {res_a[k]:.3f} | {T / res_a[k]:,.0f} |")
        print(f"MoL overhead: {res_a['mol'] / res_a['no_mol'] - 1:+.1%} step time")
    for title, res, tokens in (
        ("(b) encoder forward+backward, real documents", res_b, T),
        (f"(c) encoder forward+backward, {n_eq} documents of {L_eq}", res_c, n_eq * L_eq),
    ):
        if not res:
            continue
        print(f"\n{title}")
        print("| encoder | s/step | tokens/s |\n|---|---|---|")
        for k in ("ours", "hf"):
            print(f"| {k} | {res[k]:.3f} | {tokens / res[k]:,.0f} |")
        print(f"ours / HF throughput: {res['hf'] / res['ours']:.2f}x")


if __name__ == "__main__":
    main()
