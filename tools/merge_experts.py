"""Collapse every MoL layer's experts into one LoRA adapter, and optionally fold it into the dense weights.

    python tools/merge_experts.py runs/quickstart/native --out runs/quickstart/merged --method uniform
    python tools/merge_experts.py IN --out OUT --method routing --calib data/shards --fold

The merge averages the experts' *delta weights*: for each MoL layer
    ΔWi = Σ_j p_j · s·B1_j A1_j,   ΔWo = Σ_j p_j · s·B2_j A2_j,
with p_j = 1/E (``uniform``), the share of tokens routed to expert j on calibration batches
(``routing``: top-k assignments counted over every application of the shared block), or that share
averaged over the training steps themselves (``ema``: ``pretrain/routing_ema.py``, recorded by
``tools/consolidate_checkpoint.py`` in the model's history; no calibration data needed). The result is
exact and stored without loss as one adapter of rank E·r (the experts' factors side by side, the
weights p_j·s folded into B): the output model is a native model whose MoL layers have one expert
that every token takes. ``--fold`` adds ΔW into Wi/Wo and drops the MoL layers: a plain dense model
with no routing left (what ``convert_to_hf.py --format modernbert`` needs).

The validation MLM loss and accuracy before and after are printed and saved to ``merge_report.json``
(``--val`` shards, default: the ones the model was trained on). Training's rule holds here too: when the
training shards are not found, or their val split is missing or smaller than one batch of 16 samples (a
small corpus), the comparison is skipped with a one-line note saying why. ``--val DIR`` asks for it, so
there such a split is an error; ``--no-val`` merges without reading any val split.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys


import torch

from model.modernalbert import ModernAlbertForMaskedLM, mol_layers
from model.mol import MoLFFN
from fileio import OutputDir
from model.native_format import InputError, copy_sentence_files, load_native, save_native, tokenizer_record
from pretrain.shard_cache import local_path

METHODS = ("uniform", "routing", "ema")


def ema_shares(doc: dict, layers: dict, where: str) -> dict[int, torch.Tensor]:
    """The training-time routing shares per MoL group from the model's history (the latest record)."""
    found = [h["routing_ema"] for h in doc.get("history", []) if "routing_ema" in h]
    if not found:
        raise InputError(
            f"--method ema: {where} records no routing average (consolidate a checkpoint of a MoL run with "
            "tools/consolidate_checkpoint.py; runs before train.routing_ema_decay existed have none): "
            "use --method routing"
        )
    groups = found[-1]["groups"]
    missing = [g for g in layers if str(g) not in groups]
    if missing:
        raise InputError(f"--method ema: {where} has no routing average for MoL group(s) {missing}")
    return {g: torch.tensor(groups[str(g)], dtype=torch.float64) for g in layers}


def _open(shards: str, split: str, micro_batch_size: int):
    """One unshuffled pass over ``split`` in this process; raises DataPrepError (no such split, too small…)."""
    from pretrain.data import LoaderConfig, PretrainLoader

    return PretrainLoader(
        LoaderConfig(shards, micro_batch_size, split=split, shuffle=False, num_workers=0, epochs=1), 0, 1
    )


def _loader(shards: str, split: str, micro_batch_size: int, max_batches: int):
    from data_prep.errors import DataPrepError

    try:
        return _open(shards, split, micro_batch_size)
    except DataPrepError as e:
        raise InputError(f"{shards}: {e}") from None


@torch.no_grad()
def routing_shares(
    model: ModernAlbertForMaskedLM, shards: str, batches: int, micro_batch_size: int = 16
) -> dict[int, torch.Tensor]:
    """Per MoL group: the share of top-k assignments each expert got on ``batches`` train batches."""
    from model.modernalbert import model_inputs

    layers = mol_layers(model)
    counts = {g: torch.zeros(m.cfg.num_experts, dtype=torch.float64) for g, m in layers.items()}
    G = model.cfg.group_depth
    for i, b in enumerate(_loader(shards, "train", micro_batch_size, batches)):
        if i >= batches:
            break
        for name, st in model(**model_inputs(b)).routing_stats.items():
            layer, kind = name.split(".")
            if kind == "ffn":
                counts[int(layer[5:]) // G] += st["tokens_per_expert"].double()
    return {g: c / c.sum() for g, c in counts.items()}


def merged_factors(m: MoLFFN, p_E: torch.Tensor) -> dict[str, torch.Tensor]:
    """One rank-E·r adapter equal to Σ_j p_j·ΔW_j: A stacked, B scaled by p_j·s and stacked (scale 1)."""
    E, R = m.A1.shape[:2]
    w = (p_E.to(m.B1.dtype) * m.scale).view(E, 1, 1)
    return {
        "A1": m.A1.reshape(1, E * R, -1),
        "B1": (m.B1 * w).permute(1, 0, 2).reshape(1, m.B1.shape[1], E * R),
        "A2": m.A2.reshape(1, E * R, -1),
        "B2": (m.B2 * w).permute(1, 0, 2).reshape(1, m.B2.shape[1], E * R),
    }


@torch.no_grad()
def merge(model: ModernAlbertForMaskedLM, shares: dict[int, torch.Tensor], fold: bool) -> ModernAlbertForMaskedLM:
    """A new model: each MoL layer replaced by its merged adapter (one expert), or folded when ``fold``."""
    layers = mol_layers(model)
    if not layers:
        raise InputError("the model has no MoL layers (model.mol.groups is empty): nothing to merge")
    mol = model.cfg.mol
    ranks = {m.A1.shape[0] * m.A1.shape[1] for m in layers.values()}
    R = ranks.pop()
    if fold:
        new_mol = dataclasses.replace(mol, groups=())
    else:  # one expert, scale 1 (alpha = rank): ffn = (W + B A) for every token
        new_mol = dataclasses.replace(
            mol, num_experts=1, top_k=1, rank=R, alpha=float(R), jitter=0.0, routing="learned", depth_bias=False
        )
    cfg = dataclasses.replace(copy.deepcopy(model.cfg), mol=new_mol).validate()
    out = ModernAlbertForMaskedLM(cfg)
    state = {k: v for k, v in model.state_dict().items()}
    for g, m in layers.items():
        prefix = f"model.groups.{g}.block.ffn."
        for k in ("A1", "B1", "A2", "B2", "router.weight", "router.depth_bias"):
            state.pop(prefix + k, None)  # depth-routed MoL has no router, most have no depth bias
        if fold:
            dWi_E, dWo_E = m.delta_weights()
            dWi = (shares[g].view(-1, 1, 1) * dWi_E).sum(0)
            dWo = (shares[g].view(-1, 1, 1) * dWo_E).sum(0)
            state[prefix + "Wi.weight"] = m.Wi.weight + dWi
            state[prefix + "Wo.weight"] = m.Wo.weight + dWo
        else:
            for k, v in merged_factors(m, shares[g].double()).items():
                state[prefix + k] = v
            state[prefix + "router.weight"] = torch.zeros(1, m.Wi.weight.shape[1])  # one expert, z-loss 0
    out.load_state_dict(state, strict=True)
    return out.eval()


def check_shards(in_dir: str, doc: dict, model: ModernAlbertForMaskedLM, shards: str, owner: str) -> None:
    """The shards' tokenizer is the model's, and their ids reach its embedding (one line otherwise)."""
    from data_prep.errors import DataPrepError
    from data_prep.tokenizer_id import check_same_tokenizer, file_tokenizer
    from pretrain.shard_cache import load_index, shards_tokenizer

    try:
        index = load_index(shards)
    except DataPrepError as e:
        raise InputError(f"{owner}: {e}") from None
    check_same_tokenizer(
        file_tokenizer(f"model {in_dir}", *tokenizer_record(in_dir, doc)),
        shards_tokenizer(index, owner),
        model.cfg.vocab_size,
        InputError,
    )


VAL_BATCH = 16  # samples per validation batch


def _no_val_batch(shards: str) -> str | None:
    """Why ``shards`` has no val batch of VAL_BATCH samples (no val split, or a smaller one), or None."""
    from data_prep.errors import DataPrepError

    try:
        _open(shards, "val", VAL_BATCH)
    except DataPrepError as e:  # the same message as training's "validation skipped: …"
        return str(e)
    return None


def shard_val_scores(model: ModernAlbertForMaskedLM, shards: str | None, max_batches: int) -> dict | None:
    from pretrain.evaluate import val_scores

    if not shards:
        return None
    loader = _loader(shards, "val", VAL_BATCH, max_batches)
    return val_scores(model, loader, torch.device("cpu"), max_batches)


def _where(data_dir: str) -> str:
    return data_dir if local_path(data_dir) is None else os.path.abspath(data_dir)


def _reachable(data_dir: str | None) -> bool:
    """A shard directory here, or a URL prefix (read through the shard cache)."""
    return bool(data_dir) and (local_path(data_dir) is None or os.path.isdir(local_path(data_dir)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/merge_experts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("in_dir", help="native model directory (tools/consolidate_checkpoint.py output)")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=METHODS, default="uniform")
    p.add_argument("--calib", help="shards for --method routing (default: the model's training shards)")
    p.add_argument("--calib-batches", type=int, default=20, help="train batches of 16 samples to count routing on")
    p.add_argument("--fold", action="store_true", help="add the merged adapter into Wi/Wo; no MoL left")
    p.add_argument(
        "--val",
        help="shards whose val split is evaluated before/after (default: the training shards, skipped with a note "
        f"when their val split is missing or under one batch of {VAL_BATCH} samples)",
    )
    p.add_argument("--val-batches", type=int, default=0, help="0: the whole val split")
    p.add_argument("--no-val", action="store_true", help="no before/after validation (no val split is read)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    try:
        model, doc = load_native(a.in_dir)
        data_dir = doc.get("data_dir")
        if a.no_val and a.val:
            raise InputError(f"--no-val with --val {a.val}: choose one")
        val_dir = None if a.no_val else a.val or (data_dir if _reachable(data_dir) else None)
        layers = mol_layers(model)
        if a.method == "routing":
            calib = a.calib or data_dir
            if not _reachable(calib):
                raise InputError(f"--method routing needs calibration shards: --calib DIR ({calib!r} not found)")
            source = "--calib" if a.calib else f"the shards {a.in_dir} was trained on; --calib DIR chooses others"
            check_shards(a.in_dir, doc, model, calib, f"--calib {calib}" if a.calib else f"its training shards {calib}")
            print(
                f"calibrating the routing shares on {a.calib_batches} train batches of 16 samples from "
                f"{_where(calib)} ({source})"
            )
            shares = routing_shares(model, calib, a.calib_batches)
        elif a.method == "ema":
            shares = ema_shares(doc, layers, a.in_dir)
            print(f"expert weights: each expert's routing share averaged over training ({a.in_dir}'s history)")
        else:
            shares = {
                g: torch.full((m.cfg.num_experts,), 1.0 / m.cfg.num_experts, dtype=torch.float64)
                for g, m in layers.items()
            }
        if val_dir and val_dir != (calib if a.method == "routing" else None):
            check_shards(
                a.in_dir, doc, model, val_dir, f"--val {val_dir}" if a.val else f"its training shards {val_dir}"
            )
        skipped = val_dir and _no_val_batch(val_dir)
        if skipped and a.val:
            raise InputError(f"--val {a.val}: {skipped}; pass --no-val to merge without the comparison")
        if skipped:  # training's rule (pretrain/evaluate.py: val_loader): no validation, said in one line
            print(f"validation skipped: {skipped} (as in training; --val DIR compares on other shards)")
            val_dir = None
        before = shard_val_scores(model, val_dir, a.val_batches)
        merged = merge(model, shares, a.fold)
        after = shard_val_scores(merged, val_dir, a.val_batches)
        report = {
            "method": a.method,
            "fold": a.fold,
            "val_shards": val_dir,
            "calibration": ({"shards": _where(calib), "batches": a.calib_batches} if a.method == "routing" else None),
            "expert_weights": {f"group{g}": [round(float(x), 6) for x in s] for g, s in shares.items()},
            "before": before,
            "after": after,
        }
        tok = os.path.join(a.in_dir, doc["tokenizer"]) if doc.get("tokenizer") else None
        with OutputDir(a.out, a.overwrite, InputError) as tmp:
            save_native(
                tmp,
                merged.state_dict(),
                merged.cfg,
                tok,
                data_dir,
                [*doc.get("history", []), {"tool": "merge_experts", "method": a.method, "fold": a.fold}],
            )
            with open(os.path.join(tmp, "merge_report.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            copy_sentence_files(a.in_dir, tmp)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "folded into Wi/Wo (no MoL left)" if a.fold else f"one adapter of rank {merged.cfg.mol.rank} per MoL layer"
    print(f"merged {len(layers)} MoL layer(s) ({a.method}): {kind} -> {a.out}")
    if before and after:
        print(
            f"  val MLM loss {before['val_loss']:.4f} -> {after['val_loss']:.4f}   "
            f"accuracy {before['val_accuracy']:.4f} -> {after['val_accuracy']:.4f}   "
            f"({before['val_masked']:,} masked tokens)"
        )
    elif a.no_val:
        print("  no validation (--no-val)")
    elif not skipped:
        print("  no validation shards: loss not compared (pass --val DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
