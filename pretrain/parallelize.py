"""Parallelism applied to a single-device ModernALBERT from outside, in a fixed order.

Order (torchtitan's): expert parallelism → activation checkpointing → torch.compile → FSDP2.

- EP (``parallel.ep`` = P > 1): see ``pretrain/expert_parallel.py``; expert parameters become DTensors
  on the "ep" sub-mesh and are left out of FSDP.
- Activation checkpointing (``parallel.activation_checkpointing``): every application of a shared block
  recomputes its activations in the backward (G applications → G checkpoints; the block's weights
  are stored once). The RNG state is replayed, so router jitter is the same in the recompute.
- ``torch.compile`` (``parallel.compile``): each block's forward, in place (parameter names unchanged).
  The MoL and attention code read tensor sizes on the host, which splits the graph there.
- FSDP2 (``fully_shard``, ZeRO-3 semantics) over all ranks. Each ``RecursiveGroup`` is one unit: its
  block is all-gathered once and stays gathered for its G applications (the recursion loop runs
  inside the unit's forward), then resharded. The root unit holds embeddings, final norm and MLM head
  (the decoder is tied to the embedding). bf16 compute with fp32 reduction on CUDA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from model.modernalbert import ModernAlbertForMaskedLM
from pretrain.expert_parallel import apply_expert_parallel, reduce_expert_grads


@dataclass
class Parallelism:
    """What the training loop needs to know about how the model was parallelised."""

    world: int = 1
    dp_mesh: DeviceMesh | None = None  # all ranks (FSDP)
    ep_mesh: DeviceMesh | None = None  # ranks holding different expert slices
    edp_mesh: DeviceMesh | None = None  # ranks holding the same expert slice
    expert_params: list[torch.nn.Parameter] = field(default_factory=list)

    def reduce_grads(self) -> None:
        """After the last micro-batch's backward: the gradient reductions FSDP does not do."""
        if self.expert_params:
            reduce_expert_grads(self.expert_params, self.edp_mesh, self.world)

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Global L2 norm of all gradients (clipped to ``max_norm`` when > 0); returns the norm before.

        Each rank adds the squares of the gradient elements it holds, weighted by 1/(number of ranks
        holding the same element): FSDP shards are held once, EP expert slices by the W/P "edp" ranks,
        plain tensors by every rank. One all-reduce then gives the exact norm for any mix of meshes,
        which ``torch.nn.utils.clip_grad_norm_`` does not handle.
        """
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
        for g in grads:
            local = g.to_local() if isinstance(g, DTensor) else g
            holders = self.world // g.device_mesh.size() if isinstance(g, DTensor) else self.world
            total += local.double().square().sum() / holders
        if self.world > 1:
            dist.all_reduce(total)
        norm = float(total.sqrt())
        if max_norm > 0 and norm > max_norm:
            coef = max_norm / (norm + 1e-6)
            for g in grads:
                (g.to_local() if isinstance(g, DTensor) else g).mul_(coef)
        return norm


def build_meshes(device: torch.device, ep: int) -> Parallelism:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if ep > 1:
            raise ValueError(f"parallel.ep={ep}: needs at least {ep} processes (launch with torchrun)")
        return Parallelism()
    world = dist.get_world_size()
    if world % ep:
        raise ValueError(f"parallel.ep={ep}: must divide the number of processes ({world})")
    par = Parallelism(world=world, dp_mesh=init_device_mesh(device.type, (world,), mesh_dim_names=("dp",)))
    if ep > 1:
        mesh = init_device_mesh(device.type, (world // ep, ep), mesh_dim_names=("edp", "ep"))
        par.ep_mesh, par.edp_mesh = mesh["ep"], mesh["edp"]
    return par


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def parallelize(model: ModernAlbertForMaskedLM, device: torch.device, *, ep: int = 1,
                activation_checkpointing: bool = False, compile: bool = False,
                fsdp: bool = True) -> tuple[ModernAlbertForMaskedLM, Parallelism]:
    """Apply EP → AC → compile → FSDP2 to ``model`` (already on ``device``, same weights on every rank).

    ``fsdp=False``: everything but the sharding (the DeepSpeed engine shards the model itself).
    """
    par = build_meshes(device, ep)
    if par.ep_mesh is not None:
        par.expert_params = apply_expert_parallel(model, par.ep_mesh)
    for group in model.model.groups:
        if activation_checkpointing:
            group.block.forward = _checkpointed(group.block.forward)
        if compile:
            group.block.compile()
    if par.dp_mesh is None or not fsdp:
        return model, par
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    ignored = set(par.expert_params)
    for group in model.model.groups:
        fully_shard(group, mesh=par.dp_mesh, mp_policy=mp, ignored_params=ignored & set(group.parameters()) or None)
    fully_shard(model, mesh=par.dp_mesh, mp_policy=mp, ignored_params=ignored or None)
    return model, par
