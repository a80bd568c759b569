"""The FSDP2 engine: the model parallelised by ``pretrain/parallelize.py``, torch's AdamW, DCP checkpoints.

``pretrain/deepspeed_engine.py`` offers the same interface; ``pretrain/train.py`` only talks to it.
"""

from __future__ import annotations

import torch

from model.config import ConfigError
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain import checkpoint
from pretrain.parallelize import Parallelism


class FSDPEngine:
    def __init__(
        self, model: ModernAlbertForMaskedLM, par: Parallelism, optimizer: torch.optim.Optimizer, grad_clip: float
    ) -> None:
        self.module, self.par, self.optimizer, self.grad_clip = model, par, optimizer, grad_clip

    def __call__(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        """The update after the last micro-batch: EP gradient reduction, clipping, AdamW, zero grads."""
        self.par.reduce_grads()
        norm = self.par.clip_grad_norm_(list(self.module.parameters()), self.grad_clip)
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
