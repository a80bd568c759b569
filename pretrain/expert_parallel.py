"""Expert parallelism for the MoL FFNs: experts partitioned over EP ranks, tokens sent to them by all_to_all.

Mesh: the W ranks form a 2-D mesh ("edp", "ep") of shape (W/P, P). The P ranks along "ep" hold
different slices of every MoL layer's experts (E/P experts each); the W/P ranks along "edp" hold the
same slice and all-reduce its gradient. Expert parameters are DTensors on the "ep" sub-mesh with
``Shard(0)`` (global shape [E, …]), so checkpoints hold the full expert tensors and load at any EP
degree, and the optimizer state follows. They are kept out of FSDP (``ignored_params``): MoL experts
are LoRA factors, small next to the shared weights. Why not FSDP on "edp": an FSDP unit is a module, and
the factors sit on ``MoLFFN`` beside the shared ``Wi``/``Wo``, so those would become units of their own,
about doubling the step's all-gathers and reduce-scatters for the same bytes; and at edp > 1 FSDP's
divide-by-world factor is a ``PREMUL_SUM`` reduce-scatter, which gloo (every CPU test's backend) refuses.
A submodule holding just the factors would avoid the extra units but rename them in every checkpoint and
native model directory.

Applied from outside, torchtitan-style: ``ExpertParallel`` is a ``ParallelStyle`` for
``parallelize_module``. It shards a ``MoLFFN``'s expert factors and wraps the layer's
``GroupedLoRAFFN`` call with ``distribute_module`` hooks; the model code is unchanged. Per call on
each rank (N = T·K token–expert pairs, M pairs received):

    before (input hook): pairs sorted by expert, which also groups them by owner rank (experts are
        contiguous per rank); all_to_all of the per-rank counts, then of the pairs' rows x_ND and
        local expert ids (uneven splits). The call then runs on the received pairs with K = 1 and
        weight 1, on this rank's expert slices (``DTensor.to_local``).
    after (output hook): all_to_all back; the origin multiplies by the routing weights and sums per token.

The routing weights never leave the origin, so the router's gradient is computed locally. The cost:
the shared Wi/Wo run once per pair instead of once per token (K× the dense FFN FLOPs), the price of
sending D-wide rows instead of 2I-wide ones. Worth it only when the experts do not fit replicated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from model.modernalbert import mol_layers
from model.mol import MoLFFN, sort_pairs
from model.routing import expert_counts

EXPERT_PARAMS = ("A1", "B1", "A2", "B2")


class ExpertParallel(ParallelStyle):
    """Shard one ``MoLFFN``'s experts over the "ep" mesh and route its tokens to their owners.

    One instance per layer: the input hook leaves the pairs' order and splits for the output hook of
    the same call (calls of a layer never interleave, also not in an activation-checkpointing recompute).
    """

    def __init__(self) -> None:
        self._pending: tuple | None = None

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, MoLFFN):
            raise TypeError(f"ExpertParallel applies to MoLFFN, not {type(module).__name__}")
        # parallel.ep dividing model.mol.num_experts is the run config's check (RunConfig.validate)
        for name in EXPERT_PARAMS:
            full = getattr(module, name)
            module.register_parameter(
                name,
                nn.Parameter(
                    distribute_tensor(full.detach(), device_mesh, [Shard(0)]), requires_grad=full.requires_grad
                ),
            )
        # torch's stubs type the hooks as returning None; they return the replaced inputs/outputs
        distribute_module(
            module.grouped_ffn,
            device_mesh,
            input_fn=self._dispatch,  # type: ignore[arg-type]
            output_fn=self._combine,  # type: ignore[arg-type]
        )
        return module

    def _dispatch(self, module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
        x_TD, idx_TK, w_TK, Wi, Wo, *experts = inputs
        group, P = mesh.get_group(), mesh.size()
        per_rank = experts[0].shape[0] // P  # the DTensor's global expert count over the ranks
        _, tok_N, exp_N, w_N = sort_pairs(idx_TK, w_TK, x_TD.dtype)

        send = expert_counts(torch.div(exp_N, per_rank, rounding_mode="floor"), P)  # pairs per owning rank
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        send_splits, recv_splits = send.tolist(), recv.tolist()

        local_ids = exp_N % per_rank
        ids_M = local_ids.new_empty(sum(recv_splits))
        dist.all_to_all_single(ids_M, local_ids, recv_splits, send_splits, group=group)
        x_MD = all_to_all_single_autograd(x_TD[tok_N], recv_splits, send_splits, group)
        self._pending = (x_TD.shape, tok_N, w_N, send_splits, recv_splits)
        ones_M1 = torch.ones_like(ids_M, dtype=x_MD.dtype)[:, None]
        # expert slices are left out of FSDP, so its bf16 policy does not cast them: compute in the activations'
        # dtype here (gradients flow back to the fp32 parameters through the cast)
        return (x_MD, ids_M[:, None], ones_M1, Wi, Wo, *(p.to_local().to(x_MD.dtype) for p in experts))

    def _combine(self, module: nn.Module, y_MD: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        assert self._pending is not None, "_combine without its _dispatch"
        shape, tok_N, w_N, send_splits, recv_splits = self._pending
        self._pending = None
        y_ND = all_to_all_single_autograd(y_MD, send_splits, recv_splits, mesh.get_group())
        return y_ND.new_zeros(shape).index_add_(0, tok_N, y_ND * w_N[:, None])


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh, groups: list[int] | None = None) -> list[nn.Parameter]:
    """``ExpertParallel`` on the MoL layers of ``groups`` (all by default); returns their expert parameters.

    Every rank must hold the same full expert weights when this is called (same seed, or loaded).
    """
    layers = {g: m for g, m in mol_layers(model).items() if groups is None or g in groups}
    if layers:
        parallelize_module(model, ep_mesh, {f"model.groups.{g}.block.ffn": ExpertParallel() for g in layers})
    return [getattr(m, n) for m in layers.values() for n in EXPERT_PARAMS]
