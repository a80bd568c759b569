"""Unique parameter counts and the per-application FLOP count (used for MFU).

FLOPs are counted per *application*: a shared block applied G times costs G times. Only real tokens
count (the model is unpadded); local attention is counted over the keys inside its window; the MLM
head only at masked positions; MoL at its top-k cost (k expert LoRA paths per token, the shared Wi/Wo
once); LoRA-Mixer experts at k of E (all E in ``soft`` mode). A multiply-add is 2 FLOPs; the backward
pass is counted as 2× the forward. Never ``6 × parameters`` for this model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelConfig
from model.mol import wi_width


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Unique parameters by component (built on the meta device: no memory, no init cost)."""
    from model.modernalbert import ModernAlbertForMaskedLM

    with torch.device("meta"):
        model = ModernAlbertForMaskedLM(cfg)
    parts = {"embedding": 0, "blocks": 0, "mol_experts": 0, "attn_experts": 0, "head": 0}
    for name, p in model.named_parameters():
        if name.startswith("model.embeddings"):
            key = "embedding"
        elif ".ffn." in name and not name.endswith(("Wi.weight", "Wo.weight")):
            key = "mol_experts"  # router + LoRA factors
        elif ".attn." in name and ("lora_" in name or "router" in name):
            key = "attn_experts"
        elif name.startswith("model."):
            key = "blocks"
        else:
            key = "head"
        parts[key] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


def attention_pairs(doc_lens: list[int], window: int | None) -> int:
    """Number of (query, key) pairs attention scores over: Σ_docs L² globally, fewer in a window."""
    total = 0
    for n in doc_lens:
        if window is None or window >= n - 1:
            total += n * n
        else:  # row i sees keys in [i - w, i + w] ∩ [0, n): n(2w+1) minus the clipped corners
            total += n * (2 * window + 1) - window * (window + 1)
    return total


@dataclass
class FlopCount:
    embedding: float
    layers: list[float]  # forward FLOPs of each layer application (L entries)
    head: float
    forward: float
    training: float  # forward + backward (2× forward)


def block_flops(cfg: ModelConfig, layer: int, doc_lens: list[int]) -> float:
    """Forward FLOPs of one block application at ``layer`` on the tokens of ``doc_lens``."""
    T = sum(doc_lens)
    d, I = cfg.hidden_size, cfg.intermediate_size
    F = wi_width(I, cfg.ffn_activation)  # Wi's output: 2I (GeGLU) or I (GELU)
    group = layer // cfg.group_depth
    window = None if cfg.is_global(layer) else cfg.local_window // 2
    f = 2 * T * d * 3 * d + 2 * T * d * d  # Wqkv, Wo
    f += 2 * 2 * attention_pairs(doc_lens, window) * d  # QKᵀ and PV over all heads
    f += 2 * T * d * F + 2 * T * I * d  # Wi, Wo
    if group in cfg.mol.groups:
        m = cfg.mol
        f += 2 * T * d * m.num_experts if m.routing == "learned" else 0  # router
        f += m.top_k * 2 * T * m.rank * (d + F + I + d)  # A1, B1, A2, B2 of k experts
    if group in cfg.attn_experts.groups:
        a = cfg.attn_experts
        k = a.num_experts if a.routing == "soft" else a.top_k
        routers = 2 if a.route == "per_projection" else 1
        f += routers * 2 * T * d * a.num_experts + k * 2 * T * a.rank * (d + 3 * d + d + d)
    return float(f)


def count_flops(cfg: ModelConfig, doc_lens: list[int], num_masked: int) -> FlopCount:
    """FLOPs of one forward over documents ``doc_lens`` (tokens, specials included) with ``num_masked`` targets."""
    T = sum(doc_lens)
    d, e, V = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
    embedding = 2.0 * T * e * d
    layers = [block_flops(cfg, i, doc_lens) for i in range(cfg.num_layers)]
    head = 2.0 * num_masked * (d * d + d * e + e * V)  # dense, ·P, ·Eᵀ
    forward = embedding + sum(layers) + head
    return FlopCount(embedding, layers, head, forward, 3 * forward)


class TrainingFlops:
    """``count_flops(cfg, lens, M).training`` for a packed batch, without a Python loop per layer or document.

    Every term but attention is linear in the tokens T or the masked positions M; attention is linear in
    the (query, key) pairs, which depend only on whether a layer is global or local. The coefficients
    are computed once per config; a call costs a few tensor ops on ``cu_seqlens`` (on the host).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        d, e, V = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
        self.window = cfg.local_window // 2
        self.per_token = 2.0 * e * d + sum(block_flops(cfg, i, [1]) - 4.0 * d for i in range(cfg.num_layers))
        self.per_masked = 2.0 * (d * d + d * e + e * V)
        n_global = sum(cfg.is_global(i) for i in range(cfg.num_layers))
        self.per_pair = {True: 4.0 * d * n_global, False: 4.0 * d * (cfg.num_layers - n_global)}

    def __call__(self, cu_seqlens: torch.Tensor, num_masked: int) -> float:
        n = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.float64)
        w = self.window
        local = torch.where(w >= n - 1, n * n, n * (2 * w + 1) - w * (w + 1))
        forward = (
            self.per_token * float(n.sum())
            + self.per_masked * num_masked
            + self.per_pair[True] * float((n * n).sum())
            + self.per_pair[False] * float(local.sum())
        )
        return 3 * forward
