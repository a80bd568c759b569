"""Pretrain ModernALBERT: ``python -m pretrain.train --config pretrain/configs/tiny.yaml [key=value …]``.

One process, or several under ``torchrun`` (gloo on CPU, NCCL on GPU; FSDP2 data parallel). The global
batch (train.global_batch_tokens) is split into micro-batches of train.micro_batch_size samples per
rank; the MLM loss is the mean over every masked token of the global batch, so any number of ranks ×
micro-batches with the same global batch gives the same step. Checkpoints resume exactly (model,
optimizer, schedule, data cursor, RNG). Writes run_dir/config.yaml, run_dir/metrics.jsonl and
run_dir/checkpoints/.

Parallelism: FSDP2 over all ranks, plus expert parallelism (parallel.ep), activation checkpointing
and torch.compile (pretrain/parallelize.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist

from data_prep.errors import DataPrepError
from data_prep.shards import ShardIndex
from model.config import ConfigError
from model.flops import count_flops
from model.modernalbert import ModernAlbertForMaskedLM, model_inputs
from pretrain import checkpoint, faults
from pretrain.config import RunConfig, load_config
from pretrain.data import LoaderConfig, PretrainLoader
from pretrain.distill import Teacher, hidden_cosine_sum, kl_sum
from pretrain.evaluate import evaluate, val_loader
from pretrain.logger import TrainLogger
from pretrain.fsdp_engine import FSDPEngine
from pretrain.parallelize import parallelize
from pretrain.preemption import REQUEUE_EXIT_CODE, Preempted, PreemptionWatch, clear_marker, write_marker
from pretrain.schedule import wsd_factor


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is intact."""


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and routers (1-D or routing parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("router.weight") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _write_resolved_config(cfg: RunConfig) -> None:
    import yaml

    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), f, sort_keys=False)


def train(cfg: RunConfig, extra_signals: tuple = ()) -> list[dict]:
    """Run (or resume) the training; returns rank 0's metrics records of this process.

    ``extra_signals`` are treated like SIGUSR1/SIGTERM (save and stop); the submitit launcher adds its own.
    """
    index = ShardIndex.load(cfg.data.dir)  # a missing data dir fails here, before any process-group work
    init_state = None
    if cfg.init_from:
        init_state = _read_init(cfg)  # its model config replaces cfg.model
        if cfg.model.vocab_size != index.vocab_size:
            raise ConfigError(f"init_from={cfg.init_from!r}: vocabulary {cfg.model.vocab_size} differs from the shards' "
                              f"{index.vocab_size} ({cfg.data.dir}); build them with the same tokenizer")
    elif cfg.model.vocab_size != index.vocab_size:
        cfg.model.vocab_size = index.vocab_size  # the data's tokenizer decides
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env % cfg.parallel.ep:
        raise ConfigError(f"parallel.ep={cfg.parallel.ep}: must divide the number of processes ({world_env})")
    deepspeed = cfg.engine == "deepspeed"
    distributed = world_env > 1 or deepspeed  # DeepSpeed needs a process group even for one process
    if deepspeed and world_env == 1:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    accum = cfg.accumulation_steps(index.seq_len, world)
    if rank == 0:
        _write_resolved_config(cfg)
        print(f"config: {json.dumps(cfg.to_dict())}")

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    model = ModernAlbertForMaskedLM(cfg.model)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
        if rank == 0:
            print(f"initialised from {cfg.init_from}")
    model = model.to(device)
    teacher = (Teacher(cfg.distill, cfg.model, index.seq_len, device, verbose=rank == 0)
               if cfg.distill.teacher else None)
    try:
        model, par = parallelize(model, device, ep=cfg.parallel.ep, compile=cfg.parallel.compile,
                                 activation_checkpointing=cfg.parallel.activation_checkpointing, fsdp=not deepspeed)
    except ValueError as e:  # e.g. parallel.ep does not divide the number of processes
        raise ConfigError(str(e)) from None
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: wsd_factor(s, cfg.train.steps, cfg.schedule))
    if deepspeed:
        from pretrain.deepspeed_engine import DeepSpeedEngine, build_config

        ds_config, changes = build_config(cfg.deepspeed, cfg.train.micro_batch_size, accum, world,
                                          cfg.optim.grad_clip, device.type == "cuda")
        if rank == 0:
            for c in changes:
                print(f"deepspeed config: {c} (from {cfg.deepspeed.config})")
        engine = DeepSpeedEngine(model, optimizer, ds_config)
    else:
        engine = FSDPEngine(model, par, optimizer, cfg.optim.grad_clip)
    loader = PretrainLoader(LoaderConfig(cfg.data.dir, cfg.train.micro_batch_size, seed=cfg.data.seed,
                                         num_workers=cfg.data.num_workers, mlm=cfg.data.mlm,
                                         pin_memory=device.type == "cuda"), rank, world)

    ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
    step = start_step = 0
    latest = checkpoint.latest_checkpoint(ckpt_dir) if cfg.checkpoint.resume else None
    if latest:
        state = engine.load(latest, world)
        step = start_step = state["step"]
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        if rank == 0:
            print(f"resumed from {latest} at step {step}")

    def save() -> str:
        return engine.save(ckpt_dir, step, {"scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                                            "config": cfg.to_dict(), "engine": cfg.engine, "world_size": world},
                           cfg.checkpoint.keep)

    preemption = PreemptionWatch(extra_signals)
    if rank == 0:
        clear_marker(cfg.run_dir)
    logger = TrainLogger(cfg.log, cfg.run_dir, cfg.train.steps, cfg.train.log_every, rank=rank, world=world,
                         device=device, start_step=step, config=cfg.to_dict())
    val = (val_loader(cfg.data.dir, cfg.eval.micro_batch_size or cfg.train.micro_batch_size, cfg.data.mlm, rank, world)
           if cfg.eval.every else None)

    def validate() -> dict:
        result = evaluate(model, val, device, cfg.eval.max_batches)
        if rank == 0:
            print(f"eval step {step:>6}: val loss {result['val_loss']:.4f}  val acc {result['val_accuracy']:.3f}  "
                  f"({result['val_masked']:,} masked tokens)", flush=True)
            with open(os.path.join(cfg.run_dir, "eval.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **result}) + "\n")
        return result

    if val is not None and step == 0:
        validate()
    records: list[dict] = []
    batches = iter(loader)
    model.train()
    try:
        while step < cfg.train.steps:
            micro = [next(batches) for _ in range(accum)]
            # the loss is a mean over every masked token of the global batch: count them first
            counts = torch.tensor([sum(len(b["mlm_labels"]) for b in micro), sum(b["num_tokens"] for b in micro)],
                                  dtype=torch.float64)
            global_masked, global_tokens = _all_reduce_sum(counts).tolist()
            # CE sum, correct predictions, aux sum, micro-batches, FLOPs, distill hidden sum, distill KL sum
            sums = torch.zeros(7, dtype=torch.float64)
            aux_parts: dict[str, float] = {}
            load = ExpertLoad()
            for i, b in enumerate(micro):
                inputs = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
                          for k, v in model_inputs(b).items()}
                out = engine(**inputs, output_hidden_states=teacher is not None)
                n = out.num_masked
                aux = out.loss - out.mlm_loss
                # FSDP averages gradients over ranks: scale by world so the average is the global mean
                total = out.mlm_loss * (n * world / global_masked) + aux / accum
                hid = kl = torch.zeros(())
                if teacher is not None:
                    t_hidden, t_logits = teacher.run(inputs["input_ids"], inputs["cu_seqlens"], inputs["mlm_positions"])
                    hid = hidden_cosine_sum(out.hidden_states, t_hidden)
                    total = total + cfg.distill.hidden_weight * hid * (world / global_tokens)
                    if t_logits is not None:
                        kl = kl_sum(out.logits, t_logits, cfg.distill.temperature)
                        total = total + cfg.distill.kl_weight * kl * (world / global_masked)
                engine.backward(total, last=i == accum - 1)
                lens = (b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).tolist()
                sums += torch.tensor([out.mlm_loss.item() * n, out.mlm_accuracy.item() * n, aux.item(), 1.0,
                                      count_flops(model.cfg, lens, n).training, hid.item(), kl.item()],
                                     dtype=torch.float64)
                for name, value in out.aux_losses.items():
                    aux_parts[name] = aux_parts.get(name, 0.0) + float(value.detach()) / accum
                load.add(model.routing_stats())
            ce_sum, correct, aux_sum, n_micro, flops, hid_sum, kl_sum_ = _all_reduce_sum(sums).tolist()
            loss = float("nan") if faults.nan_at(step + 1) else ce_sum / global_masked
            if not math.isfinite(loss) or not math.isfinite(aux_sum):
                raise TrainingError(f"step {step + 1}: loss is {loss} (aux {aux_sum}); stopping. The last good "
                                    f"checkpoint is {checkpoint.latest_checkpoint(ckpt_dir)}")
            grad_norm = engine.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1

            # this rank's aux terms (the loss uses each rank's own); the total is averaged over ranks
            record = {"step": step, "loss": loss, "mlm_accuracy": correct / global_masked,
                      "aux_loss": aux_sum / n_micro, **{f"aux/{k}": v for k, v in aux_parts.items()},
                      "grad_norm": grad_norm, "lr": lr, "tokens": int(global_tokens)}
            if teacher is not None:
                record["distill/hidden"] = hid_sum / global_tokens
                if teacher.kl_on:
                    record["distill/kl"] = kl_sum_ / global_masked
            if val is not None and (step % cfg.eval.every == 0 or step == cfg.train.steps):
                record.update(validate())
            is_log = step % cfg.train.log_every == 0 or step == cfg.train.steps
            logger.step(record, int(global_tokens), flops, load.reduced() if is_log else {})
            if rank == 0:
                records.append(record)
            saved_now = bool(cfg.checkpoint.every) and step % cfg.checkpoint.every == 0 and step < cfg.train.steps
            if saved_now:
                save()
            faults.kill_if("MODERNALBERT_KILL_AFTER_STEP", step)
            if preemption.agreed() and step < cfg.train.steps:  # every rank stops after this same step
                path = checkpoint.latest_checkpoint(ckpt_dir) if saved_now else save()
                if rank == 0:
                    write_marker(cfg.run_dir, step)
                raise Preempted(step, path)
        if step > start_step or not latest:  # a finished run that is relaunched saves nothing new
            save()
    finally:
        logger.close()
    if rank == 0:
        print(f"done: {step} steps; checkpoint {checkpoint.latest_checkpoint(ckpt_dir)}")
    return records


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_init(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The weights of ``cfg.init_from`` (a native model dir); sets ``cfg.model`` to its config."""
    from tools.native_format import ToolError, load_native

    try:
        model, doc = load_native(cfg.init_from)
    except ToolError as e:
        raise ConfigError(f"init_from: {e}") from None
    cfg.model = model.cfg
    return model.state_dict()


class ExpertLoad:
    """Tokens routed to each expert, per routed layer, summed over micro-batches and (on log steps) ranks."""

    def __init__(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, stats: dict[str, dict[str, torch.Tensor]]) -> None:
        for layer, st in stats.items():
            c = st["tokens_per_expert"]
            self.counts[layer] = self.counts[layer] + c if layer in self.counts else c.clone()

    def reduced(self) -> dict[str, list[int]]:
        """Collective (every rank calls it on the same steps)."""
        if not self.counts:
            return {}
        names = list(self.counts)
        flat = _all_reduce_sum(torch.cat([self.counts[n] for n in names]).to(torch.float64).cpu())
        out, i = {}, 0
        for n in names:
            e = self.counts[n].numel()
            out[n] = [int(v) for v in flat[i:i + e].tolist()]
            i += e
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (pretrain/configs/tiny.yaml, 50m.yaml, 120m.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.steps=100 optim.lr=1e-3")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        train(cfg)
    except (ConfigError, DataPrepError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return REQUEUE_EXIT_CODE
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
