"""The FSDP2 engine: the model parallelised by ``pretrain/parallelize.py``, torch's AdamW, DCP checkpoints.

It implements ``pretrain/engine.py: Engine``, as ``pretrain/deepspeed_engine.py`` does; ``pretrain/train.py``
only talks to that interface. The gradient reductions FSDP does not do (the EP expert slices) and the
global gradient norm over every mesh happen in ``step``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from config_check import ConfigError
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain import checkpoint
from pretrain.expert_parallel import reduce_expert_grads
from pretrain.parallel_dims import ParallelDims


def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float, world: int) -> torch.Tensor:
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
        holders = world // g.device_mesh.size() if isinstance(g, DTensor) else world
        total += local.double().square().sum() / holders
    if world > 1:
        dist.all_reduce(total)
    norm = total.sqrt()
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            local = g.to_local() if isinstance(g, DTensor) else g
            local.mul_(coef.to(local.dtype))
    return norm


class FSDPEngine:
    def __init__(
        self,
        model: ModernAlbertForMaskedLM,
        dims: ParallelDims,
        expert_params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
    ) -> None:
        self.module, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.dims, self.expert_params = dims, expert_params

    def __call__(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        """The update after the last micro-batch: EP gradient reduction, clipping, AdamW, zero grads."""
        if self.expert_params:
            reduce_expert_grads(self.expert_params, self.dims.edp_mesh, self.dims.world)
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
