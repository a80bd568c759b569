"""All four fine-tuning regimes on the same tasks and model, then a Markdown table of test accuracy.

    python finetune/fetch_data.py --out data/finetune
    python -m finetune.benchmark --model runs/quickstart/native --tasks data/finetune/sentiment \\
        data/finetune/topic --out runs/finetune

Runs: one LoRA per task (``lora``), one shared LoRA (``multitask``), LoRA-Mixer plug-and-play over the
per-task LoRAs (``mixer-plug``, regime ii) and LoRA-Mixer joint training (``mixer-joint``, regime i).
Extra arguments after ``--`` go to every ``finetune.train`` call (e.g. ``-- --epochs 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root first (else `model` is finetune/model.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from finetune import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m finetune.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    names = [os.path.basename(os.path.normpath(t)) for t in a.tasks]
    runs = {}
    for name, task in zip(names, a.tasks):
        runs[f"LoRA ({name} only)"] = ["--tasks", task, "--mode", "lora", "--out", os.path.join(a.out, f"lora_{name}")]
    runs["multi-task LoRA"] = ["--tasks", *a.tasks, "--mode", "multitask", "--out", os.path.join(a.out, "multitask")]
    runs["LoRA-Mixer (ii) plug-and-play"] = ["--tasks", *a.tasks, "--mode", "mixer-plug", "--adapters",
                                             *[os.path.join(a.out, f"lora_{n}") for n in names],
                                             "--out", os.path.join(a.out, "mixer_plug")]
    runs["LoRA-Mixer (i) joint"] = ["--tasks", *a.tasks, "--mode", "mixer-joint", "--out",
                                    os.path.join(a.out, "mixer_joint")]
    rows = []
    for title, args in runs.items():
        print(f"== {title}", flush=True)
        if train.main(["--model", a.model, *args, *extra]):
            return 1
        with open(os.path.join(args[args.index("--out") + 1], "results.json"), encoding="utf-8") as f:
            rows.append((title, json.load(f)))
    print("\n| regime | trainable params | " + " | ".join(f"{n} acc / macro-F1" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for title, res in rows:
        cells = [f"{res['results'][n]['accuracy']:.3f} / {res['results'][n]['macro_f1']:.3f}"
                 if n in res["results"] else "–" for n in names]
        print(f"| {title} | {res['trainable_parameters']:,} | " + " | ".join(cells) + " |")
    for title, res in rows:
        if title.startswith("LoRA-Mixer"):
            for n in names:
                r = res["results"][n]
                print(f"{title}, {n}: router entropy {r['router_entropy']:.3f}, expert share {r['expert_share']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
