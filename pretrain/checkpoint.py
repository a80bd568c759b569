"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): save, find the latest, load, purge.

Layout under ``run_dir/checkpoints``::

    step_00000050/          DCP shards of model + optimizer (any world size can load them)
        trainer.json        step, scheduler, data-loader cursor, resolved config (rank 0)
        rng_rank{r}.pt      each rank's torch/numpy/python RNG states
    latest                  the name of the newest complete checkpoint

A checkpoint is written to ``.tmp_step_…`` and renamed when every rank has finished, then ``latest``
is replaced atomically: a kill at any point leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pretrain import faults

LATEST = "latest"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def quiet_single_process():
    """One process without a process group is a supported case: silence DCP's warning about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def latest_pointer(ckpt_dir: str) -> str | None:
    """The step directory ``ckpt_dir/latest`` names (complete or not), or None without a pointer."""
    path = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return os.path.join(ckpt_dir, f.read().strip())


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The step directory ``ckpt_dir/latest`` names, if that checkpoint is complete (has trainer.json)."""
    full = latest_pointer(ckpt_dir)
    return full if full and os.path.isfile(os.path.join(full, "trainer.json")) else None


def save(ckpt_dir: str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         trainer_state: dict, keep: int) -> str:
    """Collective: every rank calls it. Returns the checkpoint's path."""
    return save_with(ckpt_dir, step, lambda tmp: _dcp_save(tmp, model, optimizer), trainer_state, keep)


def _dcp_save(tmp: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)


def save_with(ckpt_dir: str, step: int, write_state, trainer_state: dict, keep: int) -> str:
    """The checkpoint protocol around ``write_state(tmp_dir)`` (the engine's model/optimizer writer)."""
    name = f"step_{step:08d}"
    final = os.path.join(ckpt_dir, name)
    tmp = os.path.join(ckpt_dir, f".tmp_{name}")
    if _rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    write_state(tmp)
    torch.save(_rng_state(), os.path.join(tmp, f"rng_rank{_rank()}.pt"))
    if _rank() == 0:
        with open(os.path.join(tmp, "trainer.json"), "w", encoding="utf-8") as f:
            json.dump({"step": step, **trainer_state}, f, indent=1)
    faults.kill_if("MODERNALBERT_KILL_DURING_SAVE", step)
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(ckpt_dir, LATEST + ".tmp"), "w", encoding="utf-8") as f:
            f.write(name + "\n")
        os.replace(os.path.join(ckpt_dir, LATEST + ".tmp"), os.path.join(ckpt_dir, LATEST))
        steps = sorted(n for n in os.listdir(ckpt_dir) if n.startswith("step_"))
        for old in steps[:-keep]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    _barrier()
    return final


def load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: restores model, optimizer and this rank's RNG; returns trainer.json's content."""
    return load_with(path, lambda p: _dcp_load(p, model, optimizer))


def _dcp_load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with quiet_single_process():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=True))


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, "trainer.json"), encoding="utf-8") as f:
        return json.load(f)


def load_with(path: str, read_state) -> dict:
    """``read_state(path)`` (the engine's model/optimizer reader), then this rank's RNG; trainer.json."""
    read_state(path)
    rng = os.path.join(path, f"rng_rank{_rank()}.pt")
    if os.path.isfile(rng):  # a rank that did not exist when it was saved keeps its fresh seed
        _set_rng_state(torch.load(rng, weights_only=False))
    return read_trainer_state(path)
