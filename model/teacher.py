"""Read a HuggingFace encoder (BERT or ModernBERT family) and map its weights onto a ModernALBERT student.

Used by ``tools/init_from_teacher.py`` (distillation-based initialisation: each student group starts
from chosen teacher layers) and by the distillation losses of pretraining (``pretrain/distill.py``,
which needs the layer map).

Block family (``block``): ``teacher`` (the default) gives the student the teacher's own block, so the
mapping is exact: a BERT-family teacher's student has biases, learned absolute positions (token-type
embedding 0 folded into them), post-norm blocks, a plain GELU FFN, full attention everywhere and no
final norm (``model/config.py``). With K = the teacher's layers, G = 1, the teacher's FFN size and
embedding_size = d, its last hidden state is the teacher's (to fp32 rounding: tests/test_teacher_family.py).
``modern`` maps a BERT teacher onto the ModernBERT-style block (pre-norm, GeGLU, RoPE, no biases), which
loses what that block has no place for: biases and positions are dropped, post-norm norms move to
pre-norm slots, GELU(W₁h) becomes gelu(h)·h (both GeGLU halves get W₁). Kept for comparison: it
costs ~30 STS-B points at step 0 (studies/RESULTS.md).

Which teacher layers each group starts from (``layer_sets``, ``--layer-select``): ``even`` — one layer
per group, evenly spaced with first and last included; ``lower`` — layers 0..K-1; ``average`` — the
teacher's layers cut into K contiguous runs, each group the mean of its run's tensors.
Compression: ``embedding_size`` < d factorises the V×d table T by a truncated SVD, T ≈ U_e S_e V_eᵀ:
tok_embeddings = U_e S_e (V×e), proj = V_e (d×e), squared Frobenius error Σ_{i>e} σ_i² (Eckart–Young);
``intermediate_size`` below the teacher's keeps each layer's largest ‖w_in‖·‖w_out‖ neurons.
MoL experts, routers and (for teachers without an MLM head) the MLM head keep their fresh
initialisation, unless ``mol_init="svd"``: the experts of a group applied at several depths then start
from the rank-r truncated SVD of each depth's teacher layer minus the shared block (depth j → expert j;
the Relaxed Recursive Transformers' initialisation of depth-wise LoRAs, arXiv 2410.20672).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from model.config import BERT_BLOCK, ModelConfig

FAMILIES = {"bert": "bert", "modernbert": "modernbert"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
BLOCKS = ("teacher", "modern")  # the student's block: the teacher's family, or ModernBERT-style
LAYER_SELECT = ("even", "lower", "average")
MOL_INIT = ("fresh", "svd")


class TeacherError(ValueError):
    """The teacher directory cannot be used; the message says what was found."""


@dataclass
class TeacherInfo:
    path: str
    family: str  # "bert" | "modernbert"
    architectures: list[str]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    has_mlm_head: bool
    tokenizer: str | None  # path of tokenizer.json or vocab.txt
    hidden_act: str = "gelu"
    norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    position_embedding_type: str = "absolute"


def read_teacher_config(path: str) -> TeacherInfo:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise TeacherError(f"teacher {path!r}: no such directory")
    if not os.path.isfile(cfg_path):
        raise TeacherError(f"teacher {path!r}: no config.json (expected a HuggingFace model directory)")
    with open(cfg_path, encoding="utf-8") as f:
        c = json.load(f)
    family = FAMILIES.get(c.get("model_type", ""))
    if family is None:
        raise TeacherError(
            f"teacher {path!r}: model_type {c.get('model_type')!r} "
            f"({', '.join(c.get('architectures') or ['no architectures'])}) is not supported; "
            f"supported: {', '.join(FAMILIES)} (BertModel/BertForMaskedLM, ModernBert*)"
        )
    archs = c.get("architectures") or []
    tok = next((os.path.join(path, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))), None)
    bert = family == "bert"
    return TeacherInfo(
        path=path,
        family=family,
        architectures=archs,
        hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        intermediate_size=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        has_mlm_head=any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in archs),
        tokenizer=tok,
        hidden_act=c.get("hidden_act" if bert else "hidden_activation", "gelu"),
        norm_eps=c.get("layer_norm_eps" if bert else "norm_eps", 1e-12 if bert else 1e-5),
        max_position_embeddings=c.get("max_position_embeddings", 512),
        position_embedding_type=c.get("position_embedding_type", "absolute"),
    )


def read_teacher_weights(info: TeacherInfo) -> dict[str, torch.Tensor]:
    """The teacher's tensors with the task-model prefix removed (``bert.``/``model.`` → base names)."""
    st, pt = os.path.join(info.path, "model.safetensors"), os.path.join(info.path, "pytorch_model.bin")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        try:
            state = load_file(st)
        except Exception as e:
            raise TeacherError(f"teacher {st}: unreadable ({e})") from None
    elif os.path.isfile(pt):
        state = torch.load(pt, map_location="cpu", weights_only=True)
    else:
        raise TeacherError(f"teacher {info.path!r}: no model.safetensors or pytorch_model.bin")
    prefix = "bert." if info.family == "bert" else "model."
    out = {}
    for k, v in state.items():
        out[k[len(prefix) :] if k.startswith(prefix) else k] = v.float()
    return out


def layer_map(num_groups: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student group: evenly spaced, first and last included."""
    if num_groups == 1:
        return [teacher_layers - 1]
    return [round(g * (teacher_layers - 1) / (num_groups - 1)) for g in range(num_groups)]


def depth_runs(num_groups: int, teacher_layers: int) -> list[list[int]]:
    """The teacher layers at the depths each group covers: the teacher's layers cut into K contiguous runs.

    Group g stands in for run g whatever layers it starts from (``layer_sets``): its output is distilled
    towards the run's last layer (``pretrain/distill.py``) and its SVD experts start from the run's layers
    minus the shared block. With more groups than layers, each group gets the nearest layer (``layer_map``).
    """
    if num_groups > teacher_layers:
        return [[t] for t in layer_map(num_groups, teacher_layers)]
    cuts = [round(g * teacher_layers / num_groups) for g in range(num_groups + 1)]
    return [list(range(cuts[g], cuts[g + 1])) for g in range(num_groups)]


def layer_sets(num_groups: int, teacher_layers: int, how: str = "even") -> list[list[int]]:
    """The teacher layers each student group starts from (their mean when several): see the module docstring."""
    if how not in LAYER_SELECT:
        raise TeacherError(f"layer selection {how!r}: allowed: {', '.join(LAYER_SELECT)}")
    if how == "even":
        return [[t] for t in layer_map(num_groups, teacher_layers)]
    if num_groups > teacher_layers:
        raise TeacherError(
            f"layer selection {how!r}: the student's {num_groups} groups exceed the teacher's "
            f"{teacher_layers} layers (use even)"
        )
    if how == "lower":
        return [[g] for g in range(num_groups)]
    return depth_runs(num_groups, teacher_layers)


def family_fields(info: TeacherInfo) -> dict[str, Any]:
    """The ``ModelConfig`` fields that give the student the teacher's own block (``block="teacher"``)."""
    if info.family == "modernbert":
        return {"norm_eps": info.norm_eps}
    if info.hidden_act != "gelu":
        raise TeacherError(
            f"teacher {info.path!r}: hidden_act {info.hidden_act!r}; the BERT-family student "
            "computes exact GELU only (use --block modern to map it anyway)"
        )
    if info.position_embedding_type != "absolute":
        raise TeacherError(
            f"teacher {info.path!r}: position_embedding_type {info.position_embedding_type!r}; "
            "only absolute positions are supported"
        )
    return {
        **BERT_BLOCK,
        "max_position_embeddings": info.max_position_embeddings,
        "norm_eps": info.norm_eps,
        "global_every": 1,
    }


def student_config(
    info: TeacherInfo, base: ModelConfig, take_dims: bool, intermediate_size: int | None = None, block: str = "teacher"
) -> ModelConfig:
    """``base`` with the teacher's vocabulary and (``block="teacher"``) its block family; with ``take_dims``
    also its width, heads and FFN size.

    ``intermediate_size`` below the teacher's keeps that many of each mapped layer's FFN neurons (the
    ones with the largest ‖w_in‖·‖w_out‖, see ``keep_neurons``): a narrower FFN, fewer unique parameters.
    """
    if block not in BLOCKS:
        raise TeacherError(f"block {block!r}: allowed: {', '.join(BLOCKS)}")
    cfg = dataclasses.replace(base, vocab_size=info.vocab_size)
    if block == "teacher":
        cfg = dataclasses.replace(cfg, **family_fields(info))
    inter = intermediate_size or info.intermediate_size
    if not 1 <= inter <= info.intermediate_size:
        raise TeacherError(f"--intermediate-size {inter}: must be in [1, the teacher's {info.intermediate_size}]")
    dims: dict[str, Any] = {"hidden_size": info.hidden_size, "num_heads": info.num_heads, "intermediate_size": inter}
    if take_dims:
        cfg = dataclasses.replace(cfg, **dims)
    else:
        bad = [f"{k} {getattr(cfg, k)} (teacher {v})" for k, v in dims.items() if getattr(cfg, k) != v]
        if bad:
            raise TeacherError(
                f"student and teacher dimensions differ: {', '.join(bad)}; pass --dims teacher "
                "to take the teacher's width, heads and FFN size (the preset keeps its depth, "
                "groups, embedding size and MoL)"
            )
    if cfg.embedding_size > min(cfg.vocab_size, cfg.hidden_size):
        raise TeacherError(
            f"embedding_size {cfg.embedding_size}: the SVD rank must be <= min(V, d) = "
            f"{min(cfg.vocab_size, cfg.hidden_size)}"
        )
    return cfg.validate()


def svd_embedding(table_VD: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(tok_embeddings [V, e], proj.weight [d, e], squared Frobenius error) of the rank-e truncated SVD."""
    U, S, Vh = torch.linalg.svd(table_VD.double(), full_matrices=False)
    E = (U[:, :rank] * S[:rank]).float()
    P = Vh[:rank].t().float()
    return E, P, float(S[rank:].square().sum())


def keep_neurons(w_in_ID: torch.Tensor, w_out_DI: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the n FFN neurons with the largest ‖row of W_in‖·‖column of W_out‖: the
    neurons whose removal perturbs the layer's output least, to first order (magnitude pruning)."""
    score_I = w_in_ID.norm(dim=1) * w_out_DI.norm(dim=0)
    return score_I.topk(n).indices.sort().values


def bert_block(t: dict[str, torch.Tensor], tl: int, need) -> dict[str, torch.Tensor]:
    """Teacher BERT layer ``tl`` in the post-norm family student's block names (FFN unpruned)."""
    q = f"encoder.layer.{tl}."
    out = {}
    for kind in ("weight", "bias"):
        out[f"attn.Wqkv.{kind}"] = torch.cat(
            [need(q + f"attention.self.{n}.{kind}") for n in ("query", "key", "value")]
        )
        out[f"attn.Wo.{kind}"] = need(q + f"attention.output.dense.{kind}")
        out[f"attn_norm.{kind}"] = need(q + f"attention.output.LayerNorm.{kind}")
        out[f"ffn.Wi.{kind}"] = need(q + f"intermediate.dense.{kind}")
        out[f"ffn.Wo.{kind}"] = need(q + f"output.dense.{kind}")
        out[f"ffn_norm.{kind}"] = need(q + f"output.LayerNorm.{kind}")
    return out


def prune_ffn(block: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """``block`` (a plain GELU FFN's names) with only the FFN neurons ``keep``."""
    out = dict(block)
    out["ffn.Wi.weight"], out["ffn.Wi.bias"] = block["ffn.Wi.weight"][keep], block["ffn.Wi.bias"][keep]
    out["ffn.Wo.weight"] = block["ffn.Wo.weight"][:, keep]
    return out


def mean_blocks(blocks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in blocks]).mean(0) for k in blocks[0]}


def svd_experts(
    ffn_prefix: str,
    shared: dict[str, torch.Tensor],
    depths: list[dict[str, torch.Tensor]],
    out: dict[str, torch.Tensor],
    scale: float,
) -> list[float]:
    """Expert j ← the rank-r truncated SVD of depth j's (Wi, Wo) minus the shared ones: s·B·A ≈ ΔW.

    Writes A1/B1/A2/B2 rows j < len(depths) into ``out``; returns each depth's relative squared error of ΔWi.
    """
    errs = []
    A1, B1, A2, B2 = (out[ffn_prefix + n].clone() for n in ("A1", "B1", "A2", "B2"))
    R = A1.shape[1]
    for j, blk in enumerate(depths[: A1.shape[0]]):
        for w, A, B in (("ffn.Wi.weight", A1, B1), ("ffn.Wo.weight", A2, B2)):
            delta = (blk[w] - shared[w]).double()
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            root = (S[:R] / scale).sqrt()
            B[j], A[j] = (U[:, :R] * root).float(), (root[:, None] * Vh[:R]).float()
            if w == "ffn.Wi.weight":
                errs.append(float(S[R:].square().sum() / S.square().sum().clamp_min(1e-30)))
    for n, v in zip(("A1", "B1", "A2", "B2"), (A1, B1, A2, B2)):
        out[ffn_prefix + n] = v
    return errs


def depth_router_bias(state: dict[str, torch.Tensor], cfg: ModelConfig, value: float) -> None:
    """Start each MoL router towards "application j → expert j mod E": ``depth_bias[j, j mod E] = value``.

    With ``mol_init="svd"`` expert j holds depth j's correction to the shared block, so a large enough
    ``value`` makes the mixture at step 0 close to the teacher's depth-specific layers instead of a random
    pair of depths' corrections per token; the bias stays trainable. Needs ``cfg.mol.depth_bias``.
    """
    if not cfg.mol.depth_bias:
        raise TeacherError("a depth-aware router bias needs mol.depth_bias = true")
    for g in cfg.mol.groups:
        key = f"model.groups.{g}.block.ffn.router.depth_bias"
        bias = torch.zeros_like(state[key])
        for j in range(bias.shape[0]):
            bias[j, j % bias.shape[1]] = value
        state[key] = bias


def map_weights(
    info: TeacherInfo,
    t: dict[str, torch.Tensor],
    student: dict[str, torch.Tensor],
    cfg: ModelConfig,
    layers: list[list[int]] | list[int],
    mol_init: str = "fresh",
) -> tuple[dict[str, torch.Tensor], dict]:
    """A copy of ``student`` (a fresh native state dict) with the teacher's tensors mapped in.

    ``layers``: per group, the teacher layers it starts from (their mean), or one layer per group. The
    SVD experts of a group (``mol_init="svd"``) come from the layers of its depth run (``depth_runs``), which
    is ``layers`` itself for ``average`` and not for ``lower`` or ``even``.
    """
    if mol_init not in MOL_INIT:
        raise TeacherError(f"mol_init {mol_init!r}: allowed: {', '.join(MOL_INIT)}")
    sets = [[x] if isinstance(x, int) else list(x) for x in layers]
    runs = depth_runs(len(sets), info.num_layers)
    out = dict(student)
    need = lambda k: _need(t, k, info)  # noqa: E731
    family = cfg.norm_position == "post"  # the student has the BERT family's block
    svd_errs: dict[int, list[float]] = {}
    if info.family == "bert" and family:
        table = need("embeddings.word_embeddings.weight")
        pos = need("embeddings.position_embeddings.weight")[: cfg.max_position_embeddings].clone()
        if "embeddings.token_type_embeddings.weight" in t:  # every token is type 0: fold it into the positions
            pos += t["embeddings.token_type_embeddings.weight"][0]
        out["model.embeddings.pos_embeddings.weight"] = pos
        for kind in ("weight", "bias"):
            out[f"model.embeddings.norm.{kind}"] = need(f"embeddings.LayerNorm.{kind}")
        for g, tls in enumerate(sets):
            p = f"model.groups.{g}.block."
            full = [bert_block(t, tl, need) for tl in tls]
            shared = mean_blocks(full)
            keep = keep_neurons(shared["ffn.Wi.weight"], shared["ffn.Wo.weight"], cfg.intermediate_size)
            shared = prune_ffn(shared, keep)
            out.update({p + k: v for k, v in shared.items()})
            if mol_init == "svd" and g in cfg.mol.groups and len(runs[g]) > 1:
                by_layer = dict(zip(tls, full))
                depths = [prune_ffn(by_layer.get(tl) or bert_block(t, tl, need), keep) for tl in runs[g]]
                svd_errs[g] = svd_experts(p + "ffn.", shared, depths, out, cfg.mol.alpha / cfg.mol.rank)
        if info.has_mlm_head and "cls.predictions.transform.dense.weight" in t:
            for kind in ("weight", "bias"):
                out[f"head.dense.{kind}"] = t[f"cls.predictions.transform.dense.{kind}"]
                out[f"head.norm.{kind}"] = t[f"cls.predictions.transform.LayerNorm.{kind}"]
            out["decoder_bias"] = t["cls.predictions.bias"]
    elif info.family == "bert":  # onto the ModernBERT-style block: lossy (module docstring)
        if mol_init == "svd":
            raise TeacherError("mol_init svd needs the teacher's block family (block teacher)")
        table = need("embeddings.word_embeddings.weight").clone()
        if "embeddings.token_type_embeddings.weight" in t:
            table += t["embeddings.token_type_embeddings.weight"][0]
        out["model.embeddings.norm.weight"] = need("embeddings.LayerNorm.weight")
        for g, tls in enumerate(sets):
            p = f"model.groups.{g}.block."
            avg = lambda key: torch.stack([need(f"encoder.layer.{tl}." + key) for tl in tls]).mean(0)  # noqa: E731
            out[p + "attn.Wqkv.weight"] = torch.cat(
                [avg(f"attention.self.{n}.weight") for n in ("query", "key", "value")]
            )
            out[p + "attn.Wo.weight"] = avg("attention.output.dense.weight")
            if p + "attn_norm.weight" in out:
                tl = tls[0]
                out[p + "attn_norm.weight"] = (
                    need(f"encoder.layer.{tl - 1}.output.LayerNorm.weight")
                    if tl > 0
                    else need("embeddings.LayerNorm.weight")
                )
            out[p + "ffn_norm.weight"] = avg("attention.output.LayerNorm.weight")
            up, down = avg("intermediate.dense.weight"), avg("output.dense.weight")
            keep = keep_neurons(up, down, cfg.intermediate_size)
            out[p + "ffn.Wi.weight"] = torch.cat([up[keep], up[keep]])
            out[p + "ffn.Wo.weight"] = down[:, keep]
        out["model.final_norm.weight"] = need(f"encoder.layer.{info.num_layers - 1}.output.LayerNorm.weight")
        if info.has_mlm_head and "cls.predictions.transform.dense.weight" in t:
            out["head.dense.weight"] = t["cls.predictions.transform.dense.weight"]
            out["head.norm.weight"] = t["cls.predictions.transform.LayerNorm.weight"]
            out["decoder_bias"] = t["cls.predictions.bias"]
    else:
        if mol_init == "svd":
            raise TeacherError("mol_init svd is implemented for BERT-family teachers only")
        table = need("embeddings.tok_embeddings.weight")
        out["model.embeddings.norm.weight"] = need("embeddings.norm.weight")
        for g, tls in enumerate(sets):
            p = f"model.groups.{g}.block."
            avg = lambda key: torch.stack([need(f"layers.{tl}." + key) for tl in tls]).mean(0)  # noqa: E731
            out[p + "attn.Wqkv.weight"] = avg("attn.Wqkv.weight")
            out[p + "attn.Wo.weight"] = avg("attn.Wo.weight")
            if p + "attn_norm.weight" in out:
                out[p + "attn_norm.weight"] = torch.stack(
                    [t.get(f"layers.{tl}.attn_norm.weight", torch.ones(cfg.hidden_size)) for tl in tls]
                ).mean(0)
            out[p + "ffn_norm.weight"] = avg("mlp_norm.weight")
            (u, gate), down = avg("mlp.Wi.weight").chunk(2), avg("mlp.Wo.weight")
            keep = keep_neurons(u, down, cfg.intermediate_size)
            out[p + "ffn.Wi.weight"] = torch.cat([u[keep], gate[keep]])
            out[p + "ffn.Wo.weight"] = down[:, keep]
        out["model.final_norm.weight"] = need("final_norm.weight")
        if "head.dense.weight" in t:
            out["head.dense.weight"] = t["head.dense.weight"]
            out["head.norm.weight"] = t["head.norm.weight"]
            if "decoder.bias" in t:
                out["decoder_bias"] = t["decoder.bias"]
    E, P, err = svd_embedding(table, cfg.embedding_size)
    out["model.embeddings.tok_embeddings.weight"], out["model.embeddings.proj.weight"] = E, P
    for k, v in out.items():
        if k not in student:
            raise TeacherError(f"the student has no tensor {k} for the teacher's (block family mismatch)")
        if tuple(v.shape) != tuple(student[k].shape):
            raise TeacherError(
                f"teacher tensor for {k} has shape {tuple(v.shape)}, the student needs {tuple(student[k].shape)}"
            )
    report = {
        "teacher": os.path.abspath(info.path),
        "family": info.family,
        "architectures": info.architectures,
        "block": "teacher" if family or info.family == "modernbert" else "modern",
        "group_to_teacher_layers": sets,
        "group_to_depth_layers": runs,
        "embedding_svd_rank": cfg.embedding_size,
        "embedding_svd_sq_error": err,
        "embedding_sq_norm": float(table.double().square().sum()),
        "mlm_head_from_teacher": info.has_mlm_head,
        "ffn_neurons_kept": f"{cfg.intermediate_size} of {info.intermediate_size}",
        "mol_init": mol_init,
    }
    if svd_errs:
        report["mol_svd_rel_sq_error_wi"] = {str(g): e for g, e in svd_errs.items()}
    return out, report


def _need(t: dict[str, torch.Tensor], key: str, info: TeacherInfo) -> torch.Tensor:
    if key not in t:
        raise TeacherError(f"teacher {info.path!r} ({info.family}): tensor {key!r} not found")
    return t[key]
