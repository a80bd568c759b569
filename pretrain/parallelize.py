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
- ``torch.compile`` (``parallel.compile``): each block's forward, in place (parameter names unchanged),
  with ``fullgraph=True`` wherever the block traces whole: dense blocks, MoL blocks in bf16 (one
  ``F.grouped_mm`` per expert matmul, no host read) and slot-masked MoL (``mol.compute=slots``) in any
  dtype, without EP. Two cases read sizes on the host and so compile in pieces, with a warning naming why:
  grouped MoL in fp32 (compiled grouped_mm is bf16 only, so the per-expert loop runs) and MoL under EP
  (``all_to_all`` needs its split sizes as Python ints). The blocks of all groups share one code object, so
  torch.compile keeps one graph per kind of application (first layer or not, global or local attention,
  the group's kind of FFN and attention), twice (static shapes first, then dynamic token counts) for
  training and again for evaluation: ``compile_bound`` counts them, and the recompile limit is raised to it.
  The attention backend is resolved outside the blocks, and the CPU reference attention is one custom op
  in a compiled graph (``model/attention.py``), so a CPU trace sees the graph a GPU compiles.
- FSDP2 (``fully_shard``, ZeRO-3 semantics) over all ranks. Each ``RecursiveGroup`` is one unit: its
  block is all-gathered once and stays gathered for its G applications (the recursion loop runs
  inside the unit's forward), then resharded. The root unit holds embeddings, final norm and MLM head
  (the decoder is tied to the embedding). bf16 compute with fp32 reduction when parallel.precision is bf16
  (auto: on CUDA). The routers then stay outside FSDP, whole and fp32 on every rank (a few E×D matrices;
  their gradients all-reduced by ``FSDPEngine.step``), so expert choice and the auxiliary losses never see
  bf16 rounding; an FSDP unit of their own would put FSDP's hooks inside the compiled block, which splits
  its graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from model.config import ModelConfig
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
) -> tuple[ModernAlbertForMaskedLM, "OutsideFSDP"]:
    """Materialise, initialise and parallelise ``model`` (built on the meta device) unit by unit; returns it
    and the parameters FSDP leaves alone (their gradients are the engine's to reduce).

    ``init(select)`` fills the freshly allocated tensors of the modules whose qualified names ``select``
    accepts (one group, then everything outside the groups; the root module is ""); it must give every
    rank the same values. ``fsdp=False``: everything but the sharding (DeepSpeed shards the model itself).
    ``bf16``: parameters all-gathered in bf16 for compute, gradients reduced in fp32, the sharded
    parameters and optimizer state fp32; routers stay whole and fp32 outside FSDP, so expert choice and
    the auxiliary losses do not see bf16 rounding. ``dims``: the job's
    (its meshes are built here); default: one process, or all ranks of the process group with no EP.
    """
    if dims is None:
        dims = ParallelDims(dist.get_world_size() if dist.is_initialized() else 1)
    dims.build_meshes(device)
    shard = dims.dp_mesh is not None and fsdp
    outside = OutsideFSDP()
    if compile:
        limit = compile_bound(model.cfg)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for g, group in enumerate(model.model.groups):
        _materialize(group, device)
        prefix = f"model.groups.{g}"
        init(lambda name: name == prefix or name.startswith(prefix + "."))
        outside.experts += apply_ep(model, g, dims)
        block = group.get_submodule("block")
        if activation_checkpointing:
            apply_ac(block)
        if compile:
            apply_compile(block, *_fullgraph(model.cfg, g, dims, bf16))
        if shard:
            if bf16:
                outside.replicated += [p for m in group.modules() if isinstance(m, Router) for p in m.parameters()]
            apply_fsdp(group, dims, bf16, outside.experts + outside.replicated)
    _materialize(model, device)
    init(lambda name: not name.startswith("model.groups."))
    if shard:
        apply_fsdp(model, dims, bf16, outside.experts + outside.replicated)
    return model, outside


@dataclass
class OutsideFSDP:
    """The parameters FSDP leaves alone, whose gradients ``FSDPEngine.step`` reduces itself."""

    experts: list[torch.nn.Parameter] = field(default_factory=list)  # EP slices (DTensors): over "edp"
    replicated: list[torch.nn.Parameter] = field(default_factory=list)  # bf16 runs' fp32 routers: over all ranks


def application_kinds(cfg: ModelConfig) -> set[tuple]:
    """The distinct kinds of block application, each a graph of the blocks' shared compiled code: the
    group's kind (MoL FFN, routed attention, group 0: the block that may run layer 0 without its attention
    norm) × first layer × global attention."""
    kinds = set()
    for g in range(cfg.num_groups):
        group_kind = (g in cfg.mol.groups, g in cfg.attn_experts.groups, g == 0)
        for layer in range(g * cfg.group_depth, (g + 1) * cfg.group_depth):
            kinds.add((group_kind, layer == 0, cfg.is_global(layer)))
    return kinds


def compile_bound(cfg: ModelConfig) -> int:
    """Graphs of the blocks' compiled forward over any number of steps: each kind of application compiles
    once with the first step's shapes and once with dynamic token counts, in training and in evaluation
    (``model.eval()`` under ``no_grad``: no router jitter, no dropout, no backward)."""
    return 2 * 2 * len(application_kinds(cfg))


def compile_report(cfg: ModelConfig) -> str:
    """One line on what torch.compile did in this process: graphs, graph breaks, recompiles (dynamo's counters)."""
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    reasons = "; ".join(sorted({str(k).splitlines()[0][:100] for k in counters["graph_break"]}))
    return (
        f"compile: {graphs} graphs (bound {compile_bound(cfg)}: {len(application_kinds(cfg))} kinds of block "
        f"application x static/dynamic shapes x training/evaluation), {breaks} graph breaks"
        + (f" ({reasons})" if reasons else "")
    )


def _fullgraph(cfg: ModelConfig, group: int, dims: ParallelDims, bf16: bool) -> tuple[bool, str]:
    """Whether group ``group``'s block traces whole, and why not."""
    if group not in cfg.mol.groups:
        return True, ""
    if dims.ep > 1:
        return False, "MoL under expert parallelism: all_to_all takes its split sizes as Python ints (a host read)"
    if not bf16 and cfg.mol.compute == "grouped":
        return False, (
            "MoL in fp32 with mol.compute=grouped: compiled F.grouped_mm is bf16 only, and the per-expert loop "
            "reads sizes on the host (mol.compute=slots compiles whole)"
        )
    return True, ""


def apply_ep(model: ModernAlbertForMaskedLM, group: int, dims: ParallelDims) -> list[torch.nn.Parameter]:
    """Expert parallelism on group ``group``'s MoL layer (if EP and MoL); returns its expert slices."""
    if dims.ep_mesh is None:
        return []
    return apply_expert_parallel(model, dims.ep_mesh, groups=[group])


def apply_ac(block: torch.nn.Module) -> None:
    """Activation checkpointing: every application of the block recomputes its activations in the backward."""
    checkpoint(block)


_WARNED: set[str] = set()


def apply_compile(block: torch.nn.Module, fullgraph: bool = True, why: str = "") -> None:
    """torch.compile of the block's ``forward``, in place (parameter names unchanged); ``fullgraph`` makes a
    graph break an error. Without it, warns once per reason (``why``) that the block compiles in pieces.

    The forward alone, not the module call: hooks on the block itself stay eager around the compiled code.
    Activation checkpointing's are such hooks (a context manager entered before the forward and left after
    it), which a compiled function cannot hand back, so compiling the whole call breaks on them.
    """
    if not fullgraph and why not in _WARNED:
        _WARNED.add(why)
        warnings.warn(f"parallel.compile: a block compiles in pieces (graph breaks): {why}", stacklevel=2)
    block.forward = torch.compile(block.forward, fullgraph=fullgraph)  # type: ignore[method-assign]


def apply_fsdp(unit: torch.nn.Module, dims: ParallelDims, bf16: bool, outside: list[torch.nn.Parameter]) -> None:
    """FSDP2 over all ranks: ``unit`` is one all-gather/reshard unit; the parameters in ``outside`` (EP slices,
    bf16 runs' routers) stay out, reduced by ``FSDPEngine.step``. ``bf16``: bf16 compute, fp32 reduction."""
    assert dims.dp_mesh is not None
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    ignored = set(outside) & set(unit.parameters())
    fully_shard(unit, mesh=dims.dp_mesh, mp_policy=mp, ignored_params=ignored or None)
