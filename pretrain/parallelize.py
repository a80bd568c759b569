"""Parallelism applied to a single-device ModernALBERT from outside, in a fixed order.

Order (torchtitan's): expert parallelism → activation checkpointing → torch.compile → FSDP2. Built so
far: FSDP2 (``fully_shard``, ZeRO-3 semantics) over a 1-D data-parallel mesh. Each ``RecursiveGroup``
is one FSDP unit: its block is all-gathered once and stays gathered for its G applications (the
recursion loop runs inside the unit's forward), then resharded. The root unit holds the embeddings,
final norm and MLM head (the decoder is tied to the embedding, so both live in the same unit).
Expert parallelism, activation checkpointing and compile are not built yet.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from model.modernalbert import ModernAlbertForMaskedLM


def data_parallel_mesh(device: torch.device) -> DeviceMesh | None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))


def parallelize(model: ModernAlbertForMaskedLM, mesh: DeviceMesh | None, device: torch.device) -> ModernAlbertForMaskedLM:
    """Shard ``model`` over ``mesh`` (no-op without one); bf16 compute with fp32 reduction on CUDA."""
    if mesh is None:
        return model
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    for group in model.model.groups:
        fully_shard(group, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model
