"""Fine-tune a pretrained ModernALBERT on labelled tasks: task LoRAs and the two LoRA-Mixer regimes.

    python -m finetune.train --model runs/quickstart/native --tasks data/finetune/sentiment --mode lora --out ft/sent
    python -m finetune.train --model M --tasks data/finetune/sentiment data/finetune/topic --mode multitask \\
        --out ft/multi
    python -m finetune.train --model M --tasks T1 T2 --mode mixer-plug --adapters ft/sent ft/topic --out ft/plug
    python -m finetune.train --model M --tasks T1 T2 --mode mixer-joint --out ft/joint
    python -m finetune.train --model M --glue-dir GLUE --tasks SST-2 STS-B --mode mixer-joint --out ft/glue-joint

Tasks are task directories (train/test .jsonl/.csv/.tsv; accuracy and macro-F1 on test) or, with
--glue-dir, GLUE task names (SST-2, MRPC, STS-B, RTE, CoLA, in any case, hyphen optional: GLUE's metrics on
dev and test, STS-B a regression head on targets scaled to [0, 1]). --tasks takes them comma- or
space-separated, as the GLUE runner does: --tasks SST-2,STS-B or --tasks SST-2 STS-B. --max-train takes a
seeded, label-stratified subset of each training set; --holdout F sets a seeded, stratified share F of it
aside as the only scored split (``holdout``; dev and test are never read), so a lever or hyper-parameter can
be chosen without touching a reported split.

Modes:
  full         every weight trained (one task)
  lora         one LoRA adapter on --lora-targets (default attn.Wqkv,attn.Wo) + the task head (one task)
  multitask    one shared LoRA adapter + one head per task, on the tasks' mixed training sets
  mixer-plug   LoRA-Mixer regime (ii): the N adapters of earlier ``lora`` runs become N frozen attention
               experts of every block (with their runs' frozen heads); only the routers train, on a small
               mixed set (--train-per-task examples of each task), with the task loss and the RSL
  mixer-joint  LoRA-Mixer regime (i), in the paper's stages:
                 1. domain-forced (--forced-epochs): each task's tokens go to its own expert (hard, weight
                    1); experts and heads train on the task loss, the routers learn the forced choice
                    (cross-entropy, weight --router-ce);
                 2. routed (--epochs): the routers choose (--joint-routing hardsoft|soft|topk) with the RSL,
                    plus the expert-preservation loss (weight --preserve): each expert's ΔW_j = s·B_j·A_j
                    kept near what stage 1 made of it, ‖ΔW_j − ΔW_j⁰‖² / ‖ΔW_j⁰‖² averaged over experts
                    and projections (--preserve-over chosen: only the experts routed to in the batch);
                 inference routes top-K (--top-k).
--router-ce-routed W keeps supervising the routers while they route (mixer-joint's routed stage and
mixer-plug): cross-entropy to each task's own expert, weight W. Not in the paper; off by default.
Routing Specialization Loss: α·balance − λ·H (--rsl-alpha, --rsl-lambda; --rsl-entropy minimise for
+λ·H, which sharpens). --route shared|per_projection: one router per block for Wqkv and Wo, or Wo
routed on the attention output by its own router.

MODEL is a native model directory (tools/consolidate_checkpoint.py or merge_experts.py output). Each run
writes OUT/results.json (per task and split the metrics and the task score; for the mixers the share of
routed tokens per expert for each task, overall and per layer, the routing matrix, the shares' moving average
over the routed training steps per projection (``expert_share_ema``), and each stage's log),
OUT/predictions.json (gold and predicted labels per task and split, for ``python -m evaluation.compare``),
OUT/heads.safetensors,
for lora/multitask the adapter in PEFT format (adapter_config.json + adapter_model.safetensors), and for the
mixers OUT/mixer/, the routed encoder as a native model directory: ``python tools/merge_mixer.py OUT --task T
--out DIR`` makes task T's classifier of it (routed, or with the experts folded into the projections).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time

if __package__ in (
    None,
    "",
):  # run as a script: drop finetune/ from sys.path, or its model.py shadows the model package
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np
import torch

from data_prep.glue_data import TASKS, TASKS_SYNTAX, GlueDataError, split_tasks, task_names
from data_prep.tokenizer import Tokenizer
from data_prep.tokenizer_id import shipped_tokenizer
from scoring.metrics import task_metrics, task_score
from scoring.predictions import task_record
from finetune.data import DataError, Task, varlen_batches, load_glue_task, load_task, with_holdout
from finetune.model import TaskClassifier, add_block_lora, save_adapter, save_mixer
from finetune.loop import FitConfig, fit, steps_per_epoch
from finetune.routing import RoutingShareEMA, attn_stats, chosen_experts
from model.classification import classification_loss
from model.config import RSL_ENTROPY, ROUTE_INPUTS, ROUTING_MODES, AttnExpertsConfig
from model.lora_mixer import AdapterError, MixtureLinear, freeze_all_but_routers, load_peft_adapters
from model.losses import combine_losses
from model.modernalbert import ModernAlbertForMaskedLM
from model.native_format import InputError, load_native, tokenizer_record
from model.routing import RoutingRecorder
from config_check import flag_check

MODES = ("full", "lora", "multitask", "mixer-plug", "mixer-joint")


def task_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each example's own loss (tasks differ in their number of outputs)."""
    return torch.stack([classification_loss(lg[None], lab[None]) for lg, lab in zip(logits, labels)]).mean()


@torch.no_grad()
def score_tasks(clf: TaskClassifier, tasks: list[Task], batch_size: int) -> tuple[dict, dict]:
    """Per task: {split: metrics + score}; for a mixer also, on the task's report split, the routed-token share
    per expert (all routed applications together, and per application: ``expert_share_per_layer``) and the
    mean router entropy. Second: the predictions per task and split (class ids or regression values)."""
    clf.eval()
    out, preds = {}, {}
    for t, task in enumerate(tasks):
        res, preds[task.name] = {}, {}
        for split, examples in task.evals.items():
            scores, entropy, n_calls = [], 0.0, 0
            per_layer: dict[str, torch.Tensor] = {}  # routed application -> tokens per expert
            for b in varlen_batches([(ids, lab, t) for ids, lab in examples], batch_size, False, 0):
                recorder = RoutingRecorder()
                logits = clf(b["input_ids"], b["cu_seqlens"], b["max_seqlen"], b["task_ids"], recorder)
                scores += [lg.float().numpy() for lg in logits]
                for name, st in recorder.stats.items():
                    if ".attn" in name:  # attn_stats' applications, by name
                        cnt = st["tokens_per_expert"].double()
                        per_layer[name] = per_layer[name] + cnt if name in per_layer else cnt
                        entropy, n_calls = entropy + float(st["router_entropy"]), n_calls + 1
            pred = np.stack(scores)
            pred = pred[:, 0] if task.is_regression else pred
            m = task_metrics(task.metrics, pred, np.array([lab for _, lab in examples]))
            res[split] = {**m, "score": task_score(m, task.main), "examples": len(examples)}
            preds[task.name][split] = pred if task.is_regression else pred.argmax(-1)
            if per_layer and split == task.report:
                load = torch.stack(list(per_layer.values())).sum(0)  # every routed application together
                res["expert_share"] = [round(float(x), 4) for x in load / load.sum()]
                res["expert_share_per_layer"] = {
                    name: [round(float(x), 4) for x in c / c.sum().clamp_min(1)] for name, c in per_layer.items()
                }
                res["router_entropy"] = entropy / n_calls
        out[task.name] = res
    clf.train()
    return out, preds


def prediction_record(tasks: list[Task], preds: dict, seed: int) -> dict:
    """predictions.json in ``evaluation.glue``'s layout (one seed), so ``python -m evaluation.compare`` gives
    paired differences between modes and regimes scored on the same rows (subset seed 0, as here)."""
    return {
        "subset_seed": 0,
        "tasks": {
            t.name: task_record(
                t.metrics,
                t.main,
                t.report,
                [lab for _, lab in t.train],
                t.is_regression,
                t.num_outputs,
                {split: [lab for _, lab in ex] for split, ex in t.evals.items()},
                {split: {seed: preds[t.name][split]} for split in t.evals},
            )
            for t in tasks
        },
    }


@dataclasses.dataclass(frozen=True)
class Adapters:
    """What ``build`` puts on the encoder, by ``mode``: PEFT LoRA (lora, multitask), LoRA-Mixer experts (the
    mixer modes: one per task, or one per ``--adapters`` run in mixer-plug) or nothing (full)."""

    mode: str
    pooling: str
    lora_targets: tuple[str, ...]
    lora_rank: int
    lora_alpha: float
    num_experts: int  # mixer modes
    top_k: int
    routing: str  # mixer-joint: --joint-routing; mixer-plug: hardsoft
    rsl_alpha: float
    rsl_lambda: float
    rsl_entropy: str
    route: str

    @classmethod
    def from_args(cls, a: argparse.Namespace, num_tasks: int) -> "Adapters":
        return cls(
            mode=a.mode,
            pooling=a.pooling,
            lora_targets=tuple(a.lora_targets.split(",")),
            lora_rank=a.lora_rank,
            lora_alpha=a.lora_alpha,
            num_experts=len(a.adapters) if a.mode == "mixer-plug" else num_tasks,
            top_k=a.top_k,
            routing=a.joint_routing if a.mode == "mixer-joint" else "hardsoft",
            rsl_alpha=a.rsl_alpha,
            rsl_lambda=a.rsl_lambda,
            rsl_entropy=a.rsl_entropy,
            route=a.route,
        )


def build(native: ModernAlbertForMaskedLM, model_dir: str, tasks: list[Task], a: Adapters) -> TaskClassifier:
    """The classifier on ``native``'s encoder (read from ``model_dir``, named in errors) with ``a``'s adapters."""
    cfg = native.cfg
    n_exp, mode = a.num_experts, a.mode
    if mode.startswith("mixer"):
        cfg = dataclasses.replace(
            cfg,
            attn_experts=AttnExpertsConfig(
                groups=tuple(range(cfg.num_groups)),
                num_experts=n_exp,
                top_k=min(a.top_k, n_exp),
                rank=a.lora_rank,
                alpha=a.lora_alpha,
                routing=a.routing,
                rsl_alpha=a.rsl_alpha,
                rsl_lambda=a.rsl_lambda,
                rsl_entropy=a.rsl_entropy,
                route=a.route,
                eval_routing="topk",
            ),
        ).validate()
    clf = TaskClassifier(cfg, {t.name: t.num_outputs for t in tasks}, a.pooling)
    encoder = {k[len("model.") :]: v for k, v in native.state_dict().items() if k.startswith("model.")}
    missing, unexpected = clf.model.load_state_dict(encoder, strict=False)
    if unexpected or any(not (k.endswith(("lora_A", "lora_B", "lora_scale")) or "attn.router" in k) for k in missing):
        raise InputError(f"{model_dir}: encoder keys do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if mode in ("lora", "multitask"):
        add_block_lora(clf, a.lora_targets, a.lora_rank, a.lora_alpha)
    return clf


def expert_deltas(clf: TaskClassifier) -> dict[str, torch.Tensor]:
    """ΔW_j = s_j·B_j·A_j of every attention expert, stacked per projection: name → [E, Out, In]."""
    return {
        n: torch.stack([m.expert_delta(j) for j in range(m.lora_A.shape[0])])
        for n, m in clf.named_modules()
        if isinstance(m, MixtureLinear)
    }


def preservation_loss(
    clf: TaskClassifier, anchors: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """LoRA-Mixer's expert preservation: mean over projections of (1/E)·Σ_j ‖ΔW_j − ΔW_j⁰‖² / ‖ΔW_j⁰‖², over
    every expert j, or (``chosen``: projection name → [E] bool) only over the experts its router chose for
    the batch (the paper's β·Σ_{i∈C}; divided by E, so that with every expert chosen both forms agree)."""
    terms = []
    for name, delta_EOI in expert_deltas(clf).items():
        ref = anchors[name]
        rel_E = (delta_EOI - ref).square().sum((1, 2)) / ref.square().sum((1, 2)).clamp_min(1e-12)
        if chosen is not None:
            rel_E = rel_E * chosen[name].to(rel_E.dtype)
        terms.append(rel_E.mean())
    return torch.stack(terms).mean()


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """Where the tasks come from: GLUE task names under ``glue_dir``, or task directories of files."""

    tasks: tuple[str, ...]
    glue_dir: str | None
    text_columns: tuple[str, ...]  # one, or two (a pair)
    label_column: str
    max_len: int
    max_train: int  # per task (0: all)
    max_eval: int  # GLUE: dev/test per task (0: all)
    holdout: float = 0.0  # > 0: this share of each training set is the only scored split (with_holdout)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "TaskSource":
        cols = tuple(a.text_columns.split(","))
        holdout = getattr(a, "holdout", 0.0)  # results.json of runs before --holdout existed
        return cls(tuple(a.tasks), a.glue_dir, cols, a.label_column, a.max_len, a.max_train, a.max_eval, holdout)


def load_tasks(src: TaskSource, tok: Tokenizer) -> list[Task]:
    if src.glue_dir:
        tasks = [load_glue_task(n, src.glue_dir, tok, src.max_len, src.max_train, src.max_eval) for n in src.tasks]
    else:
        tasks = [load_task(d, tok, src.text_columns, src.label_column, src.max_len, src.max_train) for d in src.tasks]
    return [with_holdout(t, src.holdout) for t in tasks] if src.holdout else tasks


@dataclasses.dataclass
class Stage:
    """One training stage (``--mode mixer-joint`` has a domain-forced one before the routed one)."""

    name: str
    epochs: int
    lr: float
    forced: bool  # domain-forced routing: one-hot by task
    seed_offset: int  # the stage's batch order: seed · 1000 + seed_offset + epoch
    routing: str | None
    route_ce: float  # weight of the routers' cross-entropy to each task's expert
    batch_size: int
    seed: int
    preserve: float = 0.0  # weight of the expert-preservation loss towards ``anchors``
    preserve_over: str = "all"  # all experts, or only those the routers chose for the batch
    anchors: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False)
    share_ema: RoutingShareEMA | None = dataclasses.field(default=None, repr=False)  # the routed stage's
    history: list[dict] = dataclasses.field(default_factory=list)

    def record(self) -> dict:
        """Its entry in results.json."""
        return {
            "name": self.name,
            "epochs": self.epochs,
            "lr": self.lr,
            "forced": self.forced,
            "seed_offset": self.seed_offset,
            "routing": self.routing,
            "route_ce": self.route_ce,
            "history": self.history,
        }


def run_stage(clf: TaskClassifier, train: list, stage: Stage, log) -> list[dict]:
    """One stage of training (``finetune/loop.py``); returns the per-epoch log."""
    params = [p for p in clf.parameters() if p.requires_grad]

    def step_loss(b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        recorder = RoutingRecorder()
        forced = targets = None
        lens = (b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).long()
        task_T = torch.repeat_interleave(b["task_ids"], lens)
        if stage.forced or stage.route_ce > 0:  # expert i belongs to task i
            forced, targets = (task_T, None) if stage.forced else (None, task_T)
        if stage.share_ema is not None:
            stage.share_ema.task_T = task_T
        logits = clf(b["input_ids"], b["cu_seqlens"], b["max_seqlen"], b["task_ids"], recorder, forced, targets)
        if stage.share_ema is not None:
            stage.share_ema.step()
        parts = {"task": task_loss(logits, b["labels"])}
        aux = dict(recorder.close().aux_losses)
        extra = []
        if "attn_route_ce" in aux:  # mean over the routed applications
            n_routed = len(attn_stats(recorder))
            parts["route_ce"] = aux.pop("attn_route_ce") / n_routed
            extra.append((parts["route_ce"], stage.route_ce))
        if "attn_rsl" in aux:
            parts["rsl"] = aux["attn_rsl"]
        if stage.anchors:
            chosen = chosen_experts(clf, recorder) if stage.preserve_over == "chosen" else None
            parts["preserve"] = preservation_loss(clf, stage.anchors, chosen)
            extra.append((parts["preserve"], stage.preserve))
        return combine_losses(clf.cfg, parts["task"], aux, extra=extra), parts

    history: list[dict] = []

    def after_epoch(e: int, means: dict[str, float]) -> None:
        row = {"epoch": e + 1, **{k: round(v, 5) for k, v in means.items()}}
        history.append(row)
        log(
            f"  [{stage.name}] epoch {e + 1}/{stage.epochs}: "
            + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        )

    with stage.share_ema.tracking() if stage.share_ema is not None else contextlib.nullcontext():
        fit(
            clf,
            params,
            FitConfig(stage.lr, stage.epochs, steps_per_epoch(len(train), stage.batch_size)),
            lambda e: varlen_batches(train, stage.batch_size, True, stage.seed * 1000 + stage.seed_offset + e),
            step_loss,
            after_epoch,
            progress=f"[{stage.name}]",
        )
    return history


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="native model directory")
    p.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        metavar="TASK",
        help=f"task directories (train/test .jsonl/.csv/.tsv), or GLUE task names with --glue-dir; {TASKS_SYNTAX}",
    )
    p.add_argument("--glue-dir", help="directory of GLUE task folders (data_prep/glue_data.py layouts)")
    p.add_argument("--mode", choices=MODES, default="lora")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--adapters", nargs="*", default=[], help="mixer-plug: lora run dirs, one per task, in --tasks order"
    )
    p.add_argument("--text-columns", default="text", help="one or two comma-separated columns (a pair)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--max-train", type=int, default=0, help="training examples per task (0: all)")
    p.add_argument("--max-eval", type=int, default=0, help="GLUE: dev/test examples per task (0: all)")
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="train on each task's training rows less this seeded, stratified share and score only that share "
        "(split 'holdout'; dev and test untouched): for choosing levers and hyper-parameters (0: off)",
    )
    p.add_argument("--train-per-task", type=int, default=1000, help="mixer-plug: router training examples per task")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (mixer-joint: of the routed stage)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 full, 2e-3 otherwise")
    p.add_argument("--lora-targets", default="attn.Wqkv,attn.Wo")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--top-k", type=int, default=1, help="mixers: experts per token (training and inference)")
    p.add_argument(
        "--share-ema-decay",
        type=float,
        default=0.99,
        help="mixers: decay per step of the routing shares' moving average over the routed stage "
        "(results.json expert_share_ema: tools/merge_mixer.py --method ema folds with it)",
    )
    p.add_argument(
        "--route",
        choices=ROUTE_INPUTS,
        default="shared",
        help="mixers: one router per block (shared) or Wo routed on its own input (per_projection)",
    )
    p.add_argument("--rsl-alpha", type=float, default=0.01, help="RSL load-balance weight")
    p.add_argument("--rsl-lambda", type=float, default=0.01, help="RSL entropy weight (>= 0)")
    p.add_argument(
        "--rsl-entropy",
        choices=RSL_ENTROPY,
        default="maximise",
        help="maximise: the paper's printed Eq. 5; minimise: sharpen each token's routing",
    )
    p.add_argument(
        "--forced-epochs", type=int, default=1, help="mixer-joint: epochs of domain-forced routing (0: skip)"
    )
    p.add_argument(
        "--router-ce",
        type=float,
        default=1.0,
        help="mixer-joint, forced stage: weight of the routers' cross-entropy to the forced expert",
    )
    p.add_argument(
        "--router-ce-routed",
        type=float,
        default=0.0,
        help="mixer-joint routed stage and mixer-plug: weight of the routers' cross-entropy to each "
        "task's own expert while they route (supervised routing; 0: off, the paper's setting)",
    )
    p.add_argument("--joint-routing", choices=ROUTING_MODES, default="hardsoft", help="mixer-joint, routed stage")
    p.add_argument(
        "--preserve",
        type=float,
        default=1.0,
        help="mixer-joint, routed stage: expert-preservation weight (0: off; needs --forced-epochs)",
    )
    p.add_argument(
        "--preserve-over",
        choices=("all", "chosen"),
        default="all",
        help="mixer-joint: preserve every expert, or only the experts the routers chose for each batch (the "
        "paper's sum over C)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def resolve_tasks(tasks: list[str], glue_dir: str | None) -> list[str]:
    """``--tasks`` as typed (comma- or space-separated) → task directories, or with ``glue_dir`` the GLUE
    tasks' names (``sst2`` → ``SST-2``). Raises ``GlueDataError`` naming what is allowed."""
    if glue_dir:
        return task_names(tasks)
    dirs = split_tasks(tasks, whole=os.path.isdir)  # a directory whose name has a comma stays whole
    for d in dirs:
        if not os.path.isdir(d):
            raise GlueDataError(
                f"--tasks {d!r}: no such task directory (a folder with train and test .jsonl/.csv/.tsv files); "
                f"GLUE tasks ({', '.join(TASKS)}) need --glue-dir ({TASKS_SYNTAX})"
            )
    return dirs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``parser()``'s arguments with ``--tasks`` resolved (``resolve_tasks``); a task that is neither stops
    here, exit 2, saying what is allowed."""
    p = parser()
    a = p.parse_args(argv)
    try:
        a.tasks = resolve_tasks(a.tasks, a.glue_dir)
    except GlueDataError as e:
        p.error(str(e))
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.time()
    try:
        arg = flag_check(a, DataError)
        for name in ("rsl_lambda", "preserve", "router_ce", "router_ce_routed"):
            arg(name, getattr(a, name) >= 0, "must be >= 0")
        arg("holdout", 0 <= a.holdout < 1, "a share: 0 (off) or strictly between 0 and 1")
        arg("share_ema_decay", 0 <= a.share_ema_decay < 1, "a decay in [0, 1)")
        base, doc = load_native(a.model)
        tok_path, recorded = tokenizer_record(a.model, doc)
        if tok_path is None:
            raise InputError(f"{a.model}: no tokenizer in the model directory")
        tok = shipped_tokenizer(a.model, tok_path, recorded, base.cfg.vocab_size, InputError)
        tasks = load_tasks(TaskSource.from_args(a), tok)
        if a.mode in ("full", "lora") and len(tasks) != 1:
            raise DataError(f"--mode {a.mode} takes one task (got {len(tasks)}); use multitask or a mixer")
        if a.mode == "mixer-plug" and len(a.adapters) != len(tasks):
            raise DataError(
                f"--mode mixer-plug: {len(tasks)} tasks need {len(tasks)} --adapters (got {len(a.adapters)})"
            )
        if a.router_ce_routed > 0 and not a.mode.startswith("mixer"):
            raise DataError(f"--router-ce-routed is for the mixer modes (got --mode {a.mode})")
        clf = build(base, a.model, tasks, Adapters.from_args(a, len(tasks)))
        # the base is read once: a mixer keeps its MLM head (the rest is in clf); the encoder copy is freed
        base_rest = {k: v for k, v in base.state_dict().items() if not k.startswith("model.")}
        del base
        if a.mode == "mixer-plug":
            load_peft_adapters(clf, [os.path.join(d, "adapter") for d in a.adapters])
            from safetensors.torch import load_file

            for task, d in zip(tasks, a.adapters):  # each task keeps the head trained with its adapter
                heads = load_file(os.path.join(d, "heads.safetensors"))
                clf.heads[task.name].load_state_dict(
                    {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith(task.name + ".")}
                )
            freeze_all_but_routers(clf)
        elif a.mode != "full":
            for n, prm in clf.named_parameters():
                prm.requires_grad_(n.startswith("heads.") or "lora_" in n or "attn.router" in n)
    except (InputError, DataError, AdapterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train = [
        (ids, lab, t)
        for t, task in enumerate(tasks)
        for ids, lab in (task.train[: a.train_per_task] if a.mode == "mixer-plug" else task.train)
    ]
    trainable = [n for n, prm in clf.named_parameters() if prm.requires_grad]
    n_trainable = sum(prm.numel() for prm in clf.parameters() if prm.requires_grad)
    lr = a.lr or (2e-4 if a.mode == "full" else 2e-3)
    frozen_before = {n: prm.detach().clone() for n, prm in clf.named_parameters() if not prm.requires_grad}
    print(
        f"{a.mode}: {len(train)} training examples, {n_trainable:,} trainable parameters "
        f"({len(trainable)} tensors), lr {lr:g}"
    )
    clf.train()
    stages = []
    if a.mode == "mixer-joint" and a.forced_epochs > 0:
        stages.append(
            Stage(
                "forced",
                a.forced_epochs,
                lr,
                True,
                0,
                "domain-forced (one-hot by task)",
                a.router_ce,
                a.batch_size,
                a.seed,
            )
        )
    mixer = a.mode.startswith("mixer")
    share_ema = RoutingShareEMA(clf, len(tasks), a.share_ema_decay) if mixer else None
    stages.append(
        Stage(
            "routed" if mixer else "train",
            a.epochs,
            lr,
            False,
            100,
            clf.cfg.attn_experts.routing if mixer else None,
            a.router_ce_routed if mixer else 0.0,
            a.batch_size,
            a.seed,
            share_ema=share_ema,
        )
    )
    for stage in stages:
        if a.mode == "mixer-joint" and not stage.forced and a.preserve > 0 and len(stages) > 1:
            with torch.no_grad():
                stage.anchors = {k: v.detach().clone() for k, v in expert_deltas(clf).items()}
            stage.preserve, stage.preserve_over = a.preserve, a.preserve_over
        print(f"stage {stage.name}: {stage.epochs} epochs, routing {stage.routing}")
        stage.history = run_stage(clf, train, stage, print)
        stage.anchors = None
    results, preds = score_tasks(clf, tasks, a.batch_size)
    if share_ema is not None:  # merge weights from training alone (tools/merge_mixer.py --method ema)
        for i, t in enumerate(tasks):
            results[t.name]["expert_share_ema"] = share_ema.projection_shares(i)
    changed = [n for n, v in frozen_before.items() if not torch.equal(v, dict(clf.named_parameters())[n])]
    summary = {
        "mode": a.mode,
        "model": os.path.abspath(a.model),
        "tasks": {t.name: {"labels": t.labels, "metrics": list(t.metrics), "report": t.report} for t in tasks},
        "train_examples": len(train),
        "trainable_parameters": n_trainable,
        "frozen_tensors_changed": changed,
        "seconds": round(time.time() - t0, 1),
        "results": results,
        "stages": [s.record() for s in stages],
        "args": vars(a),
    }
    if a.mode.startswith("mixer"):
        summary["routing_matrix"] = [results[t.name]["expert_share"] for t in tasks]  # rows: tasks, cols: experts
    os.makedirs(a.out, exist_ok=True)
    from model.native_format import save_safetensors

    save_safetensors(
        {k: v.contiguous() for k, v in clf.heads.state_dict().items()}, os.path.join(a.out, "heads.safetensors")
    )
    if a.mode in ("lora", "multitask"):
        save_adapter(clf, os.path.join(a.out, "adapter"))
    if mixer:  # the trained mixer itself: tools/merge_mixer.py makes a task's classifier of it
        history = {"tool": "finetune.train", "mode": a.mode, "tasks": [t.name for t in tasks], "seed": a.seed}
        save_mixer(clf, base_rest, doc, a.model, os.path.join(a.out, "mixer"), history)
    with open(os.path.join(a.out, "predictions.json"), "w", encoding="utf-8") as f:
        json.dump(prediction_record(tasks, preds, a.seed), f, separators=(",", ":"))
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    for t in tasks:
        r = results[t.name]
        line = "  ".join(
            f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "examples")
            for split, m in r.items()
            if split in t.evals
        )
        extra = (
            f"  router entropy {r['router_entropy']:.3f}  expert share {r['expert_share']}"
            if "expert_share" in r
            else ""
        )
        print(f"  {t.name}: {line}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
