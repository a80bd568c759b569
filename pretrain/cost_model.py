"""The dry run's cost model: collectives, compute and memory priced on one GPU type (``configs/hardware.yaml``).

Deliberately small, so a reader can check every number: ring collectives with a per-hop latency,
one bandwidth inside a node and one across nodes, a fixed MFU for the compute, and FSDP's gathers
and reduce-scatters overlapping the compute (prefetch) while expert-parallel all-to-alls and
all-reduces do not. The formulas are in the YAML's header. Estimates, not measurements: compare
with ``scripts/gpu_check.sh`` on the machine you have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import yaml

from config_check import ConfigError

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "hardware.yaml")
GB = 1e9


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_tflops: float
    mfu: float
    memory_gb: float
    intra_node_gb_s: float
    inter_node_gb_s: float
    comm_efficiency: float
    latency_us: float
    hop_latency_us: float
    reserved_gb: float

    def validate(self) -> Hardware:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "name" and not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"hardware {self.name}.{f.name}={v!r}: must be a number >= 0")
        for name in ("mfu", "comm_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"hardware {self.name}.{name}={getattr(self, name)}: must be in (0, 1]")
        return self


def load_hardware(name: str, path: str = DEFAULT_FILE, mfu: float | None = None) -> Hardware:
    """Entry ``name`` of the YAML at ``path``; ``mfu`` overrides its assumed MFU."""
    with open(path, encoding="utf-8") as f:
        table = yaml.safe_load(f) or {}
    if name not in table:
        raise ConfigError(f"--hardware {name}: not in {path} (allowed: {', '.join(table)})")
    known = {f.name for f in fields(Hardware)} - {"name"}
    entry = table[name] or {}
    unknown, missing = set(entry) - known, known - set(entry)
    if unknown or missing:
        raise ConfigError(
            f"hardware {name} in {path}: unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            if unknown
            else f"hardware {name} in {path}: missing keys {sorted(missing)}"
        )
    if mfu is not None:
        entry = {**entry, "mfu": mfu}
    return Hardware(name=name, **entry).validate()


def wire_bytes(kind: str, n: int, in_bytes: float, out_bytes: float) -> float:
    """Bytes one rank sends over links in a ring (or pairwise, all-to-all) collective of ``n`` ranks."""
    if n <= 1:
        return 0.0
    share = (n - 1) / n
    return {
        "all_gather": out_bytes * share,
        "reduce_scatter": in_bytes * share,
        "all_reduce": 2 * in_bytes * share,
        "all_to_all": in_bytes * share,
    }.get(kind, in_bytes)


def collective_seconds(hw: Hardware, kind: str, n: int, inter_node: bool, in_bytes: float, out_bytes: float) -> float:
    if n <= 1:
        return 0.0
    bandwidth = (hw.inter_node_gb_s if inter_node else hw.intra_node_gb_s) * GB * hw.comm_efficiency
    latency = (hw.latency_us + hw.hop_latency_us * (n - 1)) * 1e-6
    return latency + wire_bytes(kind, n, in_bytes, out_bytes) / bandwidth


def step_seconds(hw: Hardware, flops: float, recompute: bool, fsdp_s: float, blocking_s: float) -> dict:
    """Compute time (with the recompute of activation checkpointing), the step time and what bounds it."""
    compute = flops * (4 / 3 if recompute else 1) / (hw.peak_tflops * 1e12 * hw.mfu)
    step = max(compute, fsdp_s) + blocking_s
    return {
        "compute_s": compute,
        "step_s": step,
        "mfu": flops / (step * hw.peak_tflops * 1e12),
        "bound": "compute" if compute >= fsdp_s else "fsdp_comm",
    }
