"""The stages of the GPU check, run by ``scripts/gpu_check.sh`` with the interpreter it chose.

    bash scripts/gpu_check.sh                       # every stage, results in runs/gpu_check/
    STAGES="tests 120m" bash scripts/gpu_check.sh   # a subset
    GPU_CHECK_CPU=1 bash scripts/gpu_check.sh       # the CPU rehearsal CI runs (tiny preset, fp32)

Offline by construction: it never creates a virtual environment and never asks a package index for
anything. Packages that the interpreter lacks come from a wheel folder (``WHEELS``, default
``.gpu_wheels``, filled beforehand by ``scripts/gpu_wheels.sh`` on a networked machine), installed with
``pip --no-index --no-deps`` into a temporary ``--target`` put on ``PYTHONPATH``.

Stages, in order (each one timed; a failed or timed-out stage is recorded and the next one runs):
  shards  tokenizer + shards of the shipped corpus (seq 1024, vocabulary 32768)
  tests   the GPU attention tests: flash-attn / torch varlen forward and backward against SDPA, bf16, fp32
  50m     pretraining throughput of preset 50m, MoL and dense, bf16, eager
  120m    the same for 120m with torch.compile on (MoL and dense), and the dense model eager beside them
  mol     ``benchmarks/bench_mol.py`` at the 120m shape, 16,384 tokens, bf16: the MoL FFN (grouped and slots)
          against the dense FFN, timed, and its aten ops and bytes written counted (eager, and compiled after fusion)
  profile ``benchmarks/profile_model.py``: 120m (MoL, compiled, bf16, 16,384 tokens) under torch.profiler, the
          top 30 kernels by GPU time in profile.md, the trace in trace.json, and the attention backends
          (sdpa, torch varlen, flash-attn) timed side by side
  nccl    a 2-process NCCL run of 50m (MoL) when the machine has 2 GPUs; skipped with a note on one
Each configuration is ``benchmarks/bench_train.py``: STEPS timed steps after WARMUP warm-up steps, one
micro-batch of 16 x 1024 per step, a logged record (a host sync) every 10 steps; the table gives the mean
tokens/s, MFU against the device's exact peak, the median and longest step, and for compiled runs the
graph / graph-break count of torch.compile. ``gpu_check.md`` (stage times, throughput table) and
``gpu_check.json`` are rewritten after every stage, so a check stopped early keeps what it measured.

The CPU rehearsal (``GPU_CHECK_CPU=1``) runs the same stages and writes the same files with CPU-sized
stand-ins: shards of seq 128, the CPU attention parity test, the ``tiny`` preset in fp32 for 50m and 120m
(compile off: Inductor on CPU needs minutes per configuration; ``REHEARSE_COMPILE=1`` turns it on) and
a 2-process gloo run for nccl.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("shards", "tests", "50m", "120m", "mol", "profile", "nccl")
MIN_TORCH = (2, 6)
# What each stage may take before it is stopped (seconds); the whole check aims at ~8 minutes on one H100.
STAGE_TIMEOUT = {"shards": 90, "tests": 90, "50m": 120, "120m": 240, "mol": 60, "profile": 90, "nccl": 120}
# Requirements that are not imported by the check's stages (HF export, launchers, logging) still count:
# anything the interpreter lacks and the wheel folder holds is installed.
REQUIREMENT_FILES = ("requirements.txt",)
EXTRA_NEEDS = ("pytest",)  # the tests stage


@dataclasses.dataclass
class Settings:
    out: str
    wheels: str
    shards: str
    stages: tuple[str, ...]
    steps: int
    warmup: int
    cpu: bool
    rehearse_compile: bool
    peak_tflops: float
    deadline_s: float

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        stages = tuple(env.get("STAGES", " ".join(STAGES)).replace(",", " ").split())
        bad = [s for s in stages if s not in STAGES]
        if bad:
            fail(f"STAGES: unknown stage(s) {', '.join(bad)}; allowed: {' '.join(STAGES)}")
        cpu = env.get("GPU_CHECK_CPU", "0") not in ("", "0")
        out = env.get("OUT") or "runs/gpu_check"
        try:
            steps = int(env.get("STEPS") or (3 if cpu else 30))
            warmup = int(env.get("WARMUP") or (1 if cpu else 10))
            peak = float(env.get("PEAK_TFLOPS") or 0)
            deadline = float(env.get("DEADLINE") or 480)  # the whole check: 8 minutes
        except ValueError as e:
            fail(f"STEPS, WARMUP, PEAK_TFLOPS and DEADLINE are numbers ({e})")
        if steps < 1 or warmup < 0:
            fail(f"STEPS={steps} WARMUP={warmup}: need STEPS >= 1 timed steps and WARMUP >= 0 untimed ones before them")
        return cls(
            out=out,
            wheels=env.get("WHEELS") or os.path.join(REPO, ".gpu_wheels"),
            shards=env.get("SHARDS") or os.path.join(out, "shards"),
            stages=stages,
            steps=steps,
            warmup=warmup,
            cpu=cpu,
            rehearse_compile=env.get("REHEARSE_COMPILE", "0") not in ("", "0"),
            peak_tflops=peak,
            deadline_s=deadline,
        )


def fail(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------- environment


def _requirement_names() -> list[str]:
    names = []
    for fname in REQUIREMENT_FILES:
        for line in open(os.path.join(REPO, fname), encoding="utf-8"):
            line = line.split("#", 1)[0].strip()
            m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            if m:
                names.append(m.group(0))
    return names + list(EXTRA_NEEDS)


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _wheel_tools():
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
        from packaging.version import Version
    except ImportError:  # pip vendors it; every interpreter with pip has it
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
        from pip._vendor.packaging.version import Version
    return sys_tags, parse_wheel_filename, Version


def install_missing(s: Settings) -> tuple[list[str], str | None]:
    """Install every wheel of ``s.wheels`` whose distribution this interpreter lacks (no index, no deps).

    Returns ("name version" per installed wheel, the --target folder or None)."""
    files = sorted(glob.glob(os.path.join(s.wheels, "*.whl")))
    if not files:
        return [], None
    sys_tags, parse, Version = _wheel_tools()
    here = set(sys_tags())
    best: dict[str, tuple] = {}
    for f in files:
        name, version, _, tags = parse(os.path.basename(f))
        if not (set(tags) & here) or _installed(str(name)) is not None:
            continue  # built for another Python/platform, or already there (the image's own version wins)
        if name not in best or version > best[name][0]:
            best[name] = (version, f)
    if not best:
        return [], None
    target = tempfile.mkdtemp(prefix="gpu_check_site_")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "-q",
        "--target",
        target,
        *[f for _, f in best.values()],
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"})
    if r.returncode:
        fail(f"installing from {s.wheels} failed (pip --no-index): {r.stderr.strip().splitlines()[-1:]}")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    return [f"{n} {v}" for n, (v, _) in sorted(best.items())], target


def torch_summary(s: Settings) -> dict:
    """Check torch (version >= 2.6, CUDA unless rehearsing); one line and exit 2 when it cannot run."""
    try:
        import torch
    except ImportError:
        fail(f"{sys.executable} has no torch; set PYTHON to an interpreter with a CUDA build of torch")
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        fail(f"torch {torch.__version__} at {sys.executable} is older than 2.6, the oldest this check supports")
    pin = next(
        (
            line.split("==", 1)[1].strip()
            for line in open(os.path.join(REPO, "constraints.txt"))
            if line.startswith("torch==")
        ),
        None,
    )
    note = None
    if pin and torch.__version__.split("+")[0] != pin:
        note = f"torch {torch.__version__} differs from the pin {pin} (constraints.txt); the check runs on it"
    if not s.cpu and not torch.cuda.is_available():
        fail(
            f"torch {torch.__version__} at {sys.executable} sees no CUDA GPU (CUDA build: "
            f"{torch.version.cuda or 'no'}); nothing to check. GPU_CHECK_CPU=1 rehearses the stages on CPU"
        )
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if not s.cpu else []
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus, "pin_note": note}


def flash_attn_status() -> str:
    v = _installed("flash-attn") or _installed("flash_attn")
    return f"flash-attn {v}" if v else "flash-attn not installed (the torch varlen and SDPA backends are checked)"


# ---------------------------------------------------------------------------------------------- stages


@dataclasses.dataclass
class StageResult:
    stage: str
    status: str  # ok | failed | timed out | skipped
    seconds: float
    note: str = ""


class Check:
    def __init__(self, s: Settings, env_info: dict) -> None:
        self.s, self.env_info = s, env_info
        self.results: list[StageResult] = []
        self.rows: list[dict] = []
        self.t0 = time.monotonic()
        self.log = open(os.path.join(s.out, "stages.log"), "a", encoding="utf-8")

    # one subprocess, its output appended to stages.log; (returncode or None on timeout, output tail)
    def sh(self, cmd: list[str], timeout: float) -> tuple[int | None, str]:
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        try:
            r = subprocess.run(
                cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=max(timeout, 1)
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            self.log.write(out + f"\n[stopped after {timeout:.0f} s]\n")
            self.log.flush()
            return None, out
        self.log.write(r.stdout)
        self.log.flush()
        return r.returncode, r.stdout

    def remaining(self) -> float:
        return self.s.deadline_s - (time.monotonic() - self.t0)

    def run(self) -> int:
        for stage in STAGES:
            if stage not in self.s.stages:
                continue
            budget = min(STAGE_TIMEOUT[stage] * (3 if self.s.cpu else 1), self.remaining())
            if budget < 10:
                self.record(
                    StageResult(stage, "skipped", 0.0, f"over the time budget (DEADLINE={self.s.deadline_s:.0f} s)")
                )
                continue
            print(f"== {stage}", flush=True)
            t = time.monotonic()
            status, note = getattr(self, "stage_" + stage)(t + budget)
            self.record(StageResult(stage, status, time.monotonic() - t, note))
        bad = [r for r in self.results if r.status in ("failed", "timed out")]
        total = time.monotonic() - self.t0
        print(
            f"gpu_check: {len(self.results) - len(bad)}/{len(self.results)} stages ok or skipped in {total:.0f} s; "
            f"results in {self.s.out}/gpu_check.md"
            + (f"; failed: {', '.join(r.stage for r in bad)} (see {self.s.out}/stages.log)" if bad else "")
        )
        return 1 if bad else 0

    def record(self, r: StageResult) -> None:
        self.results.append(r)
        print(f"-- {r.stage}: {r.status} in {r.seconds:.1f} s" + (f" ({r.note})" if r.note else ""), flush=True)
        write_report(self)

    def stage_shards(self, until: float) -> tuple[str, str]:
        seq, vocab, extra = (128, 4000, ["--shard-mb", "0.3"]) if self.s.cpu else (1024, 32768, [])
        rc, out = self.sh(
            [
                sys.executable,
                "data_prep/build_shards.py",
                "--out",
                self.s.shards,
                "--seq-len",
                str(seq),
                "--vocab-size",
                str(vocab),
                "--no-progress",
                *extra,
            ],
            until - time.monotonic(),
        )
        if rc is None:
            return "timed out", ""
        tokens = re.search(r"tokens\s+([\d,]+)", out)
        return ("ok" if rc == 0 else "failed"), (
            f"{tokens.group(1)} tokens, seq {seq}, vocabulary {vocab}"
            if rc == 0 and tokens
            else out.strip().splitlines()[-1:][0]
            if out.strip()
            else ""
        )

    def stage_tests(self, until: float) -> tuple[str, str]:
        # on CPU the fused backends cannot run: the rehearsal runs the unpadded-vs-padded SDPA parity instead
        target = (
            ["tests/test_model.py", "-k", "unpadded_forward"]
            if self.s.cpu
            else ["-m", "gpu", "tests/test_attention_gpu.py", "tests/test_host_syncs_gpu.py"]
        )
        rc, out = self.sh(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *target], until - time.monotonic()
        )
        if rc is None:
            return "timed out", ""
        summary = next(
            (
                line.strip("= ")
                for line in reversed(out.splitlines())
                if re.search(r"\d+ (passed|failed|skipped|error)", line)
            ),
            "no summary",
        )
        return ("ok" if rc == 0 else "failed"), summary

    def _train(
        self, until: float, preset: str, compile: bool, nprocs: int = 1, variants: tuple[str, ...] = ("mol", "dense")
    ) -> tuple[str, str]:
        config = "pretrain/configs/tiny.yaml" if self.s.cpu else f"pretrain/configs/{preset}.yaml"
        precision = "fp32" if self.s.cpu else "bf16"
        seq = 128 if self.s.cpu else 1024
        notes, status = [], "ok"
        for variant in variants:
            compiled = compile and not variant.endswith("-eager")
            label = f"{preset} {variant.removesuffix('-eager')} compile={'on' if compiled else 'off'}" + (
                f" {nprocs} processes" if nprocs > 1 else ""
            )
            if self.s.cpu:
                label += " (cpu rehearsal: tiny, fp32)"
            if until - time.monotonic() < 10:
                notes.append(f"{variant}: not run, stage time used up")
                status = "timed out"
                continue
            json_path = os.path.join(self.s.out, f".rows_{os.getpid()}.jsonl")
            if os.path.exists(json_path):
                os.remove(json_path)
            # accumulation 1 (global batch = one micro-batch of 16 x seq per process): every step timed alike
            cmd = [
                sys.executable,
                "benchmarks/bench_train.py",
                "--config",
                config,
                "--data",
                self.s.shards,
                "--steps",
                str(self.s.warmup + self.s.steps),
                "--warmup",
                str(self.s.warmup),
                "--nprocs",
                str(nprocs),
                "--num-workers",
                "1" if self.s.cpu else "4",
                "--json",
                json_path,
                "--label",
                label,
                "--log-every",
                str(10 if self.s.steps >= 10 else 1),  # a record is a host sync: not every step on a GPU
                "train.micro_batch_size=16",
                f"train.global_batch_tokens={16 * seq * nprocs}",
                f"parallel.compile={str(compiled).lower()}",
                f"parallel.precision={precision}",
            ]
            if self.s.peak_tflops:
                cmd.append(f"log.peak_tflops={self.s.peak_tflops}")
            if variant.startswith("dense"):
                cmd.append("model.mol.groups=[]")
            t = time.monotonic()
            rc, out = self.sh(cmd, until - t)
            wall = time.monotonic() - t
            if rc is None:
                notes.append(f"{variant}: stopped after {wall:.0f} s")
                status = "timed out"
                continue
            if rc != 0 or not os.path.exists(json_path):
                last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["no output"]
                notes.append(f"{variant}: failed ({last[0][:160]})")
                status = "failed"
                continue
            for line in open(json_path, encoding="utf-8"):
                self.rows.append({**json.loads(line), "wall_s": wall, "stage": preset if nprocs == 1 else "nccl"})
            os.remove(json_path)
            write_report(self)
        return status, "; ".join(notes)

    def stage_50m(self, until: float) -> tuple[str, str]:
        return self._train(until, "50m", compile=False)

    def stage_120m(self, until: float) -> tuple[str, str]:
        compile = not self.s.cpu or self.s.rehearse_compile
        status, note = self._train(until, "120m", compile=compile, variants=("mol", "dense", "dense-eager"))
        if self.s.cpu and not compile:
            note = "; ".join(n for n in (note, "compile off in the rehearsal (REHEARSE_COMPILE=1 turns it on)") if n)
        return status, note

    def _script(self, until: float, name: str, cmds: list[list[str]]) -> tuple[str, str]:
        """Run benchmark commands; their output goes to ``name``.md in the results folder."""
        parts = []
        for cmd in cmds:
            rc, out = self.sh([sys.executable, *cmd], until - time.monotonic())
            if rc is None:
                return "timed out", f"{' '.join(cmd[:1])} stopped"
            if rc != 0:
                last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["no output"]
                return "failed", last[0][:160]
            parts.append(f"$ python {' '.join(cmd)}\n\n{out.strip()}\n")
        with open(os.path.join(self.s.out, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
        return "ok", f"{name}.md"

    def stage_mol(self, until: float) -> tuple[str, str]:
        shape = ["--preset", "tiny", "--tokens", "512"] if self.s.cpu else ["--preset", "120m", "--tokens", "16384"]
        dtype = ["--dtype", "float32" if self.s.cpu else "bfloat16"]
        return self._script(
            until,
            "mol",
            [
                ["benchmarks/bench_mol.py", *shape, *dtype, "--steps", "3" if self.s.cpu else "10"],
                *([] if self.s.cpu else [["benchmarks/bench_mol.py", *shape, *dtype, "--steps", "10", "--compile"]]),
                ["benchmarks/bench_mol.py", *shape, *dtype, "--count"],
                # what the compiled step moves after Triton's fusion (tests/test_compile.py counts it on CPU)
                *([] if self.s.cpu else [["benchmarks/bench_mol.py", *shape, *dtype, "--count", "--compile"]]),
            ],
        )

    def stage_profile(self, until: float) -> tuple[str, str]:
        out = os.path.join(self.s.out, "profile")
        if self.s.cpu:
            args = ["--preset", "tiny", "--tokens", "512", "--max-len", "128", "--dtype", "float32"]
        else:
            args = ["--preset", "120m", "--tokens", "16384", "--dtype", "bfloat16", "--compile"]
        status, note = self._script(until, "profile_run", [["benchmarks/profile_model.py", *args, "--out", out]])
        return status, ("profile/profile.md, profile/trace.json" if status == "ok" else note)

    def stage_nccl(self, until: float) -> tuple[str, str]:
        if not self.s.cpu and len(self.env_info["gpus"]) < 2:
            return "skipped", f"{len(self.env_info['gpus'])} GPU on this machine; the 2-process NCCL case needs 2"
        status, note = self._train(until, "50m", compile=False, nprocs=2, variants=("mol",))
        return status, note or ("2 processes on gloo (cpu rehearsal)" if self.s.cpu else "2 processes on NCCL")


# ---------------------------------------------------------------------------------------------- report


def write_report(c: Check) -> None:
    s, e = c.s, c.env_info
    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    if commit != "unknown" and subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode:
        commit += " + uncommitted changes"
    device = ", ".join(e["gpus"]) if e["gpus"] else "CPU (rehearsal)"
    seq = 128 if s.cpu else 1024
    lines = [
        f"# GPU check{' (CPU rehearsal)' if s.cpu else ''}",
        "",
        f"{device}; torch {e['torch']} (CUDA {e['cuda'] or '-'}); Python {platform.python_version()} "
        f"({sys.executable}); commit {commit}; {e['flash_attn']}.",
        f"Per configuration: {s.steps} timed steps after {s.warmup} warm-up, one micro-batch of "
        f"16 x {seq} per process, {'fp32' if s.cpu else 'bf16'}.",
        "",
        "| stage | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for r in c.results:
        lines.append(f"| {r.stage} | {r.status} | {r.seconds:.1f} | {r.note} |")
    total = sum(r.seconds for r in c.results)
    lines += [
        f"| total | | {total:.1f} | |",
        "",
        "| configuration | tokens/s | TFLOP/s per GPU | MFU | step s median / max | peak memory GiB | "
        "loss at last step | wall s | torch.compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in c.rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
        lines.append(
            f"| {r['label']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.2f} | {mfu} | "
            f"{r['step_s_median']:.3f} / {r['step_s_max']:.3f} | {r['memory_gib']:.2f} | {r['loss']:.4f} | "
            f"{r['wall_s']:.1f} | {r.get('compile') or '—'} |"
        )
    if not c.rows:
        lines.append("| (none measured) | | | | | | | | |")
    lines += ["", "Also here: mol.md (MoL FFN vs dense FFN), profile/profile.md (top kernels, attention backends)."]
    with open(os.path.join(s.out, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(s.out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "environment": e,
                "commit": commit,
                "steps": s.steps,
                "warmup": s.warmup,
                "cpu_rehearsal": s.cpu,
                "stages": [dataclasses.asdict(r) for r in c.results],
                "rows": c.rows,
            },
            f,
            indent=1,
        )


def main() -> int:
    s = Settings.from_env()
    # nothing in the check needs a hub or an index; make any attempt fail fast instead of hanging offline
    os.environ.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1"
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    installed, target = install_missing(s)
    try:
        info = torch_summary(s)
        if installed:
            print(f"gpu_check: from {s.wheels}: {', '.join(installed)}")
        else:
            print(f"gpu_check: nothing installed (every wheel in {s.wheels} is already present, or there is none)")
        still = [n for n in _requirement_names() if _installed(n) is None]
        if still:
            print(
                f"gpu_check: still missing (no wheel in {s.wheels}): {', '.join(still)}; "
                "stages that import them will fail (scripts/gpu_wheels.sh fetches them)"
            )
        if info["pin_note"]:
            print(f"gpu_check: note: {info['pin_note']}")
        os.makedirs(s.out, exist_ok=True)  # only once the check can run: a refused start writes nothing
        info["flash_attn"] = flash_attn_status()
        info["from_wheels"], info["missing"] = installed, still
        print(
            f"gpu_check: {sys.executable} (Python {platform.python_version()}), torch {info['torch']}, "
            f"{', '.join(info['gpus']) or 'CPU rehearsal'}; {info['flash_attn']}",
            flush=True,
        )
        with open(os.path.join(s.out, "environment.txt"), "w", encoding="utf-8") as f:
            f.write(json.dumps(info, indent=1) + "\n")
            smi = shutil.which("nvidia-smi")
            if smi and not s.cpu:
                f.write(subprocess.run([smi], capture_output=True, text=True).stdout)
        return Check(s, info).run()
    finally:
        if target:
            shutil.rmtree(target, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
