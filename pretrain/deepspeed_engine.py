"""DeepSpeed ZeRO (stage 1–3, default 3) as the second training engine: ``engine=deepspeed``.

The model, data, losses, logging, schedule and checkpoint protocol are the FSDP2 engine's; only the
sharding, the gradient reduction and the optimizer step are DeepSpeed's:

- The DeepSpeed config is generated from the project's config (micro-batch, gradient accumulation,
  clipping, ZeRO stage, bf16 from ``parallel.precision``). A user JSON (``deepspeed.config=path``) is
  merged over it; every value it changes is printed, and changing the batch geometry (micro-batch,
  accumulation, train batch) is an error, since the training loop builds the batches. DeepSpeed's bf16
  casts the whole module, routers included (their forward upcasts to fp32, but the weights are
  bf16-rounded; the FSDP2 engine keeps them fp32).
- The optimizer is torch's AdamW (with the same parameter groups and WSD schedule), wrapped by ZeRO.
- MoL runs as the project's own layer under ZeRO-3 (DeepSpeed's MoE refuses ZeRO-3); expert
  parallelism is not available with this engine. A shared block applied G times is gathered by
  ZeRO-3's hooks at each application.
- ZeRO-3 gathers a module's parameters around that module's own forward. The MLM decoder uses the
  embedding's weights outside the embedding module (the tied, factorised decoder), so they are
  registered as external parameters of the root module.
- Checkpoints: ``engine.save_checkpoint`` into the temp dir of ``pretrain/checkpoint.py`` (renamed when
  complete, ``latest``, keep-k), plus trainer.json and per-rank RNG. They resume on the same number
  of ranks (ZeRO partitions are per rank); ``tools/consolidate_checkpoint.py`` reads them.
"""

from __future__ import annotations

import json
import os

import torch

from config_check import ConfigError
from model.modernalbert import ModernAlbertForMaskedLM
from pretrain import checkpoint
from pretrain.config import DeepSpeedConfig

# the training loop builds the batches: these must stay as generated
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def _merge(base: dict, user: dict, prefix: str, changes: list[str]) -> dict:
    out = dict(base)
    for k, v in user.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            out[k] = _merge(base[k], v, name + ".", changes)
        else:
            if k in base and base[k] != v:
                changes.append(f"{name}: {base[k]!r} -> {v!r}")
            out[k] = v
    return out


def build_config(
    ds: DeepSpeedConfig, micro_batch: int, accum: int, world: int, grad_clip: float, bf16: bool
) -> tuple[dict, list[str]]:
    """The generated DeepSpeed config with the user's JSON merged over it, and the list of changes."""
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro_batch * accum * world,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, wrapped by ZeRO
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    changes: list[str] = []
    if ds.config:
        with open(ds.config, encoding="utf-8") as f:
            try:
                user = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"deepspeed.config={ds.config!r}: not JSON ({e})") from None
        cfg = _merge(cfg, user, "", changes)
        bad = [c for c in changes if c.split(":")[0] in BATCH_KEYS]
        if bad:
            raise ConfigError(
                f"deepspeed.config={ds.config!r} changes the batch geometry ({'; '.join(bad)}); "
                "set train.micro_batch_size / train.global_batch_tokens instead"
            )
    return cfg, changes


class DeepSpeedEngine:
    """``pretrain/engine.py: Engine`` on top of ``deepspeed.initialize``."""

    def __init__(self, model: ModernAlbertForMaskedLM, optimizer: torch.optim.Optimizer, ds_config: dict) -> None:
        import deepspeed

        if not torch.cuda.is_available():
            _skip_cpu_shm_op()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.module = model
        if ds_config["zero_optimization"]["stage"] == 3:
            emb = model.model.embeddings
            for p in (emb.proj.weight, emb.tok_embeddings.weight):
                deepspeed.zero.register_external_parameter(model, p)

    def __call__(self, **inputs):
        return self.engine(**inputs)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: every parameter gathered (ZeRO-3 partitions joined), as CPU fp32 copies."""
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # the loss is already the micro-batch's share of the global mean: no 1/accumulation here
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last:
            self.engine.step()  # bookkeeping only: DeepSpeed updates at the accumulation boundary

    def step(self) -> torch.Tensor:
        """The update (after the last micro-batch's backward): clipping, optimizer, zero grads. The norm is
        DeepSpeed's (a host number already: ``get_global_grad_norm`` reads it), as the engines' 0-d tensor."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.tensor(float(norm) if norm is not None else float("nan"), dtype=torch.float64)

    def save(self, ckpt_dir: str, step: int, trainer_state: dict, keep: int) -> str:
        def write(tmp: str) -> None:
            self.engine.save_checkpoint(os.path.dirname(tmp), tag=os.path.basename(tmp), save_latest=False)

        return checkpoint.save_with(ckpt_dir, step, write, trainer_state, keep)

    def load(self, path: str, world: int) -> dict:
        state = checkpoint.read_trainer_state(path)
        saved = state.get("world_size")
        if state.get("engine") != "deepspeed":
            raise ConfigError(
                f"engine=deepspeed: {path} was written by engine={state.get('engine', 'fsdp2')!r}; "
                "resume it with that engine"
            )
        if saved != world:
            raise ConfigError(
                f"engine=deepspeed: {path} holds ZeRO partitions of {saved} ranks; resume it on "
                f"{saved} ranks (this run has {world})"
            )

        def read(p: str) -> None:
            load_path, _ = self.engine.load_checkpoint(
                os.path.dirname(p), tag=os.path.basename(p), load_optimizer_states=True, load_lr_scheduler_states=False
            )
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load {p}")

        return checkpoint.load_with(path, read)


def _skip_cpu_shm_op() -> None:
    """Keep DeepSpeed from JIT-building its CPU shared-memory all-reduce op.

    The op only speeds up DeepSpeed's inference all-reduce; training with gloo does not use it. Building
    it costs ~30 s on every fresh machine. (A CI run once aborted, "terminate called without an active
    exception", in a process that had built it; that abort turned out to come from leaving the gloo group
    before the peers, see ``pretrain.train.teardown``.) DeepSpeed has no setting for this, so its op-compatibility
    table is edited (``deepspeed.ops.__compatible_ops__``, read by ``deepspeed.comm.torch.build_shm_op``).
    """
    import deepspeed.ops

    table = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(table, dict):
        table["deepspeed_shm_comm"] = False


def is_deepspeed_checkpoint(step_dir: str) -> bool:
    return any(n.endswith("model_states.pt") for n in os.listdir(step_dir))


def read_deepspeed_weights(step_dir: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a ZeRO checkpoint, without a process group (DeepSpeed's zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(step_dir), tag=os.path.basename(step_dir))
    return {k: v.float().contiguous() for k, v in sd.items()}
