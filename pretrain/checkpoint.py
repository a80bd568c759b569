"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): save, find the latest, load, purge.

Layout under ``run_dir/checkpoints``::

    step_00000050/          DCP shards of model + optimizer (any world size can load them)
        trainer.json        step, scheduler, data-loader cursor, resolved config (rank 0;
                            pretrain/train_state.py: TrainerState)
        rng_rank{r}.pt      each rank's torch/numpy/python RNG states (RNGState)
        manifest.json       every other file's size and sha256 (written last)
    latest                  the name of the newest complete checkpoint
    corrupt-step_…/         a checkpoint that failed verification, set aside when a resume fell back

A checkpoint is written to ``.tmp_step_…`` and renamed when every rank has finished, then ``latest``
is replaced atomically: a kill at any point leaves the previous checkpoint loadable.

Verification. A file can still go bad after it was written (a full disk, a copy cut short, a storage
fault). ``verify`` checks a checkpoint against its manifest (the ranks hash a share of the files each);
``resume_point`` takes the newest checkpoint that verifies, sets the newer bad ones aside and says so,
and raises ``CheckpointError`` (one line) when checkpoints exist but none is intact. A checkpoint from
before manifests existed is checked for its files only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from fileio import atomic_write, sha256_file
from pretrain import faults
from pretrain.reduce import first_fault, from_rank0
from pretrain.storage import describe_failure, free_bytes, human, storage_failure, tree_size
from pretrain.train_state import RNGState

LATEST = "latest"
MANIFEST = "manifest.json"
CORRUPT_PREFIX = "corrupt-"
_STEP_DIR = re.compile(r"step_(\d{8})$")


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message (one line) names it and says what to do."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _gather(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * _world()
    dist.all_gather_object(out, obj)
    return out


def _digest(path: str) -> dict:
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def _files(step_dir: str) -> list[str]:
    """Every file under ``step_dir`` but the manifest, relative, sorted (DeepSpeed writes no subfolders, DCP
    neither)."""
    out = []
    for root, _, names in os.walk(step_dir):
        out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
    return sorted(f for f in out if f != MANIFEST)


def _write_manifest(tmp: str) -> None:
    """Collective: each rank hashes a share of the files; rank 0 writes the manifest."""
    files = from_rank0(_files(tmp) if _rank() == 0 else None)
    mine = {f: _digest(os.path.join(tmp, f)) for f in files[_rank() :: _world()]}
    entries = {k: v for part in _gather(mine) for k, v in part.items()}
    if _rank() == 0:
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump({"files": {k: entries[k] for k in files}}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())


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


def save(
    ckpt_dir: str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict, keep: int
) -> str:
    """Collective: every rank calls it. Returns the checkpoint's path."""
    return save_with(ckpt_dir, step, lambda tmp: _dcp_save(tmp, model, optimizer), trainer_state, keep)


def _dcp_save(tmp: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)


class StorageError(CheckpointError):
    """A checkpoint could not be written (full disk, quota, read-only or foreign-owned directory)."""


_warned_short = False


def _agree_on_failure(failure: str | None, tmp: str) -> None:
    """Collective: if any rank failed to write, every rank raises the same ``StorageError`` (rank 0 removes
    the temp dir first); earlier checkpoints and ``latest`` were never touched."""
    failure = first_fault(failure)
    if failure is None:
        return
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    raise StorageError(
        f"{failure}. The temporary {os.path.basename(tmp)} was removed; earlier checkpoints and "
        "'latest' are untouched: free space (or fix the permissions) and relaunch to resume"
    )


def _attempt(fn, what: str, need: int | None, directory: str) -> str | None:
    """Run this rank's part of the save: None, or one line when a storage fault stopped it (others re-raise)."""
    try:
        fn()
        return None
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        err = storage_failure(e, directory)
        if err is None:
            raise
        return describe_failure(err, what, need, directory)


def save_with(ckpt_dir: str, step: int, write_state, trainer_state: dict, keep: int) -> str:
    """The checkpoint protocol around ``write_state(tmp_dir)`` (the engine's model/optimizer writer).

    A storage fault at any stage (ENOSPC, EDQUOT, EROFS, EACCES) on any rank ends in one ``StorageError``
    on every rank, after the temp dir is removed; the previous checkpoints stay as they were.
    """
    global _warned_short
    name = f"step_{step:08d}"
    final = os.path.join(ckpt_dir, name)
    tmp = os.path.join(ckpt_dir, f".tmp_{name}")
    what = f"checkpoint {final}: cannot be written"
    previous = latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    need = tree_size(previous) if previous else None
    if _rank() == 0 and need and not _warned_short:
        free = free_bytes(ckpt_dir)
        if free is not None and free < need:
            _warned_short = True
            print(
                f"warning: {human(free)} free under {ckpt_dir}, the last checkpoint took {human(need)}: "
                f"the save of step {step} will probably fail",
                flush=True,
            )

    def prepare() -> None:
        os.makedirs(ckpt_dir, exist_ok=True)
        for stale in [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp_")]:  # left by a killed save
            shutil.rmtree(os.path.join(ckpt_dir, stale), ignore_errors=True)
        os.makedirs(tmp)

    def write() -> None:
        write_state(tmp)  # collective: DCP hands one rank's failure to every rank itself
        faults.enospc_if(step, _rank(), tmp)  # after it: this rank's own files
        torch.save(RNGState().state_dict(), os.path.join(tmp, f"rng_rank{_rank()}.pt"))
        if _rank() == 0:
            with open(os.path.join(tmp, "trainer.json"), "w", encoding="utf-8") as f:
                json.dump({"step": step, **trainer_state}, f, indent=1)

    def publish() -> None:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _point_latest(ckpt_dir, name)

    _agree_on_failure(_attempt(prepare, what, need, ckpt_dir) if _rank() == 0 else None, tmp)
    _agree_on_failure(_attempt(write, what, need, ckpt_dir), tmp)
    faults.kill_if("MODERNALBERT_KILL_DURING_SAVE", step)
    _barrier()
    _agree_on_failure(_attempt(lambda: _write_manifest(tmp), what, need, ckpt_dir), tmp)
    _agree_on_failure(_attempt(publish, what, need, ckpt_dir) if _rank() == 0 else None, tmp)
    if _rank() == 0:
        for old in [os.path.basename(p) for p in step_dirs(ckpt_dir)][keep:]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    _barrier()
    return final


def load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: restores model, optimizer and this rank's RNG; returns trainer.json's content."""
    return load_with(path, lambda p: _dcp_load(p, model, optimizer))


def _dcp_load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with quiet_single_process():
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)  # in place
    set_state_dict(
        model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=StateDictOptions(strict=True)
    )


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, "trainer.json"), encoding="utf-8") as f:
        return json.load(f)


def load_with(path: str, read_state) -> dict:
    """``read_state(path)`` (the engine's model/optimizer reader), then this rank's RNG; trainer.json."""
    read_state(path)
    rng = os.path.join(path, f"rng_rank{_rank()}.pt")
    if os.path.isfile(rng):  # a rank that did not exist when it was saved keeps its fresh seed
        RNGState().load_state_dict(torch.load(rng, weights_only=False))
    return read_trainer_state(path)


# ---------------------------------------------------------------------------------------------- verification


def step_dirs(ckpt_dir: str) -> list[str]:
    """The complete checkpoints (renamed ``step_XXXXXXXX`` folders) under ``ckpt_dir``, newest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    names = [n for n in os.listdir(ckpt_dir) if _STEP_DIR.fullmatch(n)]
    return [os.path.join(ckpt_dir, n) for n in sorted(names, reverse=True)]


def verify(step_dir: str, share: tuple[int, int] = (0, 1)) -> str | None:
    """What is wrong with a checkpoint, or None. ``share=(r, n)`` hashes only every n-th file from the r-th."""
    if not os.path.isdir(step_dir):
        return "missing"
    manifest = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(manifest):  # written before manifests existed: the files that must be there
        if not os.path.isfile(os.path.join(step_dir, "trainer.json")):
            return "no trainer.json"
        if not any(f == ".metadata" or f.endswith("model_states.pt") for f in os.listdir(step_dir)):
            return "no model state (neither DCP .metadata nor DeepSpeed model states)"
        return _trainer_json_problem(step_dir)
    try:
        with open(manifest, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({e})"
    names = sorted(files)
    for name in names:  # cheap checks first, on every rank
        path = os.path.join(step_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != files[name]["size"]:
            size = os.path.getsize(path)
            how = "truncated" if size < files[name]["size"] else "changed"
            return f"{name} {how}: {size:,} bytes, the manifest says {files[name]['size']:,}"
    for name in names[share[0] :: share[1]]:
        if _digest(os.path.join(step_dir, name))["sha256"] != files[name]["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST} (corrupted)"
    return _trainer_json_problem(step_dir)


def _trainer_json_problem(step_dir: str) -> str | None:
    try:
        state = read_trainer_state(step_dir)
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"trainer.json unreadable ({type(e).__name__}: {e})"
    return None


def verify_collective(step_dir: str) -> str | None:
    """Collective ``verify``: the ranks hash a share of the files each and agree on the first problem."""
    problems = [p for p in _gather(verify(step_dir, (_rank(), _world()))) if p]
    return problems[0] if problems else None


def resume_point(ckpt_dir: str, log=print) -> str | None:
    """Collective: the newest checkpoint that verifies, or None when there is none at all.

    Newer checkpoints that fail are renamed ``corrupt-step_…`` (kept for inspection, out of the way of
    keep-k purging) once an intact one is found, and ``latest`` is pointed at it. Raises
    ``CheckpointError`` when checkpoints exist but none is intact (nothing is renamed then).
    """
    candidates = from_rank0(step_dirs(ckpt_dir) if _rank() == 0 else None)
    bad: list[tuple[str, str]] = []
    for path in candidates:
        problem = verify_collective(path)
        if problem is None:
            if bad and _rank() == 0:
                for b, why in bad:
                    aside = os.path.join(ckpt_dir, CORRUPT_PREFIX + os.path.basename(b))
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(b, aside)
                    log(f"checkpoint {b}: {why}; set aside as {aside}")
                _point_latest(ckpt_dir, os.path.basename(path))
                log(f"falling back to the newest intact checkpoint, {path}")
            _barrier()
            return path
        bad.append((path, problem))
    if bad:
        listing = "; ".join(f"{os.path.basename(b)}: {why}" for b, why in bad)
        raise CheckpointError(
            f"no intact checkpoint in {ckpt_dir} ({listing}); restore one from a copy, or start "
            "over with a new run_dir (or checkpoint.resume=false, which overwrites them)"
        )
    return None


def describe(e: BaseException) -> str:
    """One line for an exception from loading; DCP's CheckpointException wraps each rank's own."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        e = next(iter(failures.values()))[0]
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _point_latest(ckpt_dir: str, name: str) -> None:
    with atomic_write(os.path.join(ckpt_dir, LATEST)) as f:
        f.write(name + "\n")
