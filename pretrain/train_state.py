"""What a checkpoint keeps besides the model and optimizer, as ``Stateful`` components
(``torch.distributed.checkpoint.stateful``: ``state_dict()`` / ``load_state_dict()``).

- ``TrainerState`` is ``trainer.json`` (rank 0 writes it, every rank reads it): the step counter and each
  component's state under its name — the LR scheduler, the data loader's position (``Trainer`` names
  them) — plus facts about the run that a resume checks but never loads (resolved config, engine, world
  size). A new piece of training state is one more component; save and resume need no edit.
- ``RNGState`` is one rank's random generators (torch, CUDA, numpy, Python), ``rng_rank{r}.pt``.

The file layout is fixed (``trainer.json`` with the components' states at its top level, one
``rng_rank{r}.pt`` per rank), so a checkpoint written by any version of this code resumes
(``tests/test_train_state.py`` loads one in that layout).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.distributed.checkpoint.stateful import Stateful


class ComponentStateError(ValueError):
    """A component's saved state does not fit it (``name`` says which; ``cause`` is its own error)."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"{name}: {cause}")
        self.name, self.cause = name, cause


class TrainerState(Stateful):
    """The step counter and named components, as one state dict: {"step", <name>: <component state>, <info>}."""

    def __init__(self, components: dict[str, Stateful], info: Callable[[], dict] | None = None) -> None:
        for name, c in components.items():
            if not isinstance(c, Stateful):
                raise TypeError(
                    f"training-state component {name!r}: {type(c).__name__} has no state_dict/load_state_dict"
                )
        self.step = 0
        self.components = components
        self.info = info  # written beside the components, read back by the checks of a resume, never loaded

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            **{n: c.state_dict() for n, c in self.components.items()},
            **(self.info() if self.info else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Each component in order; the first that refuses its state raises ``ComponentStateError``. A component
        with ``optional_state = True`` missing from an older checkpoint keeps its fresh state."""
        for name, c in self.components.items():
            if name not in state and getattr(c, "optional_state", False):
                continue
            if name not in state:
                raise ComponentStateError(name, KeyError(f"the checkpoint has no {name!r} state"))
            try:
                c.load_state_dict(state[name])
            except (KeyError, TypeError, ValueError) as e:
                raise ComponentStateError(name, e) from None
        self.step = int(state["step"])


class RNGState(Stateful):
    """This process's random generators; loading puts them back exactly (dropout, router jitter, masking)."""

    def state_dict(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
