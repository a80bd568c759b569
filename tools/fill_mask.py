"""Print a HuggingFace model directory's top predictions for the [MASK] in a sentence.

    python tools/fill_mask.py runs/quickstart/hf "And he said unto them, [MASK] not."

Loads offline with ``transformers.pipeline("fill-mask")``; custom code (the modernalbert format) is
trusted only when the directory carries it (an ``auto_map`` in its config.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/fill_mask.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("hf_dir")
    p.add_argument("text", nargs="+", help="sentences, each with one [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    a = p.parse_args(argv)
    cfg_path = os.path.join(a.hf_dir, "config.json")
    if not os.path.isfile(cfg_path):
        print(f"error: {a.hf_dir}: not a HuggingFace model directory (no config.json)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import pipeline

    from model.native_format import FORMAT
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {cfg_path}: unreadable ({e})", file=sys.stderr)
        return 2
    native = config.get("format") == FORMAT  # a native directory has a model_type too (older ones have none)
    if native or "model_type" not in config:
        why = f"a native model directory, format {FORMAT}" if native else "its config.json has no model_type"
        print(
            f"error: {a.hf_dir}: not a HuggingFace export ({why}); export it first: "
            f"python tools/convert_to_hf.py {a.hf_dir} --out HF_DIR",
            file=sys.stderr,
        )
        return 2
    try:
        fill = pipeline("fill-mask", model=a.hf_dir, trust_remote_code="auto_map" in config, top_k=a.top_k)
    except (OSError, ValueError, KeyError) as e:  # missing weights or tokenizer, an unknown model_type
        print(f"error: {a.hf_dir}: transformers cannot load it ({' '.join(str(e).split())[:300]})", file=sys.stderr)
        return 2
    from data_prep.tokenizer_id import TokenizerId, check_ids_fit

    try:  # a tokenizer of a larger vocabulary copied into the directory: its ids past the embedding would crash
        check_ids_fit(
            TokenizerId(a.hf_dir, os.path.join(a.hf_dir, "tokenizer.json"), vocab_size=len(fill.tokenizer)),
            "its model (config.json vocab_size)",
            fill.model.config.vocab_size,
            ValueError,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for text in a.text:
        if fill.tokenizer.mask_token not in text:
            print(f"error: {text!r}: no {fill.tokenizer.mask_token} in it", file=sys.stderr)
            return 2
        preds = ", ".join(f"{r['token_str'].strip() or repr(r['token_str'])} {r['score']:.3f}" for r in fill(text))
        print(f"{text}\n  -> {preds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
