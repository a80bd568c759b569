"""Deterministic weight initialisation, module by module.

Each module draws from its own generator, seeded by (run seed, the module's qualified name), so the
weights are the same whether a model is initialised whole on one device or unit by unit after it
was built on the meta device and sharded (``pretrain/parallelize.py``), on any number of ranks and in
any order. Values are drawn on the CPU and copied, so the result does not depend on the device either.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch


def module_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


@torch.no_grad()
def fill_(t: torch.Tensor, init: Callable[..., torch.Tensor], generator: torch.Generator | None, **kwargs) -> None:
    """``init(cpu_tensor, generator=generator, **kwargs)`` (a ``torch.nn.init`` function), copied into ``t``."""
    cpu = torch.empty(t.shape, dtype=torch.float32)
    init(cpu, generator=generator, **kwargs)
    t.copy_(cpu)
