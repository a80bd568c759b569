"""The pretraining config tree: typed dataclasses, loaded from YAML plus dotted command-line overrides.

    python -m pretrain.train --config pretrain/configs/tiny.yaml train.steps=50 optim.lr=1e-3

Every value is validated before any process-group work; an error names the dotted field and what is
allowed (``config_check.check``, the one validation style of the model, data, loader, classifier and run
configs). The resolved config is printed at start and saved with every checkpoint.

Every section is defined here, at the bottom of ``pretrain`` (this module imports only ``model.config``):
the consumers (``data``, ``distill``, ``evaluate``, ``logger``, the trainer) import their section from here,
so the whole tree reads in one file. ``pretrain.data.LoaderConfig`` extends the ``data:`` section's
``DataConfig`` with a loader's own fields (one set of data fields, not two).

Coercion is the ~40 lines below (``_convert``/``_apply``), not a library, because of what it must do: an
unknown key is an error (``train.stepz=1`` names the field), a YAML word stays a word (``log.wandb=off``
means "off", not false), ``model:`` overlays the chosen ``model.preset`` rather than the dataclass defaults,
and every message has the dotted ``field=value: allowed`` form. pydantic's ``TypeAdapter`` on these
dataclasses does none of the four without code around it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import KW_ONLY, dataclass, field
from collections.abc import Sequence
from typing import Any, get_args, get_origin, get_type_hints

from config_check import ConfigError, check
from model.config import ModelConfig, preset


@dataclass
class MLMConfig:
    mask_prob: float = 0.30  # share of maskable (non-special) tokens that become targets
    mask_token_prob: float = 0.8  # of the targets: replaced by [MASK]
    random_token_prob: float = 0.1  # of the targets: replaced by a random regular token (rest: unchanged)

    def validate(self, prefix: str = "mlm.") -> None:
        check(0.0 < self.mask_prob < 1.0, f"{prefix}mask_prob", self.mask_prob, "must be in (0, 1)")
        for name in ("mask_token_prob", "random_token_prob"):
            check(0.0 <= getattr(self, name) <= 1.0, prefix + name, getattr(self, name), "must be in [0, 1]")
        total = self.mask_token_prob + self.random_token_prob
        check(
            total <= 1.0,
            f"{prefix}mask_token_prob",
            self.mask_token_prob,
            f"{prefix}mask_token_prob + {prefix}random_token_prob = {total}: must be <= 1",
        )


@dataclass
class DataConfig:
    """The run config's ``data:`` section: where the shards are and how they are read and masked."""

    dir: str = "runs/quickstart/shards"  # a data_prep/build_shards.py output (index.json): a path or a URL prefix
    _: KW_ONLY  # the rest by name: LoaderConfig(dir, micro_batch_size, ...) keeps its positional pair
    num_workers: int = 2
    cache_dir: str = ""  # node-local shard cache for a URL dir ("": ~/.cache/modernalbert/shards/<url hash>)
    cache_gb: float = 50.0  # cache size limit (least recently used shards evicted)
    seed: int = 0
    mlm: MLMConfig = field(default_factory=MLMConfig)

    def validate(self, prefix: str = "data.") -> None:
        check(self.num_workers >= 0, f"{prefix}num_workers", self.num_workers, "must be >= 0")
        check(self.cache_gb > 0, f"{prefix}cache_gb", self.cache_gb, "must be > 0")
        self.mlm.validate(f"{prefix}mlm.")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class ScheduleConfig:
    """Warmup–stable–decay: linear warmup, constant, then linear decay over the last decay_fraction."""

    warmup_steps: int = 100
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 1000
    global_batch_tokens: int = 65536  # nominal: samples of seq_len tokens; sets gradient accumulation
    micro_batch_size: int = 16  # samples per rank per forward
    seed: int = 0
    log_every: int = 10
    routing_ema_decay: float = 0.99  # MoL: per-step moving average of each expert's routing share (merge weights)


@dataclass
class CheckpointConfig:
    every: int = 100  # steps; 0 saves only at the end
    keep: int = 3  # last k checkpoints kept (run_dir/checkpoints/step_XXXXXXXX)
    resume: bool = True  # continue from run_dir/checkpoints/latest when it exists


@dataclass
class ParallelConfig:
    ep: int = 1  # expert-parallel degree: MoL experts split over this many ranks (must divide the world size)
    activation_checkpointing: bool = False  # recompute each block application's activations in the backward
    compile: bool = False  # torch.compile each block (needs a C++ compiler on CPU)
    # bf16: parameters cast to bf16 for compute, gradients reduced and optimizer state kept in fp32, routers
    # in fp32 (FSDP2 MixedPrecisionPolicy, or DeepSpeed's bf16); auto: bf16 on CUDA, fp32 on CPU. bf16 on CPU
    # runs the GPU precision path on gloo, as a stand-in for tests.
    precision: str = "auto"  # auto | bf16 | fp32
    # A rank that makes no progress for this long ends the job (one line naming the hung rank(s), stacks in
    # run_dir/hang/, exit 76: the SLURM script requeues). Armed from the end of the first step; before it,
    # start-up (rendezvous, model build, resume, compilation) gets startup_timeout_s (pretrain/hang_watch.py).
    collective_timeout_s: float = 300.0
    startup_timeout_s: float = 1800.0

    def bf16(self, device_type: str) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")


@dataclass
class DistillConfig:
    teacher: str = ""  # HF model directory; empty: no distillation
    hidden_weight: float = 1.0
    pooled_weight: float = 0.0  # sentence level: mean-pooled student vs teacher embeddings
    kl_weight: float = 1.0
    temperature: float = 2.0
    layers: tuple[int, ...] = ()  # teacher layer per student hidden state; empty: init_from's map, else even
    teacher_input: str = "clean"  # clean: the text before masking; masked: the student's (masked) input
    hidden_at: str = "group"  # the student's hidden states distilled: each group's output, or each application's
    mlm_weight: float = 1.0  # the MLM loss's weight while distilling (0: distillation alone)
    relation_weight: float = 0.0  # MiniLMv2 self-attention relations (Q-Q, K-K, V-V), last layer; 0: off
    relation_heads: int = 0  # relation heads the q/k/v vectors are split into; 0: the teacher's attention heads

    def validate(self, prefix: str = "distill.") -> None:
        check(
            self.teacher_input in TEACHER_INPUTS,
            prefix + "teacher_input",
            self.teacher_input,
            f"allowed: {', '.join(TEACHER_INPUTS)}",
        )
        check(self.hidden_at in HIDDEN_AT, prefix + "hidden_at", self.hidden_at, f"allowed: {', '.join(HIDDEN_AT)}")
        for name in ("hidden_weight", "pooled_weight", "kl_weight", "mlm_weight", "relation_weight", "relation_heads"):
            check(getattr(self, name) >= 0, prefix + name, getattr(self, name), "must be >= 0")
        check(self.temperature > 0, f"{prefix}temperature", self.temperature, "must be > 0")


TEACHER_INPUTS = ("clean", "masked")
HIDDEN_AT = ("group", "application")


@dataclass
class EvalConfig:
    every: int = 0  # steps between validations (also before the first and after the last step); 0: none
    max_batches: int = 0  # global batches per validation; 0: the whole val split
    micro_batch_size: int = 0  # 0: train.micro_batch_size

    def validate(self, prefix: str = "eval.") -> None:
        for name in ("every", "max_batches", "micro_batch_size"):
            check(getattr(self, name) >= 0, prefix + name, getattr(self, name), "must be >= 0")


WANDB_MODES = ("disabled", "offline", "online")


@dataclass
class LogConfig:
    wandb: str = "disabled"  # disabled | offline | online (offline writes run_dir/wandb, sync it later)
    wandb_project: str = "modernalbert"
    progress_bar: str = "auto"  # auto (when stderr is a terminal) | on | off
    peak_tflops: float = 0.0  # per device, for MFU; 0 = known GPUs only (no MFU on CPU)

    def validate(self, prefix: str = "log.") -> None:
        check(self.wandb in WANDB_MODES, f"{prefix}wandb", self.wandb, f"allowed: {', '.join(WANDB_MODES)}")
        check(
            self.progress_bar in ("auto", "on", "off"),
            f"{prefix}progress_bar",
            self.progress_bar,
            "allowed: auto, on, off",
        )
        check(self.peak_tflops >= 0, f"{prefix}peak_tflops", self.peak_tflops, "must be >= 0")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 3
    config: str = ""  # a DeepSpeed JSON merged over the generated config

    def validate(self, prefix: str = "deepspeed.") -> None:
        check(self.zero_stage in (1, 2, 3), f"{prefix}zero_stage", self.zero_stage, "allowed: 1, 2, 3")
        check(not self.config or os.path.isfile(self.config), f"{prefix}config", self.config, "no such file")


@dataclass
class RunConfig:
    run_dir: str = "runs/tiny"  # checkpoints/, metrics.jsonl and config.yaml go here
    engine: str = "fsdp2"  # fsdp2 | deepspeed (ZeRO stage deepspeed.zero_stage)
    init_from: str = ""  # native model dir to start from (e.g. tools/init_from_teacher.py); its model config wins
    model: ModelConfig = field(default_factory=lambda: preset("tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def validate(self) -> "RunConfig":
        """Every section in one style (``config_check.check``), each message naming the dotted field."""
        self.model.validate("model.")
        self.data.validate("data.")
        o, sc, t, c = self.optim, self.schedule, self.train, self.checkpoint
        check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
        check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
        check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1", o.beta1, "beta1, beta2 must be in [0, 1)")
        check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables)")
        check(sc.warmup_steps >= 0, "schedule.warmup_steps", sc.warmup_steps, "must be >= 0")
        check(0 <= sc.decay_fraction <= 1, "schedule.decay_fraction", sc.decay_fraction, "must be in [0, 1]")
        check(0 <= sc.min_lr_ratio <= 1, "schedule.min_lr_ratio", sc.min_lr_ratio, "must be in [0, 1]")
        for name in ("steps", "micro_batch_size", "global_batch_tokens", "log_every"):
            check(getattr(t, name) >= 1, f"train.{name}", getattr(t, name), "must be >= 1")
        check(0 <= t.routing_ema_decay < 1, "train.routing_ema_decay", t.routing_ema_decay, "must be in [0, 1)")
        check(c.every >= 0, "checkpoint.every", c.every, "must be >= 0")
        check(c.keep >= 1, "checkpoint.keep", c.keep, "must be >= 1")
        self.log.validate("log.")
        self.eval.validate("eval.")
        self.distill.validate("distill.")
        check(self.engine in ("fsdp2", "deepspeed"), "engine", self.engine, "allowed: fsdp2, deepspeed")
        ep = self.parallel.ep
        if self.engine == "deepspeed":
            self.deepspeed.validate("deepspeed.")
            check(
                ep == 1,
                "parallel.ep",
                ep,
                "engine=deepspeed runs MoL experts unsplit (ep=1): DeepSpeed's own MoE cannot run under ZeRO-3. "
                "Use engine=fsdp2 for expert parallelism",
            )
        check(ep >= 1, "parallel.ep", ep, "must be >= 1")
        for name in ("collective_timeout_s", "startup_timeout_s"):
            value = getattr(self.parallel, name)
            check(value > 0, f"parallel.{name}", value, "must be > 0 (seconds)")
        check(
            self.parallel.precision in ("auto", "bf16", "fp32"),
            "parallel.precision",
            self.parallel.precision,
            "allowed: auto, bf16, fp32",
        )
        if ep > 1:
            mol = self.model.mol
            check(bool(mol.groups), "parallel.ep", ep, "> 1 needs MoL experts (model.mol.groups is empty)")
            check(mol.num_experts % ep == 0, "parallel.ep", ep, f"must divide model.mol.num_experts={mol.num_experts}")
            check(
                mol.grouped, "parallel.ep", ep, "> 1 needs model.mol.grouped=true (the reference path is single-device)"
            )
        return self

    def accumulation_steps(self, seq_len: int, world_size: int) -> int:
        """Micro-batches per optimizer step so that the global batch holds global_batch_tokens.

        A geometry that does not fit (e.g. ``tiny``'s 8 192 tokens, 32 samples of 256, on shards of 1 024:
        8 samples for 16 per rank) is refused with the overrides that make it fit, computed here: the same
        global batch in smaller micro-batches, or the global batch rounded up to whole micro-batches. Neither
        is applied silently: the global batch is the optimisation's hyperparameter (lr and warm-up are set
        for it) and the micro-batch the memory's, and the run's config.yaml says what ran."""
        tokens, micro = self.train.global_batch_tokens, self.train.micro_batch_size
        samples = -(-tokens // seq_len)
        per_step = micro * world_size
        if samples % per_step:
            fixes = []
            if samples % world_size == 0:  # the same global batch in smaller micro-batches
                per_rank = samples // world_size
                fit = max(d for d in range(1, min(micro, per_rank) + 1) if per_rank % d == 0)
                n = per_rank // fit
                fixes.append(
                    f"train.micro_batch_size={fit} (the same global batch: {n} micro-batch{'es' if n > 1 else ''} "
                    f"of {fit} per rank)"
                )
            rounded = -(-samples // per_step) * per_step  # whole micro-batches of micro on every rank
            fixes.append(
                f"train.global_batch_tokens={rounded * seq_len} (the same micro-batches: {rounded} samples of "
                f"{seq_len})"
            )
            raise ConfigError(
                f"train.global_batch_tokens={tokens}: at seq_len {seq_len} that is {samples} samples, not a "
                f"multiple of train.micro_batch_size x world size = {per_step} ({micro} x {world_size}); pass "
                + " or ".join(fixes)
            )
        return samples // per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """Every field, sections in order (run_dir/config.yaml, ``--print-config``); loads back as a config."""
        import json

        import yaml

        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)


def sections_help() -> str:
    """The config's top-level fields and sections with their fields (``python -m pretrain.train --help``)."""
    import textwrap

    from model.config import PRESETS

    lines = ["config (YAML sections; a dotted override names one field: train.steps=100):"]
    default = RunConfig()
    scalars = [f.name for f in dataclasses.fields(default) if not dataclasses.is_dataclass(getattr(default, f.name))]
    for f in dataclasses.fields(default):
        section = getattr(default, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        names = [
            f"{g.name}.*" if dataclasses.is_dataclass(getattr(section, g.name)) else g.name
            for g in dataclasses.fields(section)
        ]
        if f.name == "model":
            names.insert(0, f"preset ({', '.join(PRESETS)})")
        text = f"  {f.name + ':':<12}{', '.join(names)}"
        lines += textwrap.wrap(text, 110, subsequent_indent=" " * 14)
    return "\n".join([*lines, f"  {'top level:':<12}{', '.join(scalars)}"])


def _convert(value: Any, hint: Any, name: str) -> Any:
    """Coerce a YAML/CLI value to the field's declared type (tuples, ints, floats, bools, None)."""
    origin = get_origin(hint)
    if origin is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    args = [a for a in get_args(hint) if a is not type(None)]
    if value is None:
        return None
    base = args[0] if origin is not None and args else hint
    if base is bool and isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{name}={value!r}: must be true or false")
        return value.lower() == "true"
    if base in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: must be a number") from None
        if isinstance(value, bool) or (base is int and number != int(number)):
            raise ConfigError(f"{name}={value!r}: must be {'an integer' if base is int else 'a number'}")
        return int(number) if base is int else number
    return value


def _apply(obj: Any, values: dict, prefix: str) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{name}: unknown field (allowed: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping of {type(current).__name__} fields")
            _apply(current, value, f"{name}.")
        else:
            setattr(obj, key, _convert(value, hints[key], name))


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, bool) and raw.lower() not in ("true", "false"):
        value = raw  # YAML 1.1 reads on/off/yes/no as booleans; a user typing log.wandb=off means the word
    return key.split("."), value


def load_config(path: str | None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (``model.preset`` picks the model preset, other model keys override it) + overrides."""
    import yaml

    doc: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"--config {path!r}: no such file")
        with open(path, encoding="utf-8") as f:
            try:
                doc = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
                what = " ".join(str(getattr(e, "problem", None) or e).split())
                raise ConfigError(f"{where}: not valid YAML ({what})") from None
        if not isinstance(doc, dict):
            raise ConfigError(
                f"{path}: a YAML mapping of sections (model:, train:, …) expected, found a {type(doc).__name__}"
            )
    for item in overrides:
        keys, value = _parse_override(item)
        node = doc
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    model_doc = dict(doc.pop("model", {}) or {})
    cfg = RunConfig(model=preset(model_doc.pop("preset", "tiny")))
    _apply(cfg.model, model_doc, "model.")
    _apply(cfg, doc, "")
    return cfg.validate()
