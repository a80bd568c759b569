"""Token routing shared by MoL (FFN) and LoRA-Mixer (attention): router, top-k, auxiliary losses.

Router math runs in fp32. Auxiliary losses and routing statistics of one forward go into a
``RoutingRecorder`` that the model creates per forward and hands to every routed module through its
arguments; the model returns what it holds (``MaskedLMOutput.aux_losses`` / ``.routing_stats``), and
``model/losses.py`` combines the losses.

Shapes: T tokens, E experts, K chosen experts per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import RSL_ENTROPY


class Routing(NamedTuple):
    """A NamedTuple (not a dataclass) so wrappers that walk module outputs (DeepSpeed ZeRO-3) see its tensors."""

    logits_TE: torch.Tensor  # fp32
    probs_TE: torch.Tensor  # fp32 softmax
    topk_idx_TK: torch.Tensor  # int64
    topk_w_TK: torch.Tensor  # fp32, renormalised to sum to 1 per token


class Router(nn.Module):
    """Linear d→E (no bias) in fp32, with multiplicative jitter on its input while training.

    ``depths`` > 0 adds a learned bias per application of a recursive group, ``depth_bias`` [depths, E]
    (zeros at init): the token's hidden state alone does not say which application it is in, so this is
    how a router shared by a group's depths can tell them apart (``tools/init_from_teacher.py
    --mol-depth-bias`` starts it towards the expert initialised from each depth).
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, jitter: float, depths: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        self.depth_bias = nn.Parameter(torch.zeros(depths, num_experts)) if depths else None
        self.top_k, self.jitter = top_k, jitter
        nn.init.normal_(self.weight, std=0.02)

    def logits(self, x_TD: torch.Tensor, depth: int | torch.Tensor | None = None) -> torch.Tensor:
        """[T, E] fp32 logits, no jitter; ``depth``: the application whose bias is added (with ``depths``)."""
        logits_TE = F.linear(x_TD.float(), self.weight.float())
        if self.depth_bias is not None:
            if depth is None:
                raise ValueError("this router has a depth bias: pass the application index (depth)")
            logits_TE = logits_TE + self.depth_bias[depth].float()
        return logits_TE

    def forward(self, x_TD: torch.Tensor, depth: int | torch.Tensor | None = None) -> Routing:
        x = x_TD.float()
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits_TE = self.logits(x, depth)
        probs_TE = logits_TE.softmax(dim=-1)
        top_p, top_i = probs_TE.topk(self.top_k, dim=-1)
        return Routing(logits_TE, probs_TE, top_i, top_p / top_p.sum(dim=-1, keepdim=True))


def topk_dense(r: Routing) -> torch.Tensor:
    """The renormalised top-k weights as a dense [T, E] matrix (zeros elsewhere)."""
    return torch.zeros_like(r.probs_TE).scatter(1, r.topk_idx_TK, r.topk_w_TK)


def mixing_weights(r: Routing, mode: str) -> torch.Tensor:
    """Per-token expert weights [T, E] for LoRA-Mixer's routing modes.

    soft: the softmax; topk: renormalised top-k; hardsoft: top-k in the forward pass, the softmax's
    gradient in the backward pass (straight-through).
    """
    if mode == "soft":
        return r.probs_TE
    hard = topk_dense(r)
    if mode == "topk":
        return hard
    if mode == "hardsoft":
        return r.probs_TE + (hard - r.probs_TE).detach()
    raise ValueError(f"routing={mode!r}: allowed: soft, topk, hardsoft")


def expert_counts(idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many entries of ``idx`` name each expert, int64 [E], without a host sync (CUDA's
    ``torch.bincount`` reads the largest index on the host first)."""
    flat = idx.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.long, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))


def assignment_share(r: Routing) -> torch.Tensor:
    """f_E: share of the T·K top-k assignments that went to each expert."""
    counts = expert_counts(r.topk_idx_TK, r.probs_TE.shape[1]).float()
    return counts / max(1, r.topk_idx_TK.numel())


def load_balance_loss(r: Routing) -> torch.Tensor:
    """Switch load balancing E·Σ_j f_j·P_j (f: assignment share, P: mean router probability)."""
    E = r.probs_TE.shape[1]
    return E * (assignment_share(r) * r.probs_TE.mean(dim=0)).sum()


def z_loss(r: Routing) -> torch.Tensor:
    return torch.logsumexp(r.logits_TE, dim=-1).square().mean()


def entropy(probs_TE: torch.Tensor) -> torch.Tensor:
    """Per-token entropy [T] of the routing distribution."""
    return -(probs_TE * probs_TE.clamp_min(1e-12).log()).sum(dim=-1)


def routing_specialization_loss(r: Routing, alpha: float, lam: float, entropy_goal: str = "maximise") -> torch.Tensor:
    """LoRA-Mixer's Routing Specialization Loss (the paper's printed Eq. 5), to be minimised:

        RSL = α·E·Σ_j f̄_j p̄_j − λ·mean_t H(p(x_t))      (entropy_goal="maximise", the default)
        RSL = α·E·Σ_j f̄_j p̄_j + λ·mean_t H(p(x_t))      (entropy_goal="minimise": sharpens each token's choice)

    The first term spreads the load over the experts globally; λ >= 0 weighs the per-token entropy term.
    The default keeps the printed sign (−λ·H: the entropy is maximised, which flattens each token's routing;
    "minimise" is the reading under which the loss specialises). The model sums it over every routed
    application (``RoutingRecorder``), as the paper's per-layer loss is summed over the layers of the unrolled
    depth: a group's router, shared by its G applications, gets G terms, each weighted like an unshared
    layer's, so α and λ mean the same per application whatever the sharing.
    """
    if entropy_goal not in RSL_ENTROPY:
        raise ValueError(f"rsl_entropy={entropy_goal!r}: allowed: {', '.join(RSL_ENTROPY)}")
    E = r.probs_TE.shape[1]
    balance = E * (assignment_share(r) * r.probs_TE.mean(dim=0)).sum()
    sign = -1.0 if entropy_goal == "maximise" else 1.0
    return alpha * balance + sign * lam * entropy(r.probs_TE).mean()


class RoutingRecorder:
    """The auxiliary losses and routing statistics of one forward, filled in by the routed modules.

    Losses are summed per name over every routed application (unscaled); statistics are kept per
    application as ``"layer{i}.{kind}"`` (kind: ``attn``, ``attn_o`` or ``ffn``). A routed module records its
    losses and statistics under its kind alone (``record``: inside a possibly compiled block, where the layer
    is a tensor); the group loop then files them as the application's (``name``, outside the block, with the
    Python layer index). ``record`` only stores one attribute per kind and reads nothing, so a compiled
    block's graph never depends on what was recorded before, nor on ``closed``. ``close()`` ends the
    forward: an activation-checkpointing recompute in the backward runs the routers again, and its
    (identical) records are never filed, so they add nothing.
    """

    KINDS = ("attn", "attn_o", "ffn")

    def __init__(self) -> None:
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        self.closed = False
        for kind in self.KINDS:  # kind -> (losses, statistics) recorded since the last ``name``
            setattr(self, f"_pending_{kind}", None)

    def record(self, kind: str, r: Routing, losses: dict[str, torch.Tensor], layer: int | None = None) -> None:
        """Keep ``losses`` and ``r``'s statistics for this application: filed under ``layer`` when given (a
        module run on its own), else by the group loop's ``name``."""
        with torch.no_grad():
            stats = {
                "tokens_per_expert": expert_counts(r.topk_idx_TK, r.probs_TE.shape[1]),
                "router_entropy": entropy(r.probs_TE).mean(),
                **{name: value.detach() for name, value in losses.items()},
            }
        setattr(self, f"_pending_{kind}", (losses, stats))
        if layer is not None:
            self.name(layer)

    def name(self, layer: int) -> None:
        """File the records since the last call as layer ``layer``'s (``"layer{layer}.{kind}"``); their losses
        join the sums. Nothing is filed once the forward is closed."""
        for kind in self.KINDS:
            pending = getattr(self, f"_pending_{kind}")
            if pending is None:
                continue
            setattr(self, f"_pending_{kind}", None)
            if self.closed:
                continue
            losses, stats = pending
            for name, value in losses.items():
                self.aux_losses[name] = self.aux_losses[name] + value if name in self.aux_losses else value
            self.stats[f"layer{layer}.{kind}"] = stats

    def close(self) -> "RoutingRecorder":
        self.closed = True
        return self
