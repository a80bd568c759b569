"""Make one task's classifier of a LoRA-Mixer run: routed as trained, or with its experts folded in.

    python tools/merge_mixer.py ft/joint --task SST-2 --out ft/joint-sst2               # training's shares
    python tools/merge_mixer.py ft/joint --task SST-2 --method routing --out DIR        # report split's
    python tools/merge_mixer.py ft/joint --task SST-2 --method uniform --out DIR
    python tools/merge_mixer.py ft/joint --task SST-2 --method routed --out DIR         # no merge, exact

RUN is the output of ``python -m finetune.train --mode mixer-joint`` or ``--mode mixer-plug``: RUN/mixer/ (the
routed encoder, a native model directory), RUN/heads.safetensors and RUN/results.json. Methods:
  ema      (default) every routed projection gets its experts folded in, W' = W + Σ_j p_j·s_j·B_j·A_j, with
           p_j the share of the task's tokens its router sent to expert j, as a moving average over the
           routed training steps (results.json ``expert_share_ema``; a shared block's G applications pooled,
           Wo by its own router under per_projection routing): the weights come from training alone. No
           router is left: a plain encoder, exportable by ``tools/convert_to_hf.py`` in any format.
  routing  the same with p measured on the task's report split (``expert_share_per_layer``; its inputs, not its
           labels: a choice that has seen the reported split's text; the only one for runs before 2026-12-07)
  uniform  the same with p_j = 1/E.
  routed   no merge: the experts and routers kept; the mixer exactly, with the task's head.
The output is a native classifier directory (encoder + the task's head, as ``python -m evaluation.glue
--save-model`` writes; ``model.native_format.load_native_classifier``). A fold is exact only where every
token's routing weights equal p, so the task's splits are scored again with the routed mixer and with the
result, and both go to OUT/merge_report.json, the result's predictions to OUT/predictions.json (for
``python -m evaluation.compare`` against the run's own); ``--no-eval`` skips this (it reads the run's task data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from fileio import OutputDir
from finetune.routing import block_key, projection_applications
from model.classification import ClassifierConfig
from model.config import AttnExpertsConfig, ModelConfig
from model.lora_mixer import MixtureLinear
from model.native_format import (
    InputError,
    copy_sentence_files,
    load_native,
    read_json,
    save_native,
    tokenizer_record,
)

METHODS = ("ema", "routing", "uniform", "routed")


def projection_shares(name: str, cfg: ModelConfig, per_layer: dict[str, list[float]]) -> torch.Tensor:
    """The routing share p [E] of projection ``name`` (``...groups.G.block.attn.Wqkv|Wo``): the mean over
    its block's G applications of the share each expert got of the task's tokens."""
    apps = projection_applications(name, cfg)
    missing = [x for x in apps if x not in per_layer]
    if missing:
        raise InputError(f"results.json has no routing shares for {missing[0]} (a run before 2026-12-06?)")
    p = torch.tensor([per_layer[x] for x in apps], dtype=torch.float64).mean(0)
    return p / p.sum()


@torch.no_grad()
def fold(state: dict[str, torch.Tensor], model: torch.nn.Module, shares: dict[str, torch.Tensor]) -> None:
    """In ``state`` (``model``'s): W += Σ_j p_j·ΔW_j for each routed projection (``shares``: its name → p [E]),
    and every expert and router tensor dropped."""
    from finetune.train import expert_deltas

    for name, delta_EOI in expert_deltas(model).items():
        w = state[f"{name}.weight"].double() + (shares[name].view(-1, 1, 1) * delta_EOI.double()).sum(0)
        state[f"{name}.weight"] = w.to(state[f"{name}.weight"].dtype)
    for k in [k for k in state if ".lora_" in k or ".attn.router" in k]:
        del state[k]


def task_head(run: str, task: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    heads = load_file(os.path.join(run, "heads.safetensors"))
    return {f"classifier.{k[len(task) + 1 :]}": v for k, v in heads.items() if k.startswith(task + ".")}


def open_run(run: str) -> tuple[dict, str]:
    """results.json of a mixer run and its mixer directory; InputError naming what is missing."""
    res_path, mixer = os.path.join(run, "results.json"), os.path.join(run, "mixer")
    if not os.path.isfile(res_path):
        raise InputError(f"{run}: no results.json (the output directory of python -m finetune.train)")
    res = read_json(res_path)
    if not str(res.get("mode", "")).startswith("mixer"):
        raise InputError(f"{run}: --mode {res.get('mode')!r} run; only the mixer modes (mixer-joint, mixer-plug) route")
    if not os.path.isfile(os.path.join(mixer, "config.json")):
        raise InputError(f"{run}: no mixer/ (runs before 2026-12-07 did not save the trained mixer; rerun it)")
    return res, mixer


def score(model_cfg: ModelConfig, state: dict, head: dict, res: dict, task: str, tok) -> tuple[dict, dict]:
    """The task's splits scored by finetune.train's own scorer (its data, length and batch size): the score
    per split, and the predictions in ``predictions.json``'s layout (``evaluation.compare``)."""
    from finetune.model import TaskClassifier
    from finetune.train import TaskSource, load_tasks, prediction_record, score_tasks

    args = argparse.Namespace(**res["args"])
    i = [os.path.basename(os.path.normpath(t)) for t in args.tasks].index(task)
    src = dataclasses.replace(TaskSource.from_args(args), tasks=(args.tasks[i],))
    (t,) = load_tasks(src, tok)
    clf = TaskClassifier(model_cfg, {t.name: t.num_outputs}, args.pooling)
    clf.model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    clf.heads[t.name].load_state_dict({k[len("classifier.") :]: v for k, v in head.items()})
    out, preds = score_tasks(clf, [t], args.batch_size)
    scores = {split: r["score"] for split, r in out[t.name].items() if isinstance(r, dict) and "score" in r}
    return scores, prediction_record([t], preds, args.seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/merge_mixer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="a python -m finetune.train --mode mixer-joint|mixer-plug output directory")
    p.add_argument("--task", required=True, help="the task whose head (and routing shares) the classifier takes")
    p.add_argument("--method", choices=METHODS, default="ema", help="how the experts are weighted (above)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="do not score the task before and after")
    a = p.parse_args(argv)
    out_dir = OutputDir(a.out, a.overwrite, InputError)
    try:
        out_dir.check()  # before loading and scoring, not after
        res, mixer_dir = open_run(a.run)
        tasks = list(res["tasks"])
        if a.task not in tasks:
            raise InputError(f"--task {a.task!r}: the run's tasks are {', '.join(tasks)}")
        model, doc = load_native(mixer_dir)
        cfg = model.cfg
        mixtures = {n: m for n, m in model.named_modules() if isinstance(m, MixtureLinear)}
        state = dict(model.state_dict())
        head = task_head(a.run, a.task)
        if not head:
            raise InputError(f"{a.run}/heads.safetensors has no head for {a.task!r}")
        shares: dict[str, torch.Tensor] = {}
        if a.method != "routed":
            E = cfg.attn_experts.num_experts
            per_layer = res["results"][a.task].get("expert_share_per_layer", {})
            ema = res["results"][a.task].get("expert_share_ema")
            if a.method == "ema" and not ema:
                raise InputError(f"{a.run}: no expert_share_ema (a run before 2026-12-07): use --method routing")
            for name in mixtures:
                if a.method == "ema":
                    p_E = torch.tensor(ema[block_key(name)], dtype=torch.float64)
                    shares[name] = p_E / p_E.sum()
                elif a.method == "routing":
                    shares[name] = projection_shares(name, cfg, per_layer)
                else:
                    shares[name] = torch.full((E,), 1 / E, dtype=torch.float64)
            merged = dict(state)
            fold(merged, model, shares)
            out_cfg = dataclasses.replace(cfg, attn_experts=AttnExpertsConfig()).validate()
        else:
            merged, out_cfg = state, cfg
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = res["tasks"][a.task].get("labels") or []
    num_labels = head["classifier.out.weight"].shape[0]
    clf_cfg = ClassifierConfig(
        num_labels=num_labels,
        pooling=res["args"]["pooling"],
        labels=list(labels) if len(labels) == num_labels else [],
    )
    report: dict = {
        "run": os.path.abspath(a.run),
        "task": a.task,
        "method": a.method,
        "shares": {n: [round(float(x), 4) for x in s] for n, s in shares.items()},
    }
    tok_path, recorded = tokenizer_record(mixer_dir, doc)
    if not a.no_eval:
        from data_prep.tokenizer_id import shipped_tokenizer

        if tok_path is None:
            print(f"error: {mixer_dir}: no tokenizer to score with; --no-eval merges without it", file=sys.stderr)
            return 2
        tok = shipped_tokenizer(mixer_dir, tok_path, recorded, cfg.vocab_size, InputError)
        try:
            report["routed"], _ = score(cfg, state, head, res, a.task, tok)
            report["result"], predictions = score(out_cfg, merged, head, res, a.task, tok)
        except (OSError, ValueError) as e:
            print(f"error: scoring {a.task} ({e}); --no-eval merges without it", file=sys.stderr)
            return 2
        for split, before in report["routed"].items():
            print(f"{a.task} {split}: routed {before:.4f} -> {a.method} {report['result'][split]:.4f}")
    record = {"tool": "merge_mixer", "run": os.path.abspath(a.run), "task": a.task, "method": a.method}
    try:
        with out_dir as tmp:
            save_native(
                tmp,
                {**merged, **head},
                out_cfg,
                tok_path,
                doc.get("data_dir"),
                [*doc.get("history", []), record],
                clf_cfg,
            )
            copy_sentence_files(mixer_dir, tmp)
            with open(os.path.join(tmp, "merge_report.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            if not a.no_eval:  # the result's predictions, for paired differences against the routed run
                with open(os.path.join(tmp, "predictions.json"), "w", encoding="utf-8") as f:
                    json.dump(predictions, f, separators=(",", ":"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({a.method}: {'routed experts kept' if a.method == 'routed' else 'a plain encoder'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
