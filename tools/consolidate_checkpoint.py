"""Consolidate a sharded training checkpoint into one native model directory.

    python tools/consolidate_checkpoint.py runs/quickstart/tiny --out runs/quickstart/native

CKPT_DIR is a run directory, its ``checkpoints/`` folder (both follow ``latest``) or one
``checkpoints/step_XXXXXXXX``, written by either engine. FSDP2 (DCP) checkpoints may come from any
number of ranks and any expert-parallel degree: DCP stores every tensor's global shape, so each expert
of each EP rank is read back in place. DeepSpeed ZeRO checkpoints are gathered with DeepSpeed's
zero_to_fp32 (needs the deepspeed package).
Key accounting is strict: a tensor the model needs but the checkpoint lacks, or one the model does not
have, is an error. Output: ``model.safetensors`` + ``config.json`` + the tokenizer (from the shards the
run was trained on, or ``--tokenizer``); see ``model/native_format.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


import torch
from torch.distributed.checkpoint.api import CheckpointException

from config_check import ConfigError
from model.config import ModelConfig
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain.checkpoint import describe, latest_pointer, quiet_single_process, read_trainer_state, step_dirs, verify
from pretrain.deepspeed_engine import is_deepspeed_checkpoint, read_deepspeed_weights
from fileio import OutputDir
from model.native_format import InputError, check_keys, copy_sentence_files, save_native, tokenizer_file
from pretrain.shard_cache import local_path

MODEL_PREFIX = "model."  # the training checkpoint holds {"model": …, "optim": …}


def resolve_checkpoint(path: str) -> str:
    """A step directory from a run dir, a checkpoints dir (via ``latest``) or a step dir."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such directory")
    for candidate in (path, os.path.join(path, "checkpoints")):
        pointed = latest_pointer(candidate)
        if pointed:
            path = pointed
            break
    ok = (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "trainer.json"))
        and (os.path.isfile(os.path.join(path, ".metadata")) or is_deepspeed_checkpoint(path))
    )
    if not ok:
        raise InputError(
            f"{path}: not a training checkpoint (expected a run dir, its checkpoints/ or a "
            "step_XXXXXXXX folder with trainer.json and DCP .metadata or DeepSpeed model states)"
        )
    problem = verify(path)
    if problem:
        intact = next((p for p in step_dirs(os.path.dirname(path)) if p != path and not verify(p)), None)
        hint = f"; the newest intact checkpoint is {intact}: pass it instead" if intact else ""
        raise InputError(f"checkpoint {path}: {problem}{hint}")
    return path


def read_checkpoint(step_dir: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The full model state dict (CPU, fp32 as saved) and trainer.json of one DCP checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    trainer = read_trainer_state(step_dir)
    try:
        cfg = ModelConfig.from_dict(trainer["config"]["model"])
    except (KeyError, TypeError, ConfigError) as e:
        raise InputError(f"{step_dir}/trainer.json: no usable model config ({e})") from None
    with torch.device("meta"):
        template = ModernAlbertForMaskedLM(cfg).state_dict()
    if is_deepspeed_checkpoint(step_dir):
        try:
            state = read_deepspeed_weights(step_dir)
        except Exception as e:
            raise InputError(
                f"{step_dir}: reading the DeepSpeed checkpoint failed ({type(e).__name__}: {str(e)[:300]})"
            ) from None
        check_keys(template, state, step_dir)
        return state, trainer
    try:
        saved = FileSystemReader(step_dir).read_metadata().state_dict_metadata
    except Exception as e:  # a truncated or foreign .metadata
        raise InputError(f"{step_dir}/.metadata: unreadable ({e})") from None
    saved_model = {k[len(MODEL_PREFIX) :]: v for k, v in saved.items() if k.startswith(MODEL_PREFIX)}
    shapes = {k: torch.empty(tuple(getattr(v, "size", ()))) for k, v in saved_model.items()}
    check_keys(template, shapes, step_dir)
    state = {k: torch.empty(v.shape, dtype=saved_model[k].properties.dtype) for k, v in template.items()}
    with quiet_single_process():
        try:
            dcp.load({"model": state}, checkpoint_id=step_dir)
        except (Exception, CheckpointException) as e:  # missing or truncated shard files (no manifest to tell)
            raise InputError(f"{step_dir}: reading the tensors failed ({describe(e)})") from None
    return state, trainer


def _fetch_tokenizer(data_url: str) -> str:
    """The tokenizer of shards under a URL prefix, through the node's shard cache."""
    from data_prep.errors import DataPrepError
    from pretrain.shard_cache import tokenizer_path

    try:
        return tokenizer_path(data_url)
    except DataPrepError as e:
        raise InputError(f"the run's data {data_url!r}: {e}; pass --tokenizer FILE") from None


def trained_length(data_dir: str | None) -> int | None:
    """The length of the run's samples (its shards' ``seq_len``); None when the shards are not reachable."""
    if not data_dir:
        return None
    try:
        from pretrain.shard_cache import load_index

        return int(load_index(data_dir).seq_len)
    except Exception:  # shards moved or unreachable: nothing to cap with
        return None


def cap_declared_length(out_dir: str, trained: int | None) -> tuple[int, int] | None:
    """Lower ``sentence_bert_config.json``'s ``max_seq_length`` in ``out_dir`` to ``trained``, the length of the
    run's samples, when the init declared more: a student distilled on 128-token samples never trained its
    layers on later positions, and at its teacher's 256 its SciFact retrieval collapsed (studies/RESULTS.md,
    issue 43). Returns (declared, trained) when it lowered it, else None."""
    path = os.path.join(out_dir, "sentence_bert_config.json")
    if trained is None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    declared = doc.get("max_seq_length")
    if not isinstance(declared, int) or declared <= trained:
        return None
    doc["max_seq_length"] = trained
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    return declared, trained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/consolidate_checkpoint.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt_dir", help="run dir, its checkpoints/ or a step_XXXXXXXX folder")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--tokenizer", help="tokenizer file to ship (default: the one of the run's shards)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        step_dir = resolve_checkpoint(a.ckpt_dir)
        state, trainer = read_checkpoint(step_dir)
        cfg = ModelConfig.from_dict(trainer["config"]["model"])
        data_dir = trainer["config"].get("data", {}).get("dir")
        tok = a.tokenizer
        remote = bool(data_dir) and local_path(data_dir) is None
        if tok is None and remote:  # trained from a URL: the tokenizer comes through the shard cache
            tok = _fetch_tokenizer(data_dir)
        elif tok is None:
            name = tokenizer_file(data_dir) if data_dir and os.path.isdir(data_dir) else None
            if name is None:
                raise InputError(f"the run's data dir {data_dir!r} has no tokenizer here; pass --tokenizer FILE")
            tok = os.path.join(data_dir, name)
        elif not os.path.isfile(tok):
            raise InputError(f"--tokenizer {tok}: no such file")
        seq_len = trained_length(data_dir)
        with OutputDir(a.out, a.overwrite, InputError) as tmp:
            save_native(
                tmp,
                state,
                cfg,
                tok,
                data_dir if remote else os.path.abspath(data_dir) if data_dir else None,
                [
                    {
                        "tool": "consolidate_checkpoint",
                        "checkpoint": os.path.abspath(step_dir),
                        "step": trainer["step"],
                        **({"trained_seq_len": seq_len} if seq_len else {}),
                        # MoL: each expert's routing share averaged over training (merge_experts --method ema)
                        **({"routing_ema": trainer["routing_ema"]} if "routing_ema" in trainer else {}),
                    }
                ],
            )
            # a student keeps the pooling and length its init declared (init_from_teacher copies the teacher's),
            # the length capped at the samples it was trained on
            init_from = trainer["config"].get("init_from")
            copy_sentence_files(init_from if init_from and os.path.isdir(init_from) else None, tmp)
            capped = cap_declared_length(tmp, seq_len)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if capped:
        print(
            f"max_seq_length {capped[0]} (declared by the init) -> {capped[1]}: the longest samples it was trained "
            "on (data.seq_len); embedding runners truncate there unless given --max-len"
        )
    n = sum(v.numel() for v in state.values())
    print(f"consolidated {step_dir} (step {trainer['step']}): {len(state)} tensors, {n:,} parameters -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
