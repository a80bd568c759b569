"""Reductions over all ranks of the training loop's small host-side tensors (counts, metric sums, flags).

NCCL reduces only CUDA tensors, gloo any: a tensor is moved to the backend's device and back.
Without a process group (one process) it is returned unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """``t`` reduced over all ranks (sum by default), on ``t``'s device."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    on = t.to("cuda") if dist.get_backend() == "nccl" and t.device.type != "cuda" else t
    dist.all_reduce(on, op=op)
    return on.to(t.device) if on is not t else t
