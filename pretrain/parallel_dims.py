"""The parallel dimensions of a job and, once built, its device meshes: one object, built once per run.

A job of ``world`` ranks runs FSDP2 over all of them and expert parallelism over groups of ``ep``: the
experts of a MoL layer are split over the ``ep`` ranks of a group and every expert is replicated over the
``edp = world / ep`` groups. The training set-up builds one ``ParallelDims`` from the launcher's world size
(before the process group, so a bad ``ep`` fails first), and ``parallelize`` builds its meshes on it; the
dry run and the submitit launcher check a world size they plan for with ``check``. The other checks of
``ep`` (>= 1, dividing the experts, not with DeepSpeed) are the run config's, at load time: they need no
world size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from config_check import ConfigError


@dataclass
class ParallelDims:
    world: int
    ep: int = 1
    # the meshes, set by build_meshes (all None on one process without a process group)
    dp_mesh: DeviceMesh | None = field(default=None, repr=False, compare=False)  # all ranks (FSDP)
    ep_mesh: DeviceMesh | None = field(default=None, repr=False, compare=False)  # different expert slices
    edp_mesh: DeviceMesh | None = field(default=None, repr=False, compare=False)  # the same expert slice

    def __post_init__(self) -> None:
        self.check(self.world, self.ep)

    @staticmethod
    def check(world: int, ep: int) -> None:
        """Raise ConfigError unless ``ep`` can split ``world`` ranks (``ep`` itself >= 1: the config's check)."""
        if world < 1:
            raise ConfigError(f"world size {world}: must be >= 1")
        if world % ep:
            raise ConfigError(f"parallel.ep={ep}: must divide the number of processes ({world})")

    @property
    def edp(self) -> int:
        """Expert-data-parallel degree: the replicas of each expert."""
        return self.world // self.ep

    def build_meshes(self, device: torch.device) -> None:
        """The device meshes of this job (collective: every rank calls it once, after the process group)."""
        if not dist.is_initialized():
            return
        if dist.get_world_size() != self.world:
            raise RuntimeError(f"ParallelDims(world={self.world}) in a process group of {dist.get_world_size()}")
        self.dp_mesh = init_device_mesh(device.type, (self.world,), mesh_dim_names=("dp",))
        if self.ep > 1:
            mesh = init_device_mesh(device.type, (self.edp, self.ep), mesh_dim_names=("edp", "ep"))
            self.ep_mesh, self.edp_mesh = mesh["ep"], mesh["edp"]
