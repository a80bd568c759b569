"""Reductions over all ranks of the training loop's small host-side tensors (counts, metric sums, flags).

NCCL reduces only CUDA tensors, gloo any: a tensor is moved to the backend's device and back.
Without a process group (one process) it is returned unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """``t`` reduced over all ranks (sum by default), on ``t``'s device."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    on = t.to("cuda") if dist.get_backend() == "nccl" and t.device.type != "cuda" else t
    dist.all_reduce(on, op=op)
    return on.to(t.device) if on is not t else t


def from_rank0(obj):
    """Collective: rank 0's ``obj`` on every rank (a listing of a shared directory, a decision rank 0 made)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_fault(message: str | None, already_flagged: bool | None = None) -> str | None:
    """Collective: the first rank's fault message when any rank has one, else None, on every rank.

    A fault seen by one rank (a bad shard in its share of the data) must stop all of them at the same
    point: a rank that leaves alone strands the others in their next collective. ``already_flagged``
    says whether any rank has a fault when that was already reduced (saves the flag's all-reduce).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return message
    if already_flagged is None:
        already_flagged = bool(all_reduce(torch.tensor([float(message is not None)])).item())
    if not already_flagged:
        return None
    messages: list = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    return next(m for m in messages if m is not None)
