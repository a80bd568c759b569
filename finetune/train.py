"""Fine-tune a pretrained ModernALBERT on labelled tasks: task LoRAs and the two LoRA-Mixer regimes.

    python -m finetune.train --model runs/quickstart/native --tasks data/finetune/sentiment --mode lora --out ft/sent
    python -m finetune.train --model M --tasks data/finetune/sentiment data/finetune/topic --mode multitask --out ft/multi
    python -m finetune.train --model M --tasks T1 T2 --mode mixer-plug --adapters ft/sent ft/topic --out ft/plug
    python -m finetune.train --model M --tasks T1 T2 --mode mixer-joint --out ft/joint

Modes:
  full         every weight trained (one task)
  lora         one LoRA adapter on --lora-targets (default attn.Wqkv,attn.Wo) + the task head (one task)
  multitask    one shared LoRA adapter + one head per task, on the tasks' mixed training sets
  mixer-plug   LoRA-Mixer regime (ii): the N adapters of earlier ``lora`` runs become N frozen attention
               experts of every block (with their runs' frozen heads); only the routers train, on a small
               mixed set (--train-per-task examples of each task)
  mixer-joint  LoRA-Mixer regime (i): N fresh experts, routers and heads trained together with hard-soft
               top-k routing and the Routing Specialization Loss (--rsl-alpha, --rsl-lambda)
MODEL is a native model directory (tools/consolidate_checkpoint.py or merge_experts.py output). Each run
writes OUT/results.json (accuracy and macro-F1 per task; for the mixers also routing entropy and the
share of routed tokens per expert, per task), OUT/heads.safetensors, and for lora/multitask the adapter in
PEFT format (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: the repository root first (else `model` is finetune/model.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from data_prep.tokenizer import Tokenizer
from finetune.data import DataError, Task, batches, load_task
from finetune.model import TaskClassifier, add_lora, save_adapter
from model.config import AttnExpertsConfig
from model.lora_mixer import AdapterError, freeze_all_but_routers, load_peft_adapters
from model.losses import combine_losses
from model.routing import RoutingRecorder
from model.native_format import InputError, load_native

MODES = ("full", "lora", "multitask", "mixer-plug", "mixer-joint")


def macro_f1(pred: list[int], gold: list[int], n: int) -> float:
    f1s = []
    for c in range(n):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / n


@torch.no_grad()
def evaluate(clf: TaskClassifier, tasks: list[Task], batch_size: int) -> dict:
    clf.eval()
    out = {}
    for t, task in enumerate(tasks):
        pred, gold = [], []
        load = None
        entropy, n_calls = 0.0, 0
        for b in batches([(ids, lab, t) for ids, lab in task.test], batch_size, False, 0):
            recorder = RoutingRecorder()
            logits = clf(b["input_ids"], b["cu_seqlens"], b["max_seqlen"], b["task_ids"], recorder)
            pred += [int(x.argmax()) for x in logits]
            gold += b["labels"].tolist()
            for name, st in recorder.stats.items():
                if name.endswith(".attn"):
                    c = st["tokens_per_expert"].double()
                    load = c if load is None else load + c
                    entropy += float(st["router_entropy"])
                    n_calls += 1
        acc = sum(p == g for p, g in zip(pred, gold)) / len(gold)
        res = {"accuracy": acc, "macro_f1": macro_f1(pred, gold, len(task.labels)), "test_examples": len(gold)}
        if load is not None:
            res["expert_share"] = [round(float(x), 4) for x in load / load.sum()]
            res["router_entropy"] = entropy / n_calls
        out[task.name] = res
    clf.train()
    return out


def build(model_dir: str, tasks: list[Task], mode: str, a: argparse.Namespace) -> TaskClassifier:
    native, doc = load_native(model_dir)
    cfg = native.cfg
    n_exp = len(a.adapters) if mode == "mixer-plug" else len(tasks)
    if mode.startswith("mixer"):
        cfg = dataclasses.replace(cfg, attn_experts=AttnExpertsConfig(
            groups=tuple(range(cfg.num_groups)), num_experts=n_exp, top_k=min(a.top_k, n_exp), rank=a.lora_rank,
            alpha=a.lora_alpha, routing="hardsoft", rsl_alpha=a.rsl_alpha, rsl_lambda=a.rsl_lambda)).validate()
    clf = TaskClassifier(cfg, {t.name: len(t.labels) for t in tasks}, a.pooling)
    encoder = {k[len("model."):]: v for k, v in native.state_dict().items() if k.startswith("model.")}
    missing, unexpected = clf.model.load_state_dict(encoder, strict=False)
    if unexpected or any(not (k.endswith(("lora_A", "lora_B", "lora_scale")) or "attn.router" in k) for k in missing):
        raise InputError(f"{model_dir}: encoder keys do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if mode in ("lora", "multitask"):
        add_lora(clf, tuple(a.lora_targets.split(",")), a.lora_rank, a.lora_alpha)
    return clf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="native model directory")
    p.add_argument("--tasks", nargs="+", required=True, help="task directories (train/test .jsonl/.csv/.tsv)")
    p.add_argument("--mode", choices=MODES, default="lora")
    p.add_argument("--out", required=True)
    p.add_argument("--adapters", nargs="*", default=[], help="mixer-plug: lora run dirs, one per task, in --tasks order")
    p.add_argument("--text-columns", default="text", help="one or two comma-separated columns (a pair)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--max-train", type=int, default=0, help="training examples per task (0: all)")
    p.add_argument("--train-per-task", type=int, default=1000, help="mixer-plug: router training examples per task")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 full, 2e-3 otherwise")
    p.add_argument("--lora-targets", default="attn.Wqkv,attn.Wo")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--top-k", type=int, default=1, help="mixers: experts per token")
    p.add_argument("--rsl-alpha", type=float, default=0.01)
    p.add_argument("--rsl-lambda", type=float, default=0.01, help="> 0 sharpens each token's routing")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.time()
    try:
        doc = load_native(a.model)[1]
        tok = Tokenizer(os.path.join(a.model, doc["tokenizer"]))
        cols = tuple(a.text_columns.split(","))
        tasks = [load_task(d, tok, cols, a.label_column, a.max_len, a.max_train) for d in a.tasks]
        if a.mode in ("full", "lora") and len(tasks) != 1:
            raise DataError(f"--mode {a.mode} takes one task (got {len(tasks)}); use multitask or a mixer")
        if a.mode == "mixer-plug" and len(a.adapters) != len(tasks):
            raise DataError(f"--mode mixer-plug: {len(tasks)} tasks need {len(tasks)} --adapters (got {len(a.adapters)})")
        clf = build(a.model, tasks, a.mode, a)
        if a.mode == "mixer-plug":
            load_peft_adapters(clf, [os.path.join(d, "adapter") for d in a.adapters])
            from safetensors.torch import load_file

            for task, d in zip(tasks, a.adapters):  # each task keeps the head trained with its adapter
                heads = load_file(os.path.join(d, "heads.safetensors"))
                clf.heads[task.name].load_state_dict({k.split(".", 1)[1]: v for k, v in heads.items()
                                                      if k.startswith(task.name + ".")})
            trainable = freeze_all_but_routers(clf)
        elif a.mode == "full":
            trainable = [n for n, _ in clf.named_parameters()]
        else:
            for n, prm in clf.named_parameters():
                prm.requires_grad_(n.startswith("heads.") or "lora_" in n or "attn.router" in n)
            trainable = [n for n, prm in clf.named_parameters() if prm.requires_grad]
    except (InputError, DataError, AdapterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train = [(ids, lab, t) for t, task in enumerate(tasks)
             for ids, lab in (task.train[: a.train_per_task] if a.mode == "mixer-plug" else task.train)]
    params = [prm for prm in clf.parameters() if prm.requires_grad]
    lr = a.lr or (2e-4 if a.mode == "full" else 2e-3)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = a.epochs * -(-len(train) // a.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    frozen_before = {n: prm.detach().clone() for n, prm in clf.named_parameters() if not prm.requires_grad}
    print(f"{a.mode}: {len(train)} training examples, {sum(x.numel() for x in params):,} trainable parameters "
          f"({len(trainable)} tensors), {a.epochs} epochs, lr {lr:g}")
    clf.train()
    step = 0
    for epoch in range(a.epochs):
        total, n = 0.0, 0
        for b in batches(train, a.batch_size, True, a.seed + epoch):
            recorder = RoutingRecorder()
            logits = clf(b["input_ids"], b["cu_seqlens"], b["max_seqlen"], b["task_ids"], recorder)
            task_loss = torch.stack([F.cross_entropy(lg[None], lab[None]) for lg, lab in zip(logits, b["labels"])]).mean()
            loss = combine_losses(clf.cfg, task_loss, recorder.close().aux_losses)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total, n, step = total + float(loss.detach()), n + 1, step + 1
        print(f"  epoch {epoch + 1}/{a.epochs}: train loss {total / n:.4f}")
    results = evaluate(clf, tasks, a.batch_size)
    changed = [n for n, v in frozen_before.items() if not torch.equal(v, dict(clf.named_parameters())[n])]
    summary = {"mode": a.mode, "model": os.path.abspath(a.model), "tasks": {t.name: t.labels for t in tasks},
               "train_examples": len(train), "trainable_parameters": sum(x.numel() for x in params),
               "frozen_tensors_changed": changed, "seconds": round(time.time() - t0, 1), "results": results,
               "args": vars(a)}
    os.makedirs(a.out, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clf.heads.state_dict().items()}, os.path.join(a.out, "heads.safetensors"))
    if a.mode in ("lora", "multitask"):
        save_adapter(clf, os.path.join(a.out, "adapter"))
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    for name, r in results.items():
        extra = (f"  router entropy {r['router_entropy']:.3f}  expert share {r['expert_share']}"
                 if "expert_share" in r else "")
        print(f"  {name}: accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
