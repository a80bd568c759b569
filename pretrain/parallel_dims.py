"""The parallel dimensions of a job, validated in one place.

A job of ``world`` ranks runs FSDP2 over all of them and expert parallelism over groups of ``ep``: the
experts of a MoL layer are split over the ``ep`` ranks of a group and every expert is replicated over the
``edp = world / ep`` groups. The training setup, the dry run (at a world size it simulates) and the mesh
builder all construct ``ParallelDims``, so the check and its message are the same everywhere. (``ep``
against the number of experts is the config's own check, at load time: it needs no world size.)
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import ConfigError


@dataclass(frozen=True)
class ParallelDims:
    world: int
    ep: int = 1

    def __post_init__(self) -> None:
        if self.world < 1:
            raise ConfigError(f"world size {self.world}: must be >= 1")
        if self.ep < 1 or self.world % self.ep:
            raise ConfigError(f"parallel.ep={self.ep}: must divide the number of processes ({self.world})")

    @property
    def edp(self) -> int:
        """Expert-data-parallel degree: the replicas of each expert."""
        return self.world // self.ep
