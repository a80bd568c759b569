"""ModernALBERT: a recursive (parameter-shared) BERT encoder, unpadded, with MoL and LoRA-Mixer experts.

Layer i (0-based) applies the block of group ⌊i/G⌋; a ``RecursiveGroup`` runs its one block G times in
a row, so a parallelism wrapper (FSDP2, activation checkpointing, compile) applied per group keeps the
weights gathered across the G applications. Blocks are pre-norm; layer 0 has no attention norm (the
embedding norm precedes it). Layer i is global when ``i % global_every == 0``, else local (window
``local_window``), with the matching RoPE θ — decided by the layer index, not the group.

Everything runs on a flat stream of T real tokens with ``cu_seqlens``; nothing here knows of
``torch.distributed``. Shapes: T tokens, D hidden, H heads, Dh head size, M masked positions, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import RotaryEmbedding, apply_rotary, attention, segment_positions
from model.config import ModelConfig
from model.lora_mixer import MixtureLinear
from model.mol import GeGLUFFN, MoLFFN
from model.routing import RoutedModule, Router, mixing_weights, routing_specialization_loss


@dataclass
class ForwardContext:
    """Per-forward inputs shared by every layer (built once, not per layer)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    rope: dict[bool, tuple[torch.Tensor, torch.Tensor]]  # is_global → (cos, sin) [T, Dh]


class Attention(RoutedModule):
    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        ae = cfg.attn_experts
        self.routed = group in ae.groups
        if self.routed:
            self.router = Router(d, ae.num_experts, ae.top_k, ae.jitter)
            self.Wqkv = MixtureLinear(d, 3 * d, ae.num_experts, ae.rank, ae.alpha)
            self.Wo = MixtureLinear(d, d, ae.num_experts, ae.rank, ae.alpha)
        else:
            self.Wqkv = nn.Linear(d, 3 * d, bias=False)
            self.Wo = nn.Linear(d, d, bias=False)

    def forward(self, x_TD: torch.Tensor, layer: int, ctx: ForwardContext) -> torch.Tensor:
        cfg = self.cfg
        T = x_TD.shape[0]
        if self.routed:
            r = self.router(x_TD)
            ae = cfg.attn_experts
            self.record(layer, r, {"attn_rsl": routing_specialization_loss(r, ae.rsl_alpha, ae.rsl_lambda)})
            w_TE = mixing_weights(r, ae.routing)
            qkv = self.Wqkv(x_TD, w_TE)
        else:
            qkv = self.Wqkv(x_TD)
        # split (not slicing): its backward is one cat, where slices would zero-fill [T, 3, H, Dh] twice
        qk, v = qkv.view(T, 3, cfg.num_heads, cfg.head_dim).split([2, 1], dim=1)
        is_global = cfg.is_global(layer)
        q, k = apply_rotary(qk, *ctx.rope[is_global]).unbind(dim=1)  # q and k rotated together
        v = v.squeeze(1)
        o_THD = attention(q, k, v, ctx.cu_seqlens, ctx.max_seqlen, None if is_global else cfg.local_window // 2,
                          cfg.attn_backend, cfg.attention_dropout if self.training else 0.0)
        o_TD = o_THD.reshape(T, cfg.hidden_size)
        return self.Wo(o_TD, w_TE) if self.routed else self.Wo(o_TD)


class Block(nn.Module):
    """One pre-norm transformer block; ``layer`` says which application (layer index) this call is."""

    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        # group 0's block also runs at layers 1..G-1, which do normalise: it keeps the norm, layer 0 skips it
        self.attn_norm = nn.LayerNorm(d, eps=cfg.norm_eps, bias=False) if (group > 0 or cfg.group_depth > 1) else None
        self.attn = Attention(cfg, group)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.norm_eps, bias=False)
        self.ffn = MoLFFN(d, cfg.intermediate_size, cfg.mol) if group in cfg.mol.groups else GeGLUFFN(d, cfg.intermediate_size)

    def forward(self, x_TD: torch.Tensor, layer: int, ctx: ForwardContext) -> torch.Tensor:
        h = x_TD if layer == 0 else self.attn_norm(x_TD)
        x_TD = x_TD + self.attn(h, layer, ctx)
        return x_TD + self.ffn(self.ffn_norm(x_TD), layer)


class RecursiveGroup(nn.Module):
    """K-th parameter group: one block applied G times, at layers first_layer … first_layer + G - 1."""

    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        self.first_layer, self.depth = group * cfg.group_depth, cfg.group_depth
        self.block = Block(cfg, group)

    def forward(self, x_TD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        for layer in range(self.first_layer, self.first_layer + self.depth):
            x_TD = self.block(x_TD, layer, ctx)
        return x_TD


class Embeddings(nn.Module):
    """ALBERT factorisation: token table V×e → linear e→d (no bias) → LayerNorm → dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.proj = nn.Linear(cfg.embedding_size, cfg.hidden_size, bias=False)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=False)
        self.drop = nn.Dropout(cfg.embedding_dropout)

    def forward(self, input_ids_T: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.proj(self.tok_embeddings(input_ids_T))))


class ModernAlbertModel(nn.Module):
    """The encoder: embeddings → K recursive groups (L = K·G layers) → final LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.embeddings = Embeddings(cfg)
        self.groups = nn.ModuleList(RecursiveGroup(cfg, g) for g in range(cfg.num_groups))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=False)
        self.rope = nn.ModuleDict({
            "global": RotaryEmbedding(cfg.head_dim, cfg.rope_theta_global),
            "local": RotaryEmbedding(cfg.head_dim, cfg.rope_theta_local),
        })

    def context(self, cu_seqlens: torch.Tensor, max_seqlen: int, total: int, dtype: torch.dtype) -> ForwardContext:
        pos_T = segment_positions(cu_seqlens, total)  # RoPE positions restart in every segment
        rope = {True: self.rope["global"](pos_T, dtype), False: self.rope["local"](pos_T, dtype)}
        return ForwardContext(cu_seqlens, int(max_seqlen), rope)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids [T], cu_seqlens [N+1] → (last hidden state [T, D], per-group outputs if asked)."""
        for m in self.modules():
            if isinstance(m, RoutedModule):
                m.reset_routing_records()
        x_TD = self.embeddings(input_ids)
        ctx = self.context(cu_seqlens, max_seqlen, input_ids.shape[0], x_TD.dtype)
        hidden = []
        for group in self.groups:
            x_TD = group(x_TD, ctx)
            if output_hidden_states:
                hidden.append(x_TD)
        return self.final_norm(x_TD), hidden

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Sum over every routed application of this forward, per loss name (unscaled)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.modules():
            if isinstance(m, RoutedModule):
                for name, value in m.aux_records:
                    out[name] = out[name] + value if name in out else value
        return out

    def routing_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Detached per-layer routing statistics of the last forward: ``{"layer5.ffn": {...}}``."""
        out = {}
        for name, m in self.named_modules():
            if isinstance(m, RoutedModule):
                kind = name.rsplit(".", 1)[-1]
                for layer, st in m.stats.items():
                    out[f"layer{layer}.{kind}"] = st
        return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split(".")[0][5:]), kv[0])))


class MLMHead(nn.Module):
    """ModernBERT's prediction head: dense d→d, GELU, LayerNorm (the decoder is tied, see below)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=False)

    def forward(self, h_MD: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(h_MD)))


def weighted_aux(cfg: ModelConfig, aux: dict[str, torch.Tensor]) -> torch.Tensor | float:
    """The auxiliary losses to add to a task loss: MoL terms times their coefficients, RSL as it is
    (it carries its own α and λ)."""
    coefs = {"mol_load_balance": cfg.mol.aux_loss_coef, "mol_z": cfg.mol.z_loss_coef, "attn_rsl": 1.0}
    return sum((coefs[name] * value for name, value in aux.items()), 0.0)


def tied_logits(emb: Embeddings, head: MLMHead, bias: torch.Tensor, h_MD: torch.Tensor) -> torch.Tensor:
    """(head(h)·P)·Eᵀ + b: two thin matmuls instead of materialising the folded V×d decoder."""
    return (head(h_MD) @ emb.proj.weight) @ emb.tok_embeddings.weight.t() + bias


class MaskedLMOutput(NamedTuple):
    """A NamedTuple (not a dataclass) so wrappers that walk module outputs (DeepSpeed ZeRO-3) see its tensors."""

    loss: torch.Tensor  # what to optimise: mlm_loss + weighted auxiliary losses
    mlm_loss: torch.Tensor
    mlm_accuracy: torch.Tensor
    num_masked: int
    logits: torch.Tensor  # [M, V], masked positions only
    aux_losses: dict[str, torch.Tensor]  # unscaled sums over applications
    hidden_states: list[torch.Tensor]  # per-group outputs when asked for, else empty


class ModernAlbertForMaskedLM(nn.Module):
    """Encoder + MLM head with the decoder tied to the factorised embedding: logits = (h·P)·Eᵀ + b.

    Sparse prediction: the head runs only at ``mlm_positions``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.model = ModernAlbertModel(cfg)
        self.head = MLMHead(cfg)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated normal (std init_std); output projections scaled by 1/√(2L); LoRA B = 0."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.num_layers)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                s = out_std if name.endswith(("attn.Wo", "ffn.Wo")) else std
                nn.init.trunc_normal_(m.weight, std=s, a=-2 * s, b=2 * s)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
            if isinstance(m, (MoLFFN, MixtureLinear)):
                m.reset_lora()
            if isinstance(m, Router):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.decoder_bias)

    def decoder_weight(self) -> torch.Tensor:
        """The folded decoder E·Pᵀ [V, d] (what a stock ModernBERT export stores)."""
        return self.model.embeddings.tok_embeddings.weight @ self.model.embeddings.proj.weight.t()

    def logits(self, h_MD: torch.Tensor) -> torch.Tensor:
        return tied_logits(self.model.embeddings, self.head, self.decoder_bias, h_MD)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                mlm_positions: torch.Tensor, mlm_labels: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> MaskedLMOutput:
        h_TD, hidden = self.model(input_ids, cu_seqlens, max_seqlen, output_hidden_states)
        logits_MV = self.logits(h_TD[mlm_positions])
        aux = self.model.aux_losses()
        if mlm_labels is None:
            zero = logits_MV.new_zeros(())
            return MaskedLMOutput(zero, zero, zero, len(mlm_positions), logits_MV, aux, hidden)
        mlm_loss = F.cross_entropy(logits_MV.float(), mlm_labels)
        with torch.no_grad():
            acc = (logits_MV.argmax(-1) == mlm_labels).float().mean()
        loss = mlm_loss + weighted_aux(self.cfg, aux)
        return MaskedLMOutput(loss, mlm_loss, acc, len(mlm_positions), logits_MV, aux, hidden)

    def routing_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.model.routing_stats()


def model_inputs(batch: dict) -> dict:
    """The model's arguments out of a loader batch (``pretrain/data.py``)."""
    return {k: batch[k] for k in ("input_ids", "cu_seqlens", "max_seqlen", "mlm_positions", "mlm_labels")}
