"""The training engine's interface: what ``pretrain/train.py`` calls, whichever engine shards the model.

``FSDPEngine`` (``pretrain/fsdp_engine.py``: FSDP2 + expert parallelism, torch's AdamW, DCP checkpoints) and
``DeepSpeedEngine`` (``pretrain/deepspeed_engine.py``: ZeRO 1–3) implement it; the loop talks to nothing else,
and mypy checks both against it where ``build_engine`` returns one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from model.modernalbert import ModernAlbertForMaskedLM


class Engine(Protocol):
    module: ModernAlbertForMaskedLM  # the model itself (its parameters are the engine's shards)
    optimizer: torch.optim.Optimizer  # the update rule (the dry run reads its state's size)

    def __call__(self, **inputs: Any) -> Any:
        """The model's forward on one micro-batch (``MaskedLMOutput``)."""
        ...

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Gradients of one micro-batch's share of the global loss; ``last``: the step's last micro-batch."""
        ...

    def step(self) -> torch.Tensor:
        """The update after the last micro-batch: gradient reduction, clipping, optimizer, zero grads.
        Returns the global gradient norm before clipping, a 0-d float tensor, the same on every rank."""
        ...

    def save(self, ckpt_dir: str, step: int, trainer_state: dict, keep: int) -> str:
        """A checkpoint of the model, optimizer and ``trainer_state`` (collective); returns its directory."""
        ...

    def load(self, path: str, world: int) -> dict:
        """The model and optimizer from a checkpoint this engine wrote; returns its trainer state."""
        ...
