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

Shapes: T tokens, H heads, Dh head size, N segments, L longest segment.
"""

from __future__ import annotations

import functools

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


def sdpa_varlen(
    q_THD, k_THD, v_THD, cu_seqlens, max_seqlen: int, window: int | None, dropout_p: float = 0.0
) -> torch.Tensor:
    """The reference backend: segments of equal length are batched into one SDPA call each.

    No padding and, for global layers (and local ones on segments that fit the window), no mask, so
    PyTorch's fused CPU kernel runs; a padded [N, L, L]-masked call was 10x slower on CPU (measured:
    23 documents, longest 742, fwd+bwd 1.04 s vs 0.10 s).
    """
    T, H, Dh = q_THD.shape
    cu = cu_seqlens.tolist()  # one host read per call (a device sync on GPU: the fused backends need none)
    starts, lens = cu[:-1], [b - a for a, b in zip(cu[:-1], cu[1:])]
    by_len: dict[int, list[int]] = {}
    for start, n in zip(starts, lens):
        by_len.setdefault(n, []).append(start)
    if len(by_len) == 1:  # every segment has the same length: plain views, no gather or scatter
        n = lens[0]
        q, k, v = (t.view(len(lens), n, H, Dh).transpose(1, 2) for t in (q_THD, k_THD, v_THD))
        mask = _window_mask(n, window, q_THD.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return o.transpose(1, 2).reshape(T, H, Dh)
    outs, index = [], []
    for n, group_starts in sorted(by_len.items()):
        idx = (
            torch.tensor(group_starts, device=q_THD.device)[:, None] + torch.arange(n, device=q_THD.device)[None, :]
        ).reshape(-1)
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


def attention(
    q_THD, k_THD, v_THD, cu_seqlens, max_seqlen: int, window: int | None, backend: str = "auto", dropout_p: float = 0.0
) -> torch.Tensor:
    """Segment-local (optionally sliding-window) attention on a flat token stream; returns [T, H, Dh]."""
    backend = resolve_backend(backend, q_THD)
    if backend == "sdpa":
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
