"""Training metrics: run_dir/metrics.jsonl (every step), a console line, a progress bar, W&B (opt-in).

Only rank 0 writes. The training loop hands over one record per step (already reduced over ranks);
throughput, TFLOP/s and MFU are computed here over the steps since the last console line:

    TFLOP/s per device = (per-application FLOPs of those steps, model/flops.py) / seconds / world
    MFU = TFLOP/s per device / peak TFLOP/s per device (log.peak_tflops, or known for the GPU; none on CPU)

W&B is ``disabled`` unless ``log.wandb`` says ``offline`` or ``online``; it is never forced online. A
requeued run continues the same W&B run (its id is kept in run_dir/wandb_id).
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import string
import sys
import time

import torch

from fileio import atomic_write
from config_check import ConfigError
from pretrain.config import LogConfig
from pretrain.storage import write_fault

# dense bf16 tensor-core peak per device (no sparsity), TFLOP/s, from the vendors' data sheets. Matched as whole
# words of the name torch reports, most specific first: an H100 PCIe or NVL must not take the SXM figure, nor an
# L40 the L4's.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("H100 80GB HBM3")
    ("A100", 312.0),  # SXM and PCIe, 40 and 80 GB
    ("L40S", 362.0),
    ("L4", 121.0),
)


def peak_tflops(cfg: LogConfig, device: torch.device, say=print) -> float | None:
    """The device's dense bf16 peak for MFU: ``log.peak_tflops``, else the table's entry for this GPU. An
    unknown GPU gets one line asking for ``log.peak_tflops`` (no guess); the CPU has no MFU."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name):
            return value
    say(f"MFU not logged: no peak known for {name!r}; set log.peak_tflops=<dense bf16 TFLOP/s of one device>")
    return None


def memory_gib(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, peak resident set of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


SUPERSEDED_SUFFIX = ".superseded.jsonl"


def append_line(path: str, line: str) -> str | None:
    """Append one line; on a storage fault (full disk, quota, read-only, permissions) return it as one
    line instead of raising, so the caller can stop every rank together (only rank 0 writes logs)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        return write_fault(e, f"log {path}: cannot be written", os.path.dirname(path))
    return None


def supersede_records(run_dir: str, start_step: int) -> int:
    """Before a (re)started run logs: move the records it will write again out of its JSONL logs.

    A run killed after its last checkpoint logged steps that the relaunch repeats from ``start_step``.
    metrics.jsonl keeps steps <= start_step; eval.jsonl keeps the evaluations before the resume point
    (with the one at start_step, which a resumed run does not repeat; a run starting at step 0 evaluates
    step 0 again). The rest is appended to ``<name>.superseded.jsonl`` beside it, not deleted. Each file
    is rewritten through a temporary file and a rename, so a kill here loses nothing. Returns how many
    records moved.
    """
    moved = 0
    for name, keep in (
        ("metrics.jsonl", lambda s: s <= start_step),
        ("eval.jsonl", lambda s: s < start_step or (start_step > 0 and s == start_step)),
    ):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        kept: list[str] = []
        gone: list[str] = []
        for line in open(path, encoding="utf-8"):
            if not line.strip():
                continue
            line = line if line.endswith("\n") else line + "\n"
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                gone.append(line)  # a line torn by the kill: set aside too, or the next record would join it
                continue
            (kept if keep(step) else gone).append(line)
        if not gone:
            continue
        with open(path[: -len(".jsonl")] + SUPERSEDED_SUFFIX, "a", encoding="utf-8") as f:
            f.writelines(gone)
        with atomic_write(path) as f:
            f.writelines(kept)
        moved += len(gone)
    return moved


class TrainLogger:
    def __init__(
        self,
        cfg: LogConfig,
        run_dir: str,
        total_steps: int,
        log_every: int,
        *,
        rank: int,
        world: int,
        device: torch.device,
        start_step: int,
        config: dict,
        console: tuple[tuple[str, str, int], ...] = (("loss", "loss", 4), ("mlm_accuracy", "acc", 3)),
    ) -> None:
        """``console``: (record key, label, digits) of the loss terms the console line shows
        (pretrain/loss_terms.py)."""
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.console = console
        self.total, self.every = total_steps, log_every
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.eval_path = os.path.join(run_dir, "eval.jsonl")
        self.peak = peak_tflops(cfg, device, say=print if rank == 0 else lambda line: None)
        self.t_last, self.tokens, self.flops, self.steps = time.perf_counter(), 0, 0.0, 0
        self.bar = self.wandb = None
        self.fault: str | None = None  # a storage fault met writing a log (the trainer stops on it)
        if rank != 0:
            return
        if cfg.progress_bar == "on" or (cfg.progress_bar == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if cfg.wandb != "disabled":
            self.wandb = _start_wandb(cfg, run_dir, config)

    def step(self, record: dict, step_tokens: int, step_flops: float, expert_load: dict[str, list[int]]) -> None:
        """``step_tokens``/``step_flops``: over all ranks. Writes the record; prints every ``log_every``."""
        self.tokens += step_tokens
        self.flops += step_flops
        self.steps += 1
        if self.rank != 0:
            return
        step = record["step"]
        if self.bar is not None:
            self.bar.update(1)
        if step % self.every == 0 or step == self.total:
            record = {**record, **self._report(record, expert_load)}
        self.fault = self.fault or append_line(self.path, json.dumps(record))

    def eval(self, record: dict) -> None:
        """Append a validation record to run_dir/eval.jsonl (rank 0)."""
        if self.rank == 0:
            self.fault = self.fault or append_line(self.eval_path, json.dumps(record))

    def _report(self, record: dict, expert_load: dict[str, list[int]]) -> dict:
        """Console line (and W&B) for the steps since the last one; returns the performance fields."""
        dt = max(time.perf_counter() - self.t_last, 1e-9)
        tflops = self.flops / dt / self.world / 1e12
        perf = {
            "tokens_per_s": self.tokens / dt,
            "tflops_per_device": tflops,
            "memory_gib": memory_gib(self.device),
            "step_s": dt / max(1, self.steps),  # the mean step time since the last report
        }
        if self.peak:
            perf["mfu"] = tflops / self.peak
        imbalance = {k: max(v) * len(v) / max(1, sum(v)) for k, v in expert_load.items()}  # max/mean load
        terms = "".join(f"{label} {record[key]:.{digits}f}  " for key, label, digits in self.console)
        line = (
            f"step {record['step']:>6}/{self.total}  {terms}aux {record['aux_loss']:.4f}  "
            f"gnorm {record['grad_norm']:.3f}  lr {record['lr']:.2e}  "
            f"{perf['tokens_per_s']:,.0f} tok/s  {tflops:.3f} TFLOP/s"
        )
        if "mfu" in perf:
            line += f"  MFU {perf['mfu']:.1%}"
        line += f"  mem {perf['memory_gib']:.2f} GiB"
        if imbalance:
            line += f"  load max/mean {max(imbalance.values()):.2f}"
        (self.bar.write if self.bar is not None else print)(line)
        sys.stdout.flush()
        if self.wandb is not None:
            entropy = record.get("router_entropy", {})
            scalars = {k: v for k, v in record.items() if k != "router_entropy"}
            self.wandb.log(
                {
                    **scalars,
                    **perf,
                    **{f"expert_load/{k}": v for k, v in imbalance.items()},
                    **{f"router_entropy/{k}": v for k, v in entropy.items()},
                },
                step=record["step"],
            )
        self.t_last, self.tokens, self.flops, self.steps = time.perf_counter(), 0, 0.0, 0
        return {**perf, "tokens_per_expert": expert_load}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg: LogConfig, run_dir: str, config: dict):
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            f"log.wandb={cfg.wandb!r}: the wandb package is not installed (pip install wandb, or log.wandb=disabled)"
        ) from None
    id_path = os.path.join(run_dir, "wandb_id")
    # our own id (W&B's generator moved between releases): kept in run_dir so a requeued run continues it
    run_id = (
        open(id_path).read().strip()
        if os.path.isfile(id_path)
        else "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    )
    with open(id_path, "w") as f:
        f.write(run_id + "\n")
    return wandb.init(
        project=cfg.wandb_project,
        dir=run_dir,
        id=run_id,
        resume="allow",
        mode=cfg.wandb,  # type: ignore[arg-type]
        config=config,
        name=os.path.basename(os.path.abspath(run_dir)),
    )
