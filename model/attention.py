"""Unpadded multi-head attention: rotary embeddings and the attention backends behind one seam.

The model runs on a flat stream of T real tokens; ``cu_seqlens`` [N+1] (int32) marks N segments
(documents) and attention never crosses a segment boundary. Local layers attend to keys with
|i - j| <= window (window = local_window // 2, as ModernBERT); global layers to the whole segment.

Backends (``attention(..., backend=)``):
  ``flash_attn``   flash-attn's ``flash_attn_varlen_func`` (CUDA, fp16/bf16, optional extra)
  ``torch_varlen`` ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16)
  ``sdpa``         ``F.scaled_dot_product_attention`` per group of equal-length segments (no
                   padding; a mask only for windows shorter than the segment): runs anywhere
  ``auto``         the first of those that can run the given tensors

The model resolves the backend once per forward, outside its (possibly compiled) blocks
(``resolve_backend``: it probes for flash-attn), and hands the blocks the resolved name. Under
``torch.compile`` the ``sdpa`` backend runs as one custom op (``model_attention::sdpa_varlen``, its backward
another): the reference reads the segment lengths on the host, which would split the graph, so the
compiled CPU graph holds one opaque attention call where the GPU graph holds flash-attn's, and the
graph-break tests on CPU see the graph a GPU compiles. (Attention dropout under compile keeps the plain
call: the op's backward recomputes the forward, which must draw the same dropout mask.)

Shapes: T tokens, H heads, Dh head size, N segments, L longest segment.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _flash_attn_fn():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.lru_cache(maxsize=None)
def _torch_varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


RESOLVED = ("sdpa", "flash_attn", "torch_varlen")  # what resolve_backend returns


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend that will run for tensors like ``q`` (``auto`` picks the fastest available)."""
    fused_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if backend == "auto":
        if fused_ok and _flash_attn_fn() is not None:
            return "flash_attn"
        if fused_ok and _torch_varlen_fn() is not None:
            return "torch_varlen"
        return "sdpa"
    if backend == "flash_attn" and (not fused_ok or _flash_attn_fn() is None):
        raise RuntimeError("attn_backend='flash_attn' needs the flash-attn package and CUDA fp16/bf16 tensors")
    if backend == "torch_varlen" and (not fused_ok or _torch_varlen_fn() is None):
        raise RuntimeError("attn_backend='torch_varlen' needs torch.nn.attention.varlen and CUDA fp16/bf16 tensors")
    return backend


def segment_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of each of the ``total`` tokens inside its segment (restarts at every boundary)."""
    lens_N = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg_T = torch.repeat_interleave(torch.arange(len(lens_N), device=cu_seqlens.device), lens_N, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[seg_T]


def _window_mask(n: int, window: int | None, device) -> torch.Tensor | None:
    """[n, n] sliding-window mask, or None when the window covers the whole segment."""
    if window is None or n <= window + 1:
        return None
    ar = torch.arange(n, device=device)
    return (ar[:, None] - ar[None, :]).abs() <= window


def length_groups(cu_seqlens: torch.Tensor) -> dict[int, list[int]]:
    """Segment length → the start offsets of the segments that long (one host read of ``cu_seqlens``: a
    device sync on GPU, which the fused backends need not make)."""
    cu = cu_seqlens.tolist()
    by_len: dict[int, list[int]] = {}
    for start, end in zip(cu[:-1], cu[1:]):
        by_len.setdefault(end - start, []).append(start)
    return by_len


def group_index(starts: list[int], n: int, device) -> torch.Tensor:
    """The token positions of the ``n``-long segments starting at ``starts``, segment after segment."""
    return (torch.tensor(starts, device=device)[:, None] + torch.arange(n, device=device)[None, :]).reshape(-1)


def sdpa_varlen(
    q_THD, k_THD, v_THD, cu_seqlens, max_seqlen: int, window: int | None, dropout_p: float = 0.0
) -> torch.Tensor:
    """The reference backend: segments of equal length are batched into one SDPA call each.

    No padding and, for global layers (and local ones on segments that fit the window), no mask, so
    PyTorch's fused CPU kernel runs; a padded [N, L, L]-masked call was 10x slower on CPU (measured:
    23 documents, longest 742, fwd+bwd 1.04 s vs 0.10 s).
    """
    T, H, Dh = q_THD.shape
    by_len = length_groups(cu_seqlens)
    if len(by_len) == 1:  # every segment has the same length: plain views, no gather or scatter
        ((n, starts),) = by_len.items()
        q, k, v = (t.view(len(starts), n, H, Dh).transpose(1, 2) for t in (q_THD, k_THD, v_THD))
        mask = _window_mask(n, window, q_THD.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return o.transpose(1, 2).reshape(T, H, Dh)
    outs, index = [], []
    for n, group_starts in sorted(by_len.items()):
        idx = group_index(group_starts, n, q_THD.device)
        q, k, v = (
            t.index_select(0, idx).view(len(group_starts), n, H, Dh).transpose(1, 2) for t in (q_THD, k_THD, v_THD)
        )
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_window_mask(n, window, q_THD.device), dropout_p=dropout_p
        )
        outs.append(o.transpose(1, 2).reshape(-1, H, Dh))
        index.append(idx)
    inverse = torch.empty(T, dtype=torch.long, device=q_THD.device)
    order = torch.cat(index)
    inverse[order] = torch.arange(T, device=q_THD.device)
    return torch.cat(outs)[inverse]


# the operators' namespace: this module's name, so that a copy of this file in an HF export
# (modernalbert_attention) registers its own operators beside the installed project's
_OPS = re.sub(r"\W", "_", __name__)


def sdpa_varlen_grads(
    grad_THD, q_THD, k_THD, v_THD, cu_seqlens, window: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of ``sdpa_varlen`` (no dropout), written out: the backward of the compiled graphs' attention
    op, whose implementation runs below autograd (no graph to differentiate). Per group of equal-length
    segments, in fp32, with the probabilities recomputed: S = q kᵀ/√Dh (-inf outside the window),
    P = softmax(S), dV = Pᵀ dO, dS = P ∘ (dO vᵀ − rowsum(dO vᵀ ∘ P)), dQ = dS k/√Dh, dK = dSᵀ q/√Dh."""
    T, H, Dh = q_THD.shape
    scale = Dh**-0.5
    dev = q_THD.device
    grads = (torch.empty_like(q_THD), torch.empty_like(k_THD), torch.empty_like(v_THD))
    for n, starts in length_groups(cu_seqlens).items():
        idx = group_index(starts, n, dev)
        q, k, v, g = (
            t.index_select(0, idx).view(len(starts), n, H, Dh).transpose(1, 2).float()
            for t in (q_THD, k_THD, v_THD, grad_THD)
        )
        s_BHnn = q @ k.transpose(-1, -2) * scale
        mask = _window_mask(n, window, dev)
        if mask is not None:
            s_BHnn = s_BHnn.masked_fill(~mask, float("-inf"))
        p = s_BHnn.softmax(dim=-1)
        dp = g @ v.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
        for out, d in zip(grads, (ds @ k * scale, ds.transpose(-1, -2) @ q * scale, p.transpose(-1, -2) @ g)):
            out[idx] = d.transpose(1, 2).reshape(-1, H, Dh).to(out.dtype)
    return grads


@torch.library.custom_op(f"{_OPS}::sdpa_varlen", mutates_args=())
def sdpa_varlen_op(
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window: int,
) -> torch.Tensor:
    """``sdpa_varlen`` (no dropout) as one operator for compiled graphs; ``window`` -1: global."""
    return sdpa_varlen(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, None if window < 0 else window)


@sdpa_varlen_op.register_fake
def _(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window):
    return torch.empty_like(q_THD)


@torch.library.custom_op(f"{_OPS}::sdpa_varlen_backward", mutates_args=())
def sdpa_varlen_backward_op(
    grad_THD: torch.Tensor,
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of ``sdpa_varlen_op`` (``sdpa_varlen_grads``)."""
    return sdpa_varlen_grads(grad_THD, q_THD, k_THD, v_THD, cu_seqlens, None if window < 0 else window)


@sdpa_varlen_backward_op.register_fake
def _(grad_THD, q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window):
    return torch.empty_like(q_THD), torch.empty_like(k_THD), torch.empty_like(v_THD)


def _sdpa_setup(ctx, inputs, output) -> None:
    q, k, v, cu, max_seqlen, window = inputs
    ctx.save_for_backward(q, k, v, cu)
    ctx.max_seqlen, ctx.window = max_seqlen, window


def _sdpa_backward(ctx, grad):
    q, k, v, cu = ctx.saved_tensors
    dq, dk, dv = sdpa_varlen_backward_op(grad, q, k, v, cu, ctx.max_seqlen, ctx.window)
    return dq, dk, dv, None, None, None


sdpa_varlen_op.register_autograd(_sdpa_backward, setup_context=_sdpa_setup)


def attention(
    q_THD, k_THD, v_THD, cu_seqlens, max_seqlen: int, window: int | None, backend: str = "auto", dropout_p: float = 0.0
) -> torch.Tensor:
    """Segment-local (optionally sliding-window) attention on a flat token stream; returns [T, H, Dh].

    ``backend``: a resolved name (``resolve_backend``), or ``auto`` to resolve it here (eager callers).
    """
    if backend not in RESOLVED:
        backend = resolve_backend(backend, q_THD)
    if backend == "sdpa":
        if torch.compiler.is_compiling() and not dropout_p:
            return sdpa_varlen_op(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, -1 if window is None else window)
        return sdpa_varlen(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window, dropout_p)
    win = (window, window) if window is not None else (-1, -1)
    if backend == "flash_attn":
        return _flash_attn_fn()(
            q_THD,
            k_THD,
            v_THD,
            cu_seqlens,
            cu_seqlens,
            max_seqlen,
            max_seqlen,
            dropout_p=dropout_p,
            causal=False,
            window_size=win,
        )
    if dropout_p:
        raise RuntimeError("attn_backend='torch_varlen' has no attention dropout; use flash_attn or sdpa")
    return _torch_varlen_fn()(q_THD, k_THD, v_THD, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, window_size=win)


class RotaryEmbedding(torch.nn.Module):
    """RoPE with HF/ModernBERT's rotate-half layout; positions restart at every segment."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # no buffer: the frequencies are recomputed per call (Dh/2 values), so a model materialised
        # from the meta device (HF from_pretrained, FSDP) can never hold stale ones
        self.head_dim, self.theta = head_dim, theta

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        return 1.0 / (
            self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)
        )

    def forward(self, pos_T: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs_TD = torch.outer(pos_T.float(), self.inv_freq(pos_T.device))
        emb = torch.cat([freqs_TD, freqs_TD], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x_TXD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [T, ..., Dh] (rotate-half layout); q and k can go through in one call."""
    shape = (x_TXD.shape[0],) + (1,) * (x_TXD.dim() - 2) + (x_TXD.shape[-1],)
    x1, x2 = x_TXD.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_TXD * cos_TD.view(shape) + rotated * sin_TD.view(shape)
