"""The FSDP2 engine: the model parallelised by ``pretrain/parallelize.py``, torch's AdamW, DCP checkpoints.

It implements ``pretrain/engine.py: Engine``, as ``pretrain/deepspeed_engine.py`` does; ``pretrain/train.py``
only talks to that interface. The gradient reductions FSDP does not do (the EP expert slices) and the
global gradient norm over every mesh happen in ``step``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from config_check import ConfigError
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain import checkpoint
from pretrain.parallel_dims import ParallelDims
from pretrain.parallelize import OutsideFSDP


def reduce_outside_grads(params: list[torch.nn.Parameter], mesh: DeviceMesh | None, world: int) -> None:
    """Gradients of parameters outside FSDP: summed over the ranks of ``mesh`` that hold the same values ("edp"
    for EP slices, all ranks for replicated routers) and divided by the world size.

    An EP slice's gradient on its owner already sums the pairs of its whole EP group (the all_to_all
    backward); every rank's loss is scaled by ``world`` (FSDP averages over ranks), hence the division.
    """
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        if mesh is not None and mesh.size() > 1:
            dist.all_reduce(g, group=mesh.get_group())
        g.div_(world)


def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float, world: int) -> torch.Tensor:
    """Global L2 norm of all gradients (clipped to ``max_norm`` when > 0); returns the norm before,
    as a 0-d float64 tensor: no host sync (the coefficient is min(1, max_norm / norm), applied always).

    Each rank adds the squares of the gradient elements it holds, weighted by 1/(number of ranks
    holding the same element): FSDP shards are held once, EP expert slices by the W/P "edp" ranks,
    plain tensors by every rank. One all-reduce then gives the exact norm for any mix of meshes,
    which ``torch.nn.utils.clip_grad_norm_`` does not handle. The per-tensor norms and the scaling are
    ``torch._foreach`` calls (one kernel per group of tensors, not one per tensor), norms in fp64.
    """
    by_holders: dict[int, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        holders = world // g.device_mesh.size() if isinstance(g, DTensor) else world
        by_holders.setdefault(holders, []).append(g.to_local() if isinstance(g, DTensor) else g)
    locals_ = [g for gs in by_holders.values() for g in gs]
    total = torch.zeros((), dtype=torch.float64, device=locals_[0].device if locals_ else "cpu")
    for holders, gs in by_holders.items():
        norms = torch._foreach_norm(gs, 2, dtype=torch.float64)
        total += torch.stack(norms).square().sum() / holders
    if world > 1:
        dist.all_reduce(total)
    norm = total.sqrt()
    if max_norm > 0 and locals_:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in locals_:
            by_dtype.setdefault(g.dtype, []).append(g)
        for dtype, gs in by_dtype.items():
            torch._foreach_mul_(gs, coef.to(dtype))
    return norm


class FSDPEngine:
    def __init__(
        self,
        model: ModernAlbertForMaskedLM,
        dims: ParallelDims,
        outside: OutsideFSDP,
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
    ) -> None:
        self.module, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.dims, self.outside = dims, outside

    def __call__(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        """The update after the last micro-batch: the reductions FSDP does not do (EP slices over "edp", replicated
        routers over all ranks), clipping, AdamW, zero grads."""
        if self.outside.experts:
            reduce_outside_grads(self.outside.experts, self.dims.edp_mesh, self.dims.world)
        if self.outside.replicated:
            reduce_outside_grads(self.outside.replicated, self.dims.dp_mesh, self.dims.world)
        norm = clip_grad_norm_(list(self.module.parameters()), self.grad_clip, self.dims.world)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, ckpt_dir: str, step: int, trainer_state: dict, keep: int) -> str:
        return checkpoint.save(ckpt_dir, step, self.module, self.optimizer, trainer_state, keep)

    def load(self, path: str, world: int) -> dict:
        engine = checkpoint.read_trainer_state(path).get("engine", "fsdp2")
        if engine != "fsdp2":
            raise ConfigError(f"engine=fsdp2: {path} was written by engine={engine!r}; resume it with that engine")
        return checkpoint.load(path, self.module, self.optimizer)
