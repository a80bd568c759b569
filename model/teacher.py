"""Read a HuggingFace encoder (BERT or ModernBERT family) and map its weights onto a ModernALBERT student.

Used by ``tools/init_from_teacher.py`` (distillation-based initialisation: each student group starts
from a chosen teacher layer) and by the
distillation losses of pretraining (``pretrain/distill.py``, which needs the layer map).

Mapping (student group g ← teacher layer t_g, evenly spaced over the teacher's layers, first and last
included):
  ModernBERT  Wqkv, Wo, mlp_norm → ffn_norm, mlp.Wi, mlp.Wo and the layer's attn_norm are copied as
              they are (its layer 0 has no attention norm: ones); head.dense/norm and the decoder bias.
  BERT        Wqkv = [query; key; value], Wo = attention.output.dense, FFN Wo = output.dense. BERT is
              post-norm: the LayerNorm that precedes layer t's FFN (attention.output.LayerNorm) becomes
              ffn_norm, the one that precedes its attention (layer t-1's output.LayerNorm, or the
              embedding norm for t = 0) becomes attn_norm. BERT's FFN is not gated: both halves of
              the GeGLU Wi (value u and gate g) get intermediate.dense, so the student computes
              gelu(h)·h where BERT computes gelu(h) (same sign pattern; training adapts it). Biases
              and absolute position embeddings have no place in the student and are dropped;
              token-type embedding 0 is added to every word embedding before the SVD.
  Embedding   the V×d table T (BERT: word + token type 0; ModernBERT: tok_embeddings) is factorised by
              a truncated SVD, T ≈ U_e S_e V_eᵀ: tok_embeddings = U_e S_e (V×e), proj = V_e (d×e). Its
              squared Frobenius error is Σ_{i>e} σ_i² (Eckart–Young), the least any rank-e factorisation can have.
MoL experts, routers and (for teachers without an MLM head) the MLM head keep their fresh initialisation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from model.config import ModelConfig

FAMILIES = {"bert": "bert", "modernbert": "modernbert"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


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
        raise TeacherError(f"teacher {path!r}: model_type {c.get('model_type')!r} "
                           f"({', '.join(c.get('architectures') or ['no architectures'])}) is not supported; "
                           f"supported: {', '.join(FAMILIES)} (BertModel/BertForMaskedLM, ModernBert*)")
    archs = c.get("architectures") or []
    tok = next((os.path.join(path, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))), None)
    return TeacherInfo(path=path, family=family, architectures=archs, hidden_size=c["hidden_size"],
                       num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                       intermediate_size=c["intermediate_size"], vocab_size=c["vocab_size"],
                       has_mlm_head=any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in archs),
                       tokenizer=tok)


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
        out[k[len(prefix):] if k.startswith(prefix) else k] = v.float()
    return out


def layer_map(num_groups: int, teacher_layers: int) -> list[int]:
    """Teacher layer for each student group: evenly spaced, first and last included."""
    if num_groups == 1:
        return [teacher_layers - 1]
    return [round(g * (teacher_layers - 1) / (num_groups - 1)) for g in range(num_groups)]


def student_config(info: TeacherInfo, base: ModelConfig, take_dims: bool,
                   intermediate_size: int | None = None) -> ModelConfig:
    """``base`` with the teacher's vocabulary; with ``take_dims`` also its width, heads and FFN size.

    ``intermediate_size`` below the teacher's keeps that many of each mapped layer's FFN neurons (the
    ones with the largest ‖w_in‖·‖w_out‖, see ``keep_neurons``): a narrower FFN, fewer unique parameters.
    """
    import dataclasses

    cfg = dataclasses.replace(base, vocab_size=info.vocab_size)
    inter = intermediate_size or info.intermediate_size
    if not 1 <= inter <= info.intermediate_size:
        raise TeacherError(f"--intermediate-size {inter}: must be in [1, the teacher's {info.intermediate_size}]")
    dims = {"hidden_size": info.hidden_size, "num_heads": info.num_heads, "intermediate_size": inter}
    if take_dims:
        cfg = dataclasses.replace(cfg, **dims)
    else:
        bad = [f"{k} {getattr(cfg, k)} (teacher {v})" for k, v in dims.items() if getattr(cfg, k) != v]
        if bad:
            raise TeacherError(f"student and teacher dimensions differ: {', '.join(bad)}; pass --dims teacher "
                               "to take the teacher's width, heads and FFN size (the preset keeps its depth, "
                               "groups, embedding size and MoL)")
    if cfg.embedding_size > min(cfg.vocab_size, cfg.hidden_size):
        raise TeacherError(f"embedding_size {cfg.embedding_size}: the SVD rank must be <= min(V, d) = "
                           f"{min(cfg.vocab_size, cfg.hidden_size)}")
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


def map_weights(info: TeacherInfo, t: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                cfg: ModelConfig, layers: list[int]) -> tuple[dict[str, torch.Tensor], dict]:
    """A copy of ``student`` (a fresh native state dict) with the teacher's tensors mapped in."""
    out = dict(student)
    need = lambda k: _need(t, k, info)  # noqa: E731
    if info.family == "bert":
        table = need("embeddings.word_embeddings.weight").clone()
        if "embeddings.token_type_embeddings.weight" in t:
            table += t["embeddings.token_type_embeddings.weight"][0]
        out["model.embeddings.norm.weight"] = need("embeddings.LayerNorm.weight")
        for g, tl in enumerate(layers):
            p, q = f"model.groups.{g}.block.", f"encoder.layer.{tl}."
            out[p + "attn.Wqkv.weight"] = torch.cat([need(q + f"attention.self.{n}.weight") for n in ("query", "key", "value")])
            out[p + "attn.Wo.weight"] = need(q + "attention.output.dense.weight")
            if p + "attn_norm.weight" in out:
                out[p + "attn_norm.weight"] = (need(f"encoder.layer.{tl - 1}.output.LayerNorm.weight") if tl > 0
                                               else need("embeddings.LayerNorm.weight"))
            out[p + "ffn_norm.weight"] = need(q + "attention.output.LayerNorm.weight")
            up, down = need(q + "intermediate.dense.weight"), need(q + "output.dense.weight")
            keep = keep_neurons(up, down, cfg.intermediate_size)
            out[p + "ffn.Wi.weight"] = torch.cat([up[keep], up[keep]])
            out[p + "ffn.Wo.weight"] = down[:, keep]
        out["model.final_norm.weight"] = need(f"encoder.layer.{info.num_layers - 1}.output.LayerNorm.weight")
        if info.has_mlm_head and "cls.predictions.transform.dense.weight" in t:
            out["head.dense.weight"] = t["cls.predictions.transform.dense.weight"]
            out["head.norm.weight"] = t["cls.predictions.transform.LayerNorm.weight"]
            out["decoder_bias"] = t["cls.predictions.bias"]
    else:
        table = need("embeddings.tok_embeddings.weight")
        out["model.embeddings.norm.weight"] = need("embeddings.norm.weight")
        for g, tl in enumerate(layers):
            p, q = f"model.groups.{g}.block.", f"layers.{tl}."
            out[p + "attn.Wqkv.weight"] = need(q + "attn.Wqkv.weight")
            out[p + "attn.Wo.weight"] = need(q + "attn.Wo.weight")
            if p + "attn_norm.weight" in out:
                out[p + "attn_norm.weight"] = t.get(q + "attn_norm.weight", torch.ones(cfg.hidden_size))
            out[p + "ffn_norm.weight"] = need(q + "mlp_norm.weight")
            (u, gate), down = need(q + "mlp.Wi.weight").chunk(2), need(q + "mlp.Wo.weight")
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
        if tuple(v.shape) != tuple(student[k].shape):
            raise TeacherError(f"teacher tensor for {k} has shape {tuple(v.shape)}, the student needs "
                               f"{tuple(student[k].shape)}")
    report = {"teacher": os.path.abspath(info.path), "family": info.family, "architectures": info.architectures,
              "group_to_teacher_layer": layers, "embedding_svd_rank": cfg.embedding_size,
              "embedding_svd_sq_error": err, "embedding_sq_norm": float(table.double().square().sum()),
              "mlm_head_from_teacher": info.has_mlm_head,
              "ffn_neurons_kept": f"{cfg.intermediate_size} of {info.intermediate_size}"}
    return out, report


def _need(t: dict[str, torch.Tensor], key: str, info: TeacherInfo) -> torch.Tensor:
    if key not in t:
        raise TeacherError(f"teacher {info.path!r} ({info.family}): tensor {key!r} not found")
    return t[key]
