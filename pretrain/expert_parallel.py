"""Expert parallelism for the MoL FFNs: experts partitioned over EP ranks, tokens sent to them by all_to_all.

Mesh: the W ranks form a 2-D mesh ("edp", "ep") of shape (W/P, P). The P ranks along "ep" hold
different slices of every MoL layer's experts (E/P experts each); the W/P ranks along "edp" hold the
same slice and all-reduce its gradient. Expert parameters are DTensors on the "ep" sub-mesh with
``Shard(0)`` (global shape [E, …]), so checkpoints hold the full expert tensors and load at any EP
degree, and the optimizer state follows. They are kept out of FSDP (``ignored_params``): MoL experts
are LoRA factors, small next to the shared weights.

Per MoL call on each rank (N = T·K token–expert pairs, M pairs received):
    1. pairs sorted by expert, which also groups them by owner rank (experts are contiguous per rank);
    2. all_to_all of the per-rank counts, then of the pairs' rows x_ND and local expert ids (uneven);
    3. the owner runs each received pair through its expert (``MoLFFN.grouped`` with K=1, weight 1);
    4. all_to_all back; the origin multiplies by the routing weights and sums per token.
The routing weights never leave the origin, so the router's gradient is computed locally. The cost:
the shared Wi/Wo run once per pair instead of once per token (K× the dense FFN FLOPs), the price of
sending D-wide rows instead of 2I-wide ones. Worth it only when the experts do not fit replicated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from model.mol import MoLFFN, sort_pairs
from model.routing import Routing

EXPERT_PARAMS = ("A1", "B1", "A2", "B2")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    return _AllToAll.apply(x, out_splits, in_splits, group)


class ExpertDispatch:
    """The ``MoLFFN.dispatch`` installed by :func:`apply_expert_parallel`."""

    def __init__(self, ep_mesh: DeviceMesh) -> None:
        self.group = ep_mesh.get_group()
        self.size = ep_mesh.size()

    def __call__(self, module: MoLFFN, x_TD: torch.Tensor, r: Routing) -> torch.Tensor:
        T, D = x_TD.shape
        per_rank = module.cfg.num_experts // self.size
        tok_N, exp_N, w_N = sort_pairs(r.topk_idx_TK, r.topk_w_TK, x_TD.dtype)

        send = torch.bincount(torch.div(exp_N, per_rank, rounding_mode="floor"), minlength=self.size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        send_splits, recv_splits = send.tolist(), recv.tolist()

        local_ids = exp_N % per_rank
        ids_M = local_ids.new_empty(sum(recv_splits))
        dist.all_to_all_single(ids_M, local_ids, recv_splits, send_splits, group=self.group)
        x_MD = all_to_all(x_TD[tok_N], recv_splits, send_splits, self.group)
        y_MD = module.grouped(x_MD, ids_M[:, None], torch.ones_like(ids_M, dtype=x_MD.dtype)[:, None])
        y_ND = all_to_all(y_MD, send_splits, recv_splits, self.group)
        return x_TD.new_zeros(T, D).index_add_(0, tok_N, y_ND * w_N[:, None])


class _LocalExperts:
    """``MoLFFN.experts`` under EP: the local slices of the DTensor parameters."""

    def __init__(self, module: MoLFFN) -> None:
        self.module = module

    def __call__(self):
        return tuple(getattr(self.module, n).to_local() for n in EXPERT_PARAMS)


def mol_layers(model: torch.nn.Module) -> list[MoLFFN]:
    return [m for m in model.modules() if isinstance(m, MoLFFN)]


def apply_expert_parallel(model: torch.nn.Module, ep_mesh: DeviceMesh) -> list[torch.nn.Parameter]:
    """Partition every MoL layer's experts over ``ep_mesh``; returns the expert parameters (now DTensors).

    Every rank must hold the same full weights when this is called (same seed, or a loaded model).
    """
    P = ep_mesh.size()
    params = []
    for m in mol_layers(model):
        if m.cfg.num_experts % P:
            raise ValueError(f"parallel.ep={P}: must divide model.mol.num_experts={m.cfg.num_experts}")
        for name in EXPERT_PARAMS:
            full = getattr(m, name)
            p = torch.nn.Parameter(distribute_tensor(full.detach(), ep_mesh, [Shard(0)]),
                                   requires_grad=full.requires_grad)
            setattr(m, name, p)
            params.append(p)
        m.experts = _LocalExperts(m)
        m.dispatch = ExpertDispatch(ep_mesh)
    return params


def reduce_expert_grads(params: list[torch.nn.Parameter], edp_mesh: DeviceMesh | None, world: int) -> None:
    """Sum each expert slice's gradient over the ranks holding it and divide by the world size.

    Each owner's gradient already sums the pairs of its whole EP group (the all_to_all backward), and
    every rank's loss is scaled by ``world`` (FSDP averages over ranks), hence the division.
    """
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        if edp_mesh is not None and edp_mesh.size() > 1:
            dist.all_reduce(g, group=edp_mesh.get_group())
        g.div_(world)
