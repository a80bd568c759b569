"""Write a shard build's documents as a Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx).

    python tools/shards_to_megatron.py data/shards --out data/megatron/corpus
    python tools/shards_to_megatron.py data/shards --out data/megatron/corpus_train --split train

The same corpus, tokenized once, can then feed Megatron-LM or NeMo runs (``--data-path PREFIX`` with
the build's tokenizer, ``SHARDS/tokenizer.model`` or ``tokenizer.json``), and comes back with
``python data_prep/build_shards.py PREFIX --megatron --tokenizer SHARDS/tokenizer.model``.

What a document is on the way out: the shards hold packed samples, but every segment records its
document id, so each *original document* is written as one Megatron document of one sequence: its
pieces joined, without the ``[CLS]``/``[SEP]`` the packer added (Megatron adds its own specials), in
document-id order. With ``--split all`` (the default) both splits are merged back into the corpus's
order, and a document the build dropped because it had no tokens is written as an empty document,
so a document's position stays its id: building shards from the dataset with the build's options
gives the same shards, byte for byte (tests/test_megatron.py). The dtype is the one Megatron-LM's
``preprocess_data.py`` picks (uint16 below a vocabulary of 65 500, else int32). Written through
megatron-core's ``IndexedDatasetBuilder`` (the ``requirements-megatron.txt`` extra), under temp names
renamed into place: an error leaves nothing.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from typing import Iterator

import numpy as np

if __package__ in (None, ""):  # run as a script: drop tools/ from sys.path so its modules can't shadow others
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from data_prep.errors import DataPrepError
from data_prep.megatron_io import write_dataset
from data_prep.shards import SPLITS, ShardIndex, iter_documents


def corpus_documents(index: ShardIndex, splits: list[str], total: int | None) -> Iterator[np.ndarray]:
    """The documents of ``splits`` in id order; with ``total`` (every split), ids the shards lack (documents
    without tokens) come out empty so that positions are ids, up to ``total`` documents."""
    merged = heapq.merge(*(iter_documents(index, s) for s in splits), key=lambda t: t[0])
    empty = np.zeros(0, np.int64)
    nxt = 0
    for doc_id, tokens in merged:
        if total is not None:
            if doc_id < nxt or doc_id >= total:
                raise DataPrepError(
                    f"{index.data_dir}: document id {doc_id} out of order or past the {total:,} documents "
                    "index.json counts; is this a shard build's directory?"
                )
            while nxt < doc_id:
                yield empty
                nxt += 1
            nxt += 1
        yield tokens
    while total is not None and nxt < total:
        yield empty
        nxt += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tools/shards_to_megatron.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shards_dir", help="a shard build (data_prep/build_shards.py output: index.json + tars)")
    p.add_argument("--out", required=True, help="path prefix of the dataset: writes PREFIX.bin and PREFIX.idx")
    p.add_argument(
        "--split",
        choices=("all", *SPLITS),
        default="all",
        help="all: the whole corpus in its order, empty documents kept (round-trips); train or val: that "
        "split's documents only, renumbered (default: %(default)s)",
    )
    a = p.parse_args(argv)
    prefix = a.out[:-4] if a.out.endswith((".bin", ".idx")) else a.out
    parent = os.path.dirname(os.path.abspath(prefix))
    made_parent = False
    t0 = time.time()
    try:
        index = ShardIndex.load(a.shards_dir)
        splits = list(SPLITS) if a.split == "all" else [a.split]
        total = int(index.raw["stats"]["documents"]) if a.split == "all" else None
        if os.path.isdir(prefix):
            raise DataPrepError(f"--out {a.out!r}: a directory; give a path prefix (DIR/NAME writes DIR/NAME.bin)")
        if not os.path.isdir(parent):
            os.makedirs(parent)
            made_parent = True
        docs, tokens, dtype = write_dataset(prefix, corpus_documents(index, splits, total), index.vocab_size)
    except DataPrepError as e:
        if made_parent and not os.listdir(parent):
            os.rmdir(parent)
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = os.path.join(a.shards_dir, index.raw["tokenizer"]["file"])
    print(
        f"wrote {prefix}.bin + {prefix}.idx: {docs:,} documents, {tokens:,} tokens ({dtype}), "
        f"{a.split} of {a.shards_dir} ({time.time() - t0:.1f} s)\n"
        f"  tokenizer  {tok} (Megatron-LM: --tokenizer-model / --tokenizer-type for it; back to shards: "
        f"python data_prep/build_shards.py {prefix} --megatron --tokenizer {tok} --out DIR)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
