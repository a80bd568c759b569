"""Parallelism applied to a single-device ModernALBERT from outside, in a fixed order.

The model is built on the meta device (no memory) and materialised unit by unit: each
``RecursiveGroup`` is allocated, initialised (``init``, the caller's: fresh weights or a loaded
state) and sharded before the next one, then the root. Sharding never needs a full replica of the
model on a rank; the largest full tensor set is one group's. Per unit, torchtitan's order, one function
each: ``apply_ep`` → ``apply_ac`` → ``apply_compile`` → ``apply_fsdp``.

Why per unit rather than torchtitan's passes over the whole meta model followed by ``to_empty`` and one
``init_weights``: our initialisation draws each module's values from a generator seeded by its name
(``model/init.py``), on the full tensor, so a model has the same weights on any world size and EP degree
(the 1 rank = 2 ranks and EP=2 = EP=1 tests compare losses to 1e-5). After ``fully_shard`` a rank holds
only its shard, and a generator-driven fill of a shard does not reproduce the full tensor's values; so each
unit is initialised whole, then split, and only one unit is ever whole.

- EP (``parallel.ep`` = P > 1): ``pretrain/expert_parallel.py``, an ``ExpertParallel`` style per MoL
  layer; expert parameters become DTensors on the "ep" sub-mesh and are left out of FSDP.
- Activation checkpointing (``parallel.activation_checkpointing``): torch's composable ``checkpoint``
  on each block (hooks: parameter names and the model's code unchanged). Every application of a
  shared block recomputes its activations in the backward (G applications → G checkpoints; the
  block's weights are stored once). The RNG state is replayed, so router jitter is the same.
- ``torch.compile`` (``parallel.compile``): each block's forward, in place (parameter names unchanged).
  In bf16 the MoL blocks are one ``F.grouped_mm`` each (no host read, no graph break); in fp32 (compiled
  grouped_mm is bf16 only) and in the CPU attention reference (sdpa) tensor sizes are read on the host,
  which splits the graph there.
- FSDP2 (``fully_shard``, ZeRO-3 semantics) over all ranks. Each ``RecursiveGroup`` is one unit: its
  block is all-gathered once and stays gathered for its G applications (the recursion loop runs
  inside the unit's forward), then resharded. The root unit holds embeddings, final norm and MLM head
  (the decoder is tied to the embedding). bf16 compute with fp32 reduction and fp32 routers when
  parallel.precision is bf16 (auto: on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from model.modernalbert import ModernAlbertForMaskedLM
from model.routing import Router
from pretrain.expert_parallel import apply_expert_parallel, reduce_expert_grads
from pretrain.parallel_dims import ParallelDims


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

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Global L2 norm of all gradients (clipped to ``max_norm`` when > 0); returns the norm before,
        as a tensor: no host sync (the coefficient is min(1, max_norm / norm), applied always).

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
        norm = total.sqrt()
        if max_norm > 0:
            coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            for g in grads:
                local = g.to_local() if isinstance(g, DTensor) else g
                local.mul_(coef.to(local.dtype))
        return norm


def build_meshes(device: torch.device, ep: int) -> Parallelism:
    dims = ParallelDims(dist.get_world_size() if dist.is_initialized() else 1, ep)
    if dims.world == 1:
        if dist.is_initialized():  # one process with a group (bf16): a 1-rank mesh, for the precision policy
            return Parallelism(dp_mesh=init_device_mesh(device.type, (1,), mesh_dim_names=("dp",)))
        return Parallelism()
    world = dims.world
    par = Parallelism(world=world, dp_mesh=init_device_mesh(device.type, (world,), mesh_dim_names=("dp",)))
    if ep > 1:
        mesh = init_device_mesh(device.type, (dims.edp, ep), mesh_dim_names=("edp", "ep"))
        par.ep_mesh, par.edp_mesh = mesh["ep"], mesh["edp"]
    return par


def _materialize(module: torch.nn.Module, device: torch.device) -> None:
    """Allocate (uninitialised) the meta tensors of ``module`` on ``device``; real ones are left alone."""
    for m in module.modules():
        for key, p in m._parameters.items():
            if p is not None and p.is_meta:
                m._parameters[key] = torch.nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=p.requires_grad
                )
        for key, b in m._buffers.items():
            if b is not None and b.is_meta:
                m._buffers[key] = torch.empty_like(b, device=device)


def parallelize(
    model: ModernAlbertForMaskedLM,
    device: torch.device,
    init: Callable[[Callable[[str], bool]], None],
    *,
    ep: int = 1,
    activation_checkpointing: bool = False,
    compile: bool = False,
    fsdp: bool = True,
    bf16: bool = False,
) -> tuple[ModernAlbertForMaskedLM, Parallelism]:
    """Materialise, initialise and parallelise ``model`` (built on the meta device) unit by unit.

    ``init(select)`` fills the freshly allocated tensors of the modules whose qualified names ``select``
    accepts (one group, then everything outside the groups; the root module is ""); it must give every
    rank the same values. ``fsdp=False``: everything but the sharding (DeepSpeed shards the model itself).
    ``bf16``: parameters all-gathered in bf16 for compute, gradients reduced in fp32, the sharded
    parameters and optimizer state fp32; routers keep fp32 parameters (their own FSDP unit with an
    fp32 policy), so expert choice and the auxiliary losses do not see bf16 rounding.
    """
    par = build_meshes(device, ep)
    shard = par.dp_mesh is not None and fsdp
    for g, group in enumerate(model.model.groups):
        _materialize(group, device)
        prefix = f"model.groups.{g}"
        init(lambda name: name == prefix or name.startswith(prefix + "."))
        apply_ep(model, g, par)
        block = group.get_submodule("block")
        if activation_checkpointing:
            apply_ac(block)
        if compile:
            apply_compile(block)
        if shard:
            apply_fsdp(group, par, bf16)
    _materialize(model, device)
    init(lambda name: not name.startswith("model.groups."))
    if shard:
        apply_fsdp(model, par, bf16, fp32_routers=False)
    return model, par


def apply_ep(model: ModernAlbertForMaskedLM, group: int, par: Parallelism) -> None:
    """Expert parallelism on group ``group``'s MoL layer (if EP and MoL): its expert slices join
    ``par.expert_params``."""
    if par.ep_mesh is not None:
        par.expert_params += apply_expert_parallel(model, par.ep_mesh, groups=[group])


def apply_ac(block: torch.nn.Module) -> None:
    """Activation checkpointing: every application of the block recomputes its activations in the backward."""
    checkpoint(block)


def apply_compile(block: torch.nn.Module) -> None:
    """torch.compile of the block's forward, in place (parameter names unchanged)."""
    block.compile()


def apply_fsdp(unit: torch.nn.Module, par: Parallelism, bf16: bool, fp32_routers: bool = True) -> None:
    """FSDP2 over all ranks: ``unit`` is one all-gather/reshard unit; its EP expert slices stay out (reduced by
    ``Parallelism.reduce_grads``). ``bf16``: bf16 compute, fp32 reduction; the routers inside (when
    ``fp32_routers``) are their own units with an fp32 policy."""
    assert par.dp_mesh is not None
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    ignored = set(par.expert_params) & set(unit.parameters())
    if bf16 and fp32_routers:
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        for router in [m for m in unit.modules() if isinstance(m, Router)]:
            fully_shard(router, mesh=par.dp_mesh, mp_policy=fp32)
    fully_shard(unit, mesh=par.dp_mesh, mp_policy=mp, ignored_params=ignored or None)
