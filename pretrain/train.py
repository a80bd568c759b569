"""Pretrain ModernALBERT: ``python -m pretrain.train --config pretrain/configs/tiny.yaml [key=value …]``.

``--print-config`` prints the config the run would use (YAML, every field, after the overrides, validated)
and exits without training.

One process, or several under ``torchrun`` (gloo on CPU, NCCL on GPU; FSDP2 data parallel). The global
batch (train.global_batch_tokens) is split into micro-batches of train.micro_batch_size samples per
rank; the MLM loss is the mean over every masked token of the global batch, so any number of ranks ×
micro-batches with the same global batch gives the same step. Checkpoints resume exactly (model,
optimizer, schedule, data cursor, RNG). Writes run_dir/config.yaml, run_dir/metrics.jsonl and
run_dir/checkpoints/.

Parallelism: FSDP2 over all ranks, plus expert parallelism (parallel.ep), activation checkpointing
and torch.compile (pretrain/parallelize.py). The loop reads top to bottom in stages: ``setup`` (process
group, device, batch geometry) → ``Trainer.__init__`` (build: model on the meta device, parallelised
and initialised unit by unit, engine, data) → ``resume`` → ``run`` (``step`` → log → eval on the val split → save).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from data_prep.errors import DataPrepError
from data_prep.shards import ShardError, ShardIndex
from data_prep.tokenizer_id import check_same_tokenizer, file_tokenizer, warn
from config_check import ConfigError
from model.flops import TrainingFlops
from model.modernalbert import ModernAlbertForMaskedLM, model_inputs
from pretrain import checkpoint, exit_codes, faults
from pretrain.config import RunConfig, load_config, sections_help
from pretrain.data import LoaderConfig, PretrainLoader, micro_batch_seed
from pretrain.distill import Teacher
from pretrain.evaluate import val_scores, val_loader
from pretrain.logger import SUPERSEDED_SUFFIX, TrainLogger, supersede_records
from pretrain.loss_terms import LossTerm, MicroBatch, aux_loss, console_fields, declare
from pretrain.engine import Engine
from pretrain.fsdp_engine import FSDPEngine
from pretrain.hang_watch import HangWatch, backstop_timeouts
from pretrain.parallel_dims import ParallelDims
from pretrain.parallelize import OutsideFSDP, compile_report, parallelize
from pretrain.preemption import REQUEUE_EXIT_CODE, Preempted, PreemptionWatch, clear_marker, write_marker
from pretrain.reduce import all_reduce, first_fault, from_rank0
from pretrain.run_lock import RunDirBusy, RunLock
from pretrain.schedule import warmup_warning, wsd_factor
from pretrain.shard_cache import load_index, shards_tokenizer
from pretrain.routing_ema import RoutingShareEMA
from pretrain.train_state import ComponentStateError, Stateful, TrainerState
from pretrain.storage import write_fault


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is intact."""


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and routers (1-D or routing parameters)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(("router.weight", "router.depth_bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _write_resolved_config(cfg: RunConfig) -> str | None:
    """Write run_dir/config.yaml; a storage fault comes back as one line (None when written)."""
    path = os.path.join(cfg.run_dir, "config.yaml")
    try:
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
    except OSError as e:
        return write_fault(e, f"run_dir {cfg.run_dir}: cannot be written", cfg.run_dir)
    return None


# ---------------------------------------------------------------------------------------------- set-up


@dataclass
class Runtime:
    """Where this process runs and the batch geometry (the set-up stage's result)."""

    index: ShardIndex | None  # None in the dry run's build (no data)
    device: torch.device
    rank: int
    dims: ParallelDims  # the world size and EP degree; its meshes are built by parallelize
    accum: int  # micro-batches per optimizer step on each rank
    init_state: dict[str, torch.Tensor] | None  # weights of cfg.init_from
    seq_len: int = 0  # the samples' longest (the shards'; the dry run's probe length)

    @property
    def world(self) -> int:
        return self.dims.world


def setup(cfg: RunConfig) -> Runtime:
    """Check the data and config against each other, start the process group, choose the device."""
    index = load_index(cfg.data.dir)  # a missing data dir fails here, before any process-group work
    init_state = None
    if cfg.init_from:
        init_state, doc = _read_init(cfg)  # its model config replaces cfg.model
        check_init_tokenizer(cfg, index, doc)
        if cfg.model.vocab_size != index.vocab_size:
            raise ConfigError(
                f"init_from={cfg.init_from!r}: vocabulary {cfg.model.vocab_size} differs from the shards' "
                f"{index.vocab_size} ({cfg.data.dir}); build them with the same tokenizer"
            )
    elif cfg.model.vocab_size != index.vocab_size:
        cfg.model.vocab_size = index.vocab_size  # the data's tokenizer decides
    m = cfg.model
    if m.position_embedding == "absolute" and index.seq_len > m.max_position_embeddings:
        raise ConfigError(
            f"model.max_position_embeddings={m.max_position_embeddings}: the shards' samples have up "
            f"to {index.seq_len} tokens ({cfg.data.dir}); rebuild them with --seq-len "
            f"{m.max_position_embeddings} or less"
        )
    dims = ParallelDims(int(os.environ.get("WORLD_SIZE", "1")), cfg.parallel.ep)  # before any process-group work
    accum = cfg.accumulation_steps(index.seq_len, dims.world)  # the batch geometry too
    deepspeed = cfg.engine == "deepspeed"
    cuda = torch.cuda.is_available()
    # DeepSpeed needs a process group even for one process; so does bf16 under FSDP2 (its precision policy)
    one_process_group = dims.world == 1 and (deepspeed or cfg.parallel.bf16("cuda" if cuda else "cpu"))
    if one_process_group:
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if (dims.world > 1 or one_process_group) and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        # start-up's collectives (rendezvous, resume, the first step's compilation) may take long: the shorter
        # collective_timeout_s holds from the end of the first step (Trainer.run)
        timeout = timedelta(seconds=cfg.parallel.startup_timeout_s)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        print(f"config: {json.dumps(cfg.to_dict())}")
        warning = warmup_warning(cfg.train.steps, cfg.optim.lr, cfg.schedule)
        if warning:  # on stdout with the run's other notes: stderr holds a failed run's one error line
            print(warning, flush=True)
    return Runtime(index, device, rank, dims, accum, init_state, index.seq_len)


# ---------------------------------------------------------------------------------------------- build


Fill = Callable[[ModernAlbertForMaskedLM, Callable[[str], bool]], None]


def init_weights(cfg: RunConfig, rt: Runtime, model: ModernAlbertForMaskedLM, select: Callable[[str], bool]) -> None:
    """The selected modules' weights, the same on every rank: seeded per module, or copied from init_from."""
    model.init_weights(cfg.train.seed, select=select)
    if rt.init_state is not None:
        with torch.no_grad():
            for name, t in [*model.named_parameters(), *model.named_buffers()]:
                if select(name.rpartition(".")[0]):  # the tensor's module
                    t.copy_(rt.init_state[name])


def build_model(cfg: RunConfig, rt: Runtime, fill: Fill | None = None) -> tuple[ModernAlbertForMaskedLM, OutsideFSDP]:
    """The model on the meta device, then materialised, initialised and parallelised unit by unit; returns it
    and the parameters FSDP leaves to the engine.

    ``fill(model, select)`` initialises the selected modules (default ``init_weights``; the dry run's cheap
    values keep shapes and sharding).
    """
    with torch.device("meta"):
        model = ModernAlbertForMaskedLM(cfg.model)
    fill = fill or (lambda m, select: init_weights(cfg, rt, m, select))
    model, outside = parallelize(
        model,
        rt.device,
        lambda select: fill(model, select),
        rt.dims,
        compile=cfg.parallel.compile,
        activation_checkpointing=cfg.parallel.activation_checkpointing,
        fsdp=cfg.engine != "deepspeed",
        bf16=cfg.parallel.bf16(rt.device.type),
    )
    if rt.init_state is not None and rt.rank == 0:
        print(f"initialised from {cfg.init_from}")
    return model, outside


def build_engine(
    cfg: RunConfig, rt: Runtime, model: ModernAlbertForMaskedLM, outside: OutsideFSDP, optimizer: torch.optim.Optimizer
) -> Engine:
    if cfg.engine != "deepspeed":
        return FSDPEngine(model, rt.dims, outside, optimizer, cfg.optim.grad_clip)
    from pretrain.deepspeed_engine import DeepSpeedEngine, build_config

    ds_config, changes = build_config(
        cfg.deepspeed,
        cfg.train.micro_batch_size,
        rt.accum,
        rt.world,
        cfg.optim.grad_clip,
        cfg.parallel.bf16(rt.device.type),
    )
    if rt.rank == 0:
        for c in changes:
            print(f"deepspeed config: {c} (from {cfg.deepspeed.config})")
    return DeepSpeedEngine(model, optimizer, ds_config)


# ---------------------------------------------------------------------------------------------- step


class StepSums:
    """A step's metric sums over its micro-batches, kept on the device (no host sync until ``Trainer.flush``).

    Entries: one per declared loss term (``pretrain/loss_terms.py``), and on log steps (every step with MoL,
    for the routing average) "load/<layer>"
    (tokens routed to each expert) and "entropy/<layer>" (the router's mean per-token entropy times the
    token-expert pairs routed, so that its sum over ranks and micro-batches divided by the load's is the
    mean over every token). Every rank adds the same entries in the same order, so the flattened sums line
    up in the all-reduce.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, t: torch.Tensor) -> None:
        t = t.to(self.device, torch.float64).reshape(-1)
        self.sums[name] = self.sums[name] + t if name in self.sums else t

    @torch.no_grad()
    def add(self, values: dict[str, torch.Tensor], out, count_load: bool) -> None:
        for name, value in values.items():
            self._add(name, value.detach())
        if count_load:
            for layer, st in out.routing_stats.items():
                self._add(f"load/{layer}", st["tokens_per_expert"])
                self._add(f"entropy/{layer}", st["router_entropy"] * st["tokens_per_expert"].sum())

    def nonfinite(self, names: list[str]) -> torch.Tensor:
        """[1] float64 on the device: 1 when this rank's sum of any of ``names`` is NaN or infinite."""
        sums = [self.sums[n] for n in names if n in self.sums]
        if not sums:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        return (~torch.isfinite(torch.cat(sums))).any().to(torch.float64).reshape(1)

    def flat(self) -> torch.Tensor:
        return torch.cat(list(self.sums.values()))

    def unflatten(self, values: list[float]) -> tuple[dict[str, float], dict[str, list[int]], dict[str, float]]:
        """``flat()``'s layout read back: (scalar sums, expert load per layer, router entropy per layer)."""
        scalars, load, weighed, i = {}, {}, {}, 0
        for n, t in self.sums.items():
            e = t.numel()
            if n.startswith("load/"):
                load[n[len("load/") :]] = [int(v) for v in values[i : i + e]]
            elif n.startswith("entropy/"):
                weighed[n[len("entropy/") :]] = values[i]
            else:
                scalars[n] = values[i]
            i += e
        entropy = {layer: w / max(1, sum(load[layer])) for layer, w in weighed.items()}
        return scalars, load, entropy


@dataclass
class TakenStep:
    """An optimizer step whose metrics are still on the device, waiting for ``Trainer.flush``."""

    step: int
    sums: StepSums
    counts: dict[str, float]  # the global counts its terms are divided by
    grad_norm: torch.Tensor  # 0-d, already global (the same on every rank)
    lr: float
    tokens: int
    flops: float
    logged: bool  # a log step: its expert load and router entropy go into its record


class Trainer:
    """The built run (model, engine, optimizer, schedule, data, logging) and its stages.

    Two methods are the seam for a build that does not train (the dry run's ``PlanningTrainer``,
    ``pretrain/dryrun.py``): ``fill_weights`` (how each unit's weights are made) and ``build_data`` (the
    loaders).
    """

    def __init__(self, cfg: RunConfig, rt: Runtime, preemption: PreemptionWatch | None) -> None:
        self.cfg, self.rt = cfg, rt
        self.model, outside = build_model(cfg, rt, self.fill_weights)
        self.teacher = (
            Teacher(
                cfg.distill,
                cfg.model,
                rt.seq_len,
                rt.device,
                verbose=rt.rank == 0,
                init_from=cfg.init_from,
                shards=shards_tokenizer(rt.index, f"data.dir={cfg.data.dir}", cfg.data.cache_dir) if rt.index else None,
            )
            if cfg.distill.teacher
            else None
        )
        self.terms: list[LossTerm] = declare(cfg, self.teacher)
        optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.optim.weight_decay),
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            eps=cfg.optim.eps,
            # one fused kernel per parameter group on CUDA (FSDP2; DeepSpeed wraps the optimizer itself); the CPU keeps
            # the foreach implementation the tests' equalities (1 rank = 2 ranks, resume) were measured with
            fused=(rt.device.type == "cuda" and cfg.engine != "deepspeed") or None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: wsd_factor(s, cfg.train.steps, cfg.schedule)
        )
        self.engine = build_engine(cfg, rt, self.model, outside, optimizer)
        self.loader: PretrainLoader | None = None
        self.val: PretrainLoader | None = None
        self.build_data()
        self.flops = TrainingFlops(cfg.model)
        self.ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
        # trainer.json: the step counter and these components (pretrain/train_state.py), with facts a resume checks
        components: dict[str, Stateful] = {"loader": self.loader} if self.loader is not None else {}
        # MoL: each expert's routing share averaged over the steps (tools/merge_experts.py --method ema)
        self.routing_ema = RoutingShareEMA(cfg.model, cfg.train.routing_ema_decay) if cfg.model.mol.groups else None
        if self.routing_ema is not None:
            components["routing_ema"] = self.routing_ema
        self.state = TrainerState(
            {**components, "scheduler": self.scheduler},
            info=lambda: {"config": cfg.to_dict(), "engine": cfg.engine, "world_size": rt.world},
        )
        self.start_step = 0
        self.resumed_from: str | None = None
        self.preemption = preemption
        self.logger: TrainLogger | None = None  # set by run(); rank 0's log-write fault stops every rank
        self.hang_watch: HangWatch | None = None  # set by run() after its first step (several ranks only)
        self.pending: list[TakenStep] = []  # steps taken since the last flush (metrics on the device)
        self._nonfinite: torch.Tensor | None = None  # the last step's flag, read with the next step's counts
        self._loader_state: dict | None = None  # the data position before the current step's micro-batches

    @property
    def step_no(self) -> int:
        """Optimizer steps taken (checkpointed in ``self.state``)."""
        return self.state.step

    @step_no.setter
    def step_no(self, value: int) -> None:
        self.state.step = value

    def fill_weights(self, model: ModernAlbertForMaskedLM, select: Callable[[str], bool]) -> None:
        """Initialise the modules ``select`` accepts (``init_weights``: seeded per module, or loaded)."""
        init_weights(self.cfg, self.rt, model, select)

    def build_data(self) -> None:
        """The training loader and, when evaluating, the val split's."""
        cfg, rt = self.cfg, self.rt
        self.loader = PretrainLoader(
            LoaderConfig.of(cfg.data, cfg.train.micro_batch_size, pin_memory=rt.device.type == "cuda"),
            rt.rank,
            rt.world,
        )
        micro = cfg.eval.micro_batch_size or cfg.train.micro_batch_size
        self.val = val_loader(cfg.data, micro, rt.rank, rt.world) if cfg.eval.every else None

    # resume / save ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest intact checkpoint (verified; corrupt newer ones are set aside), if any."""
        if not self.cfg.checkpoint.resume:
            return
        log = print if self.rt.rank == 0 else (lambda *_: None)
        latest = checkpoint.resume_point(self.ckpt_dir, log)
        if latest:
            try:
                state = self.engine.load(latest, self.rt.world)
            except ConfigError:
                raise
            except (Exception, CheckpointException) as e:  # verified, yet not loadable into this model
                raise checkpoint.CheckpointError(
                    f"checkpoint {latest}: cannot be loaded into this run ({checkpoint.describe(e)}); was the "
                    "model config changed? Resume with the run's config.yaml"
                ) from None
            try:
                self.state.load_state_dict(state)
            except ComponentStateError as e:
                if e.name == "loader":  # another shard build, split, data seed or global batch
                    raise ConfigError(
                        f"checkpoint {latest}: its data position does not fit this run: {e.cause}; "
                        "resume with the run's config.yaml and data, or start a new run_dir"
                    ) from None
                raise checkpoint.CheckpointError(f"checkpoint {latest}: trainer.json: {e}") from None
            self.start_step = self.step_no
            self.resumed_from = latest
            if self.rt.rank == 0:
                print(f"resumed from {latest} at step {self.step_no}")

    def save(self) -> str:
        """A checkpoint after step ``step_no``: model and optimizer (the engine's), ``self.state``, RNGs."""
        return self.engine.save(self.ckpt_dir, self.step_no, self.state.state_dict(), self.cfg.checkpoint.keep)

    # step ---------------------------------------------------------------------------------------
    def step(self, batches, is_log: bool) -> bool:
        """One optimizer step over ``accum`` micro-batches, its metrics left on the device in ``pending``.

        Its one host sync is the all-reduce of the batch counts at its start, which also carries the flags
        every rank must agree on: a bad shard, rank 0's log-write fault, a preemption signal, and whether
        the previous step's weighted loss terms were finite. Returns False, taking no step, when some rank
        got a preemption signal: every rank then stops after the same step (``run`` saves and exits); a
        signal before the run's first step stops it after that step.
        """
        cfg, rt, device = self.cfg, self.rt, self.rt.device
        self._loader_state = self.loader.state_dict() if self.loader is not None else None
        try:
            micro, fault = [next(batches) for _ in range(rt.accum)], None
        except ShardError as e:
            micro, fault = [], str(e)
        # the loss is a mean over every masked token of the global batch: count them first
        io_fault = self.logger.fault if self.logger is not None else None
        signalled = self.preemption is not None and self.preemption.received is not None
        local = [
            sum(len(b["mlm_labels"]) for b in micro),
            sum(b["num_tokens"] for b in micro),
            sum(self.flops(b["cu_seqlens"], len(b["mlm_labels"])) for b in micro),
            float(fault is not None),
            float(io_fault is not None),
            float(signalled),
        ]
        flags = torch.tensor(local, dtype=torch.float64).to(device)
        if self._nonfinite is not None:
            flags = torch.cat([flags, self._nonfinite])
        # the step's host sync (it waits for the previous step's device work, which computed its flag)
        global_masked, global_tokens, flops, faults_seen, io_faults, preempt, *nonfinite = all_reduce(flags).tolist()
        self._nonfinite = None
        if nonfinite and nonfinite[0]:
            self.flush()  # raises TrainingError naming the step and term
        if io_faults:  # rank 0's message; the others only learn that there was one
            raise TrainingError(
                f"{io_fault or 'rank 0 could not write its logs'}. Training stopped before step "
                f"{self.step_no + 1}; the last checkpoint is {checkpoint.latest_checkpoint(self.ckpt_dir)}"
            )
        if faults_seen:
            message = first_fault(fault, already_flagged=True) or "a bad shard"
            self.flush()  # the steps taken are logged before the run stops
            raise self._data_fault(message)
        if preempt and self.step_no > self.start_step:  # a signal during start-up: one step first, as documented
            return False
        # every term is a global-batch sum over one of these counts (pretrain/loss_terms.py)
        counts = {"masked": global_masked, "tokens": global_tokens, "micro_batches": float(rt.accum * rt.world)}
        sums = StepSums(device)
        for i, b in enumerate(micro):
            inputs = {
                k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in model_inputs(b).items()
            }
            # every random draw of this micro-batch (router jitter, dropout) from its place in the data
            torch.manual_seed(micro_batch_seed(cfg.train.seed, *b["position"]))
            out = self.engine(
                **inputs,
                output_hidden_states=self.teacher is not None,
                hidden_at=cfg.distill.hidden_at,
                output_qkv=self.teacher is not None and cfg.distill.relation_weight > 0,
            )
            mb = MicroBatch(inputs, out, self.teacher, cfg.distill.teacher_input)
            values = {t.name: t.value(mb) for t in self.terms}
            # FSDP averages gradients over ranks: scale by world so the average is the global mean
            total = sum(values[t.name] * (t.weight * rt.world / counts[t.normaliser]) for t in self.terms if t.weight)
            self.engine.backward(total, last=i == rt.accum - 1)
            # routing counts on log steps, and every step with MoL (for the routing average, read at the flush)
            sums.add(values, out, is_log or self.routing_ema is not None)
        grad_norm = self.engine.step()
        lr = float(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.step_no += 1
        if faults.nan_at(self.step_no):
            sums.sums["loss"] = sums.sums["loss"] * float("nan")
        self._nonfinite = sums.nonfinite([t.name for t in self.terms if t.weight])
        self.pending.append(TakenStep(self.step_no, sums, counts, grad_norm, lr, int(global_tokens), flops, is_log))
        return True

    def flush(self) -> list[tuple[dict, float, dict[str, list[int]]]]:
        """Collective: the records of the steps taken since the last flush, read with one all-reduce and one
        host sync: [(record, FLOPs over all ranks, expert load)]. Raises TrainingError at the first step with
        a non-finite weighted term (every rank together: the sums are the same everywhere after the reduce)."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        device = self.rt.device
        reduced = all_reduce(torch.cat([p.sums.flat() for p in pending]))
        norms = [torch.as_tensor(p.grad_norm, dtype=torch.float64, device=device).reshape(1) for p in pending]
        values = torch.cat([reduced, *norms]).tolist()  # grad norms are global already: not summed
        out, i = [], 0
        for k, p in enumerate(pending):
            n = sum(t.numel() for t in p.sums.sums.values())
            m, load, entropy = p.sums.unflatten(values[i : i + n])
            i += n
            if self.routing_ema is not None and load:
                self.routing_ema.update(load)
            if not p.logged:  # counted for the routing average only
                load, entropy = {}, {}
            record: dict[str, Any] = {
                "step": p.step,
                **{t.name: m[t.name] / p.counts[t.normaliser] for t in self.terms},
            }
            record.update(
                {
                    "aux_loss": aux_loss(self.cfg.model, record),
                    "grad_norm": values[len(reduced) + k],
                    "lr": p.lr,
                    "tokens": p.tokens,
                }
            )
            if entropy:  # log steps with routed layers: nats, per layer (ln E is a uniform choice of E experts)
                record["router_entropy"] = entropy
            bad = {t.name: record[t.name] for t in self.terms if t.weight and not math.isfinite(record[t.name])}
            if bad:
                raise TrainingError(
                    f"step {p.step}: "
                    + ", ".join(f"{name} is {v}" for name, v in bad.items())
                    + f"; stopping. The last good checkpoint is "
                    f"{checkpoint.latest_checkpoint(self.ckpt_dir)}"
                )
            out.append((record, p.flops, load))
        self._nonfinite = None  # read here: the next step need not carry it
        return out

    def _data_fault(self, message: str) -> TrainingError:
        return TrainingError(
            f"{message}. Training stopped before step {self.step_no + 1}; the last good checkpoint is "
            f"{checkpoint.latest_checkpoint(self.ckpt_dir)}. A run does not skip a bad shard (that "
            "would shift all later batches): rebuild it and relaunch, the run resumes exactly"
        )

    # eval on the val split ----------------------------------------------------------------------
    def eval_val(self) -> dict:
        """The val split's MLM loss and accuracy, printed and logged to eval.jsonl (rank 0)."""
        assert self.val is not None and self.logger is not None, "eval_val() needs the data and run()'s logger"
        try:
            beat = None
            if self.hang_watch is not None:
                watch, after = self.hang_watch, self.step_no
                beat = lambda: watch.arm(f"validation after step {after}")  # noqa: E731
            result = val_scores(self.model, self.val, self.rt.device, self.cfg.eval.max_batches, beat)
        except ShardError as e:  # raised on every rank together
            raise self._data_fault(str(e)) from None
        if self.rt.rank == 0:
            print(
                f"eval step {self.step_no:>6}: val loss {result['val_loss']:.4f}  val acc "
                f"{result['val_accuracy']:.3f}  "
                f"({result['val_masked']:,} masked tokens)",
                flush=True,
            )
            self.logger.eval({"step": self.step_no, **result})
        return result

    # the loop -----------------------------------------------------------------------------------
    def _watch_hangs(self) -> None:
        """Bound every later wait: the watchdog (re-armed at each step, validation batch and save) and, as its
        backstop, the process groups' own timeout (pretrain/hang_watch.py)."""
        timeout = self.cfg.parallel.collective_timeout_s
        backstop_timeouts(timeout)
        self.hang_watch = HangWatch(timeout, self.cfg.run_dir, self.rt.rank, self.rt.world)

    def _arm_save(self) -> None:
        """A save writes for as long as the disk needs, and its collectives wait for the slowest writer."""
        if self.hang_watch is not None:
            self.hang_watch.arm(f"the checkpoint of step {self.step_no}", self.cfg.parallel.startup_timeout_s)

    def _log(self, taken: list[tuple[dict, float, dict[str, list[int]]]], records: list[dict]) -> None:
        assert self.logger is not None, "set by run()"
        for record, flops, load in taken:
            self.logger.step(record, record["tokens"], flops, load)
            if self.rt.rank == 0:
                records.append(record)

    def run(self) -> list[dict]:
        """Train to ``train.steps``; returns rank 0's records of this process."""
        cfg, rt = self.cfg, self.rt
        steps = cfg.train.steps
        if rt.rank == 0:
            clear_marker(cfg.run_dir)
            moved = supersede_records(cfg.run_dir, self.step_no)
            if moved:
                print(
                    f"logs: {moved} records after step {self.step_no} (written before the relaunch) moved to "
                    f"*{SUPERSEDED_SUFFIX}"
                )
        self.logger = logger = TrainLogger(
            cfg.log,
            cfg.run_dir,
            steps,
            cfg.train.log_every,
            rank=rt.rank,
            world=rt.world,
            device=rt.device,
            start_step=self.step_no,
            config=cfg.to_dict(),
            console=console_fields(self.terms),
        )
        if self.val is not None and self.step_no == 0:
            self.eval_val()
        records: list[dict] = []
        assert self.loader is not None, "a Trainer built without data cannot run"
        batches = iter(self.loader)
        self.model.train()
        saved_at = None
        try:
            while self.step_no < steps:
                step = self.step_no + 1
                if self.hang_watch is None and step > self.start_step + 1 and rt.world > 1:
                    self._watch_hangs()  # from the end of the run's first step on
                if self.hang_watch is not None:
                    self.hang_watch.arm(f"step {step}")
                is_log = step % cfg.train.log_every == 0 or step == steps
                is_eval = self.val is not None and (step % cfg.eval.every == 0 or step == steps)
                is_save = bool(cfg.checkpoint.every) and step % cfg.checkpoint.every == 0 and step < steps
                if not self.step(batches, is_log=is_log):  # a preemption signal: stop after the last step
                    self._log(self.flush(), records)
                    # the loader handed out the refused step's micro-batches: back to this step's position
                    assert self._loader_state is not None
                    self.loader.load_state_dict(self._loader_state)
                    self._arm_save()
                    path = (saved_at == self.step_no and checkpoint.latest_checkpoint(self.ckpt_dir)) or self.save()
                    if rt.rank == 0:
                        write_marker(cfg.run_dir, self.step_no)
                    raise Preempted(self.step_no, path)
                # metrics are read (one more host sync) only where they are needed: to log them, beside an
                # evaluation, and before a checkpoint (which must not keep a non-finite step)
                if is_log or is_eval or is_save:
                    taken = self.flush()
                    if is_eval:
                        taken[-1][0].update(self.eval_val())
                    self._log(taken, records)
                if is_save:
                    self._arm_save()
                    self.save()
                    saved_at = step
                faults.kill_if("MODERNALBERT_KILL_AFTER_STEP", step)
            if self.step_no > self.start_step or not self.resumed_from:  # a finished run relaunched saves nothing
                self._arm_save()
                self.save()
            if logger.fault:  # rank 0 only: after the last step nothing else would report it
                raise TrainingError(
                    f"{logger.fault}; the final checkpoint {checkpoint.latest_checkpoint(self.ckpt_dir)} was saved"
                )
        finally:
            if self.hang_watch is not None:
                self.hang_watch.close()
                self.hang_watch = None
            logger.close()
        if rt.rank == 0:
            if cfg.parallel.compile:
                print(compile_report(cfg.model))
            print(f"done: {self.step_no} steps; checkpoint {checkpoint.latest_checkpoint(self.ckpt_dir)}")
        return records


def train(cfg: RunConfig, extra_signals: tuple = ()) -> list[dict]:
    """Run (or resume) the training; returns rank 0's metrics records of this process.

    ``extra_signals`` are treated like SIGUSR1/SIGTERM (save and stop); the submitit launcher adds its own.
    """
    watch = PreemptionWatch(extra_signals)  # first: a signal during start-up stops the run at its first step
    lock = RunLock(cfg.run_dir)
    try:
        rt = setup(cfg)
        _lock_run_dir(lock, rt)
        trainer = Trainer(cfg, rt, watch)
        trainer.resume()
        # only now: a launch that fails to resume leaves the run_dir as it was
        # every rank stops together if rank 0 could not write it
        failure = from_rank0(_write_resolved_config(cfg) if trainer.rt.rank == 0 else None)
        if failure:
            raise TrainingError(failure)
        return trainer.run()
    finally:
        lock.release()
        watch.close()


def _lock_run_dir(lock: RunLock, rt: Runtime) -> None:
    """Rank 0 takes run_dir's lock; every rank stops with one line if a live run holds it."""
    refused = None
    if rt.rank == 0:
        try:
            lock.acquire()
        except RunDirBusy as e:
            refused = str(e)
        except OSError as e:  # the first write into run_dir: a read-only or foreign-owned one ends here
            run_dir = os.path.dirname(lock.path)
            refused = write_fault(e, f"run_dir {run_dir}: cannot be written", run_dir)
        if lock.note:
            print(lock.note, flush=True)
    refused = from_rank0(refused)
    if refused:
        raise ConfigError(refused)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_init(cfg: RunConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and config.json of ``cfg.init_from`` (a native model dir); sets ``cfg.model`` to its config."""
    from model.native_format import InputError, load_native

    try:
        model, doc = load_native(cfg.init_from)
    except InputError as e:
        raise ConfigError(f"init_from: {e}") from None
    cfg.model = model.cfg
    return model.state_dict(), doc


def check_init_tokenizer(cfg: RunConfig, index: ShardIndex, doc: dict) -> None:
    """``init_from``'s tokenizer is the shards' (``data_prep.tokenizer_id``), its embedding holds their ids: a
    ``ConfigError`` (one line, every rank) otherwise. ``doc``: init_from's config.json."""
    from model.native_format import tokenizer_record

    check_same_tokenizer(
        file_tokenizer(f"init_from={cfg.init_from}", *tokenizer_record(cfg.init_from, doc)),
        shards_tokenizer(index, f"data.dir={cfg.data.dir}", cfg.data.cache_dir),
        cfg.model.vocab_size,
        ConfigError,
        note=warn if int(os.environ.get("RANK", "0")) == 0 else None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.train",
        description=__doc__,
        epilog=sections_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML config (pretrain/configs/tiny.yaml, 50m.yaml, 120m.yaml)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML: every field, defaults included, after the overrides, validated) "
        "and exit; nothing is trained, neither data.dir nor run_dir is read or written",
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.steps=100 optim.lr=1e-3")
    a = p.parse_args(argv)
    if a.print_config:
        return print_config(a.config, a.overrides)
    agreed = False  # every rank ends here the same way (not one rank's unexpected exception)
    try:
        cfg = load_config(a.config, a.overrides)
        train(cfg)
        agreed = True
    except (ConfigError, DataPrepError, TrainingError, checkpoint.CheckpointError) as e:
        # every rank meets these errors together (same inputs, or agreed through a collective): one line
        agreed = True
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        return exit_codes.USER_ERROR
    except Preempted as e:
        agreed = True
        if int(os.environ.get("RANK", "0")) == 0:
            print(str(e), file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except Exception as e:  # noqa: BLE001 - only a lost peer is handled here; anything else is re-raised
        if not _peer_lost(e):
            raise
        # another rank died (SIGKILL, OOM, a node): this rank's collective failed at once. No traceback, and
        # no teardown (the group is broken): leave now; loader workers follow when they see their parent go.
        if os.environ.get("MODERNALBERT_LAUNCHER_REPORTS") != "1":  # python -m pretrain.torchrun names the rank
            print(
                f"rank {os.environ.get('RANK', '?')}: stopped: another rank of the job died "
                f"({str(e).strip().splitlines()[0][:200]})",
                file=sys.stderr,
            )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(exit_codes.PEER_LOST)
    finally:
        teardown(agreed)
    return 0


def print_config(path: str, overrides: list[str]) -> int:
    """``--print-config``: the config as training would resolve it (validated), on stdout; exit status."""
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.USER_ERROR
    if int(os.environ.get("RANK", "0")) == 0:
        given = " ".join([path, *overrides])
        print(f"# resolved from {given} (model.vocab_size: the shards' tokenizer's, at start)")
        print(cfg.to_yaml(), end="")
    return 0


# What gloo and NCCL say when the process at the other end of a collective is gone.
_PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker crashing",
    "NCCL communicator was aborted",
    "Broken pipe",
)


def _peer_lost(e: BaseException) -> bool:
    if not dist.is_available() or not dist.is_initialized():
        return False
    if isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    return any(p in str(e) for p in _PEER_LOST)


def teardown(agreed: bool) -> None:
    """Leave the process group (if any). ``agreed``: all ranks got here together, so wait for them first.

    Ranks aborted at exit ("terminate called without an active exception", SIGABRT) in 2 of 3 launches
    of 8 gloo ranks (``benchmarks/bench_memory.py``) that left their group unsynchronised and let the
    interpreter's shutdown destroy the sharded model; 1 of 8 with a barrier first; none with the
    barrier and the model's objects (FSDP hooks hold cycles) collected here, while Python still runs
    (34 launches).
    After one rank's unexpected error the others may be stuck elsewhere, so then no barrier: this rank
    leaves at once and torchrun stops the rest. The caller drops its references to the model first.
    """
    if not dist.is_initialized():
        return
    if agreed:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


if __name__ == "__main__":
    sys.exit(main())
