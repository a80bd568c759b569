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

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from model.modernalbert import ModernAlbertForMaskedLM
from model.routing import Router
from pretrain.expert_parallel import apply_expert_parallel
from pretrain.parallel_dims import ParallelDims


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
    dims: ParallelDims | None = None,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    fsdp: bool = True,
    bf16: bool = False,
) -> tuple[ModernAlbertForMaskedLM, list[torch.nn.Parameter]]:
    """Materialise, initialise and parallelise ``model`` (built on the meta device) unit by unit; returns it
    and its EP expert parameters (kept out of FSDP: their gradients are the engine's to reduce).

    ``init(select)`` fills the freshly allocated tensors of the modules whose qualified names ``select``
    accepts (one group, then everything outside the groups; the root module is ""); it must give every
    rank the same values. ``fsdp=False``: everything but the sharding (DeepSpeed shards the model itself).
    ``bf16``: parameters all-gathered in bf16 for compute, gradients reduced in fp32, the sharded
    parameters and optimizer state fp32; routers keep fp32 parameters (their own FSDP unit with an
    fp32 policy), so expert choice and the auxiliary losses do not see bf16 rounding. ``dims``: the job's
    (its meshes are built here); default: one process, or all ranks of the process group with no EP.
    """
    if dims is None:
        dims = ParallelDims(dist.get_world_size() if dist.is_initialized() else 1)
    dims.build_meshes(device)
    shard = dims.dp_mesh is not None and fsdp
    expert_params: list[torch.nn.Parameter] = []
    for g, group in enumerate(model.model.groups):
        _materialize(group, device)
        prefix = f"model.groups.{g}"
        init(lambda name: name == prefix or name.startswith(prefix + "."))
        expert_params += apply_ep(model, g, dims)
        block = group.get_submodule("block")
        if activation_checkpointing:
            apply_ac(block)
        if compile:
            apply_compile(block)
        if shard:
            apply_fsdp(group, dims, bf16, expert_params)
    _materialize(model, device)
    init(lambda name: not name.startswith("model.groups."))
    if shard:
        apply_fsdp(model, dims, bf16, expert_params, fp32_routers=False)
    return model, expert_params


def apply_ep(model: ModernAlbertForMaskedLM, group: int, dims: ParallelDims) -> list[torch.nn.Parameter]:
    """Expert parallelism on group ``group``'s MoL layer (if EP and MoL); returns its expert slices."""
    if dims.ep_mesh is None:
        return []
    return apply_expert_parallel(model, dims.ep_mesh, groups=[group])


def apply_ac(block: torch.nn.Module) -> None:
    """Activation checkpointing: every application of the block recomputes its activations in the backward."""
    checkpoint(block)


def apply_compile(block: torch.nn.Module) -> None:
    """torch.compile of the block's forward, in place (parameter names unchanged)."""
    block.compile()


def apply_fsdp(
    unit: torch.nn.Module,
    dims: ParallelDims,
    bf16: bool,
    expert_params: list[torch.nn.Parameter],
    fp32_routers: bool = True,
) -> None:
    """FSDP2 over all ranks: ``unit`` is one all-gather/reshard unit; the EP expert slices among its parameters
    stay out (reduced by ``FSDPEngine.step``). ``bf16``: bf16 compute, fp32 reduction; the routers inside
    (when ``fp32_routers``) are their own units with an fp32 policy."""
    assert dims.dp_mesh is not None
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    ignored = set(expert_params) & set(unit.parameters())
    if bf16 and fp32_routers:
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        for router in [m for m in unit.modules() if isinstance(m, Router)]:
            fully_shard(router, mesh=dims.dp_mesh, mp_policy=fp32)
    fully_shard(unit, mesh=dims.dp_mesh, mp_policy=mp, ignored_params=ignored or None)
