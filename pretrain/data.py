"""The pretraining data loader: shards from ``data_prep/build_shards.py`` → unpadded MLM batches.

Order. For epoch e, the split's samples are put in a global order: a seeded permutation of the
shards, and inside each shard a seeded permutation of its samples (both from ``(seed, e[, shard])``
only). Position g of that order is "global sample g".

Split. Global batch b is samples [b·GB, (b+1)·GB) with GB = micro_batch_size · world_size; rank r
takes [b·GB + r·mb, b·GB + (r+1)·mb). Every rank therefore gets the same number of batches
(⌊N / GB⌋ per epoch; the remainder of the epoch is dropped), and the concatenation of the ranks'
micro-batches is exactly what a single process with micro_batch_size = GB sees. Loader workers take
batches round-robin, which the DataLoader returns in order, so the stream is independent of
``num_workers``.

Masking. Each sample's MLM mask comes from an RNG seeded by (seed, epoch, global position), so it
too is independent of world size, workers and resume points.

Resume. ``state_dict()`` holds (epoch, global sample cursor) plus the data's fingerprint; after
``load_state_dict`` the loader continues with exactly the batches an uninterrupted run would have
produced — also on another world size with the same global batch.

Faults. Every shard's sha256 is checked when a worker first opens it. A bad shard (missing,
truncated, corrupted) raises ``ShardError`` naming it, carried out of the loader worker as a one-line
message; the trainer stops every rank together with that line (exit 2). A run never skips a bad
shard: the global order is defined over all shards, so skipping would silently drop its samples and
shift every later batch, and the run could no longer be reproduced or resumed exactly. Rebuilding
restores it (``build_shards.py`` with the same arguments rewrites a shard byte for byte), then the
run resumes exactly. ``python -m pretrain.data DIR`` checks every shard of a build up front.

Batch (unpadded, ModernBERT-style; T tokens, S segments, M masked positions)::

    input_ids     int64 [T]    masked token stream (all samples back to back)
    cu_seqlens    int32 [S+1]  segment (document) boundaries; attention stays inside a segment
    max_seqlen    int          longest segment
    mlm_positions int64 [M]    positions in input_ids that carry a prediction target
    mlm_labels    int64 [M]    the original tokens there
    sample_ids    int64 [B, 2] (shard, index in shard) of each sample, for provenance
    position      (epoch, global position of the first sample): names the micro-batch independently of
                  world size and workers; ``micro_batch_seed`` turns it into the seed of its random draws
    num_samples, num_tokens    ints
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.errors import DataPrepError
from data_prep.shards import ShardError, ShardReader
from config_check import check
from pretrain.config import DataConfig, MLMConfig
from pretrain.shard_cache import ShardCache, load_index, local_path, tokenizer_path

_STATE_VERSION = 1
_OPEN_SHARDS_PER_WORKER = 8
_FAULT = "shard_fault"  # a worker's batch that carries the one-line error of a bad shard instead of data


@dataclass
class LoaderConfig(DataConfig):
    """One loader: a ``DataConfig`` (its fields, unprefixed in messages) plus the batch and the order."""

    dir: str = field()  # no default here: every loader names its data
    micro_batch_size: int  # samples per rank per batch
    split: str = "train"
    shuffle: bool = True
    epochs: int | None = None  # None: cycle forever (training runs by steps)
    verify_shards: bool = True  # sha256 of each shard checked when a worker first opens it
    pin_memory: bool = False

    @classmethod
    def of(cls, data: DataConfig, micro_batch_size: int, **kw) -> "LoaderConfig":
        """The loader of a run's ``data:`` section (its fields shared, not copied by hand); ``kw`` sets the
        loader's own fields and overrides shared ones."""
        shared = {f.name: getattr(data, f.name) for f in fields(DataConfig)}
        return cls(**{**shared, **kw}, micro_batch_size=micro_batch_size)

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        check(self.micro_batch_size >= 1, f"{prefix}micro_batch_size", self.micro_batch_size, "must be >= 1")
        check(self.epochs is None or self.epochs >= 1, f"{prefix}epochs", self.epochs, "must be >= 1 or None")


def _seed_words(*parts: int) -> list[int]:
    return [int(p) & 0xFFFFFFFF for p in parts]


_exit_hook = False


def _kill_loader_workers() -> None:
    """At exit, before multiprocessing's own hook (atexit runs last-registered first): SIGKILL the loader
    workers, which ignore SIGTERM, so the interpreter's terminate() + join() of its children cannot hang."""
    for p in multiprocessing.active_children():
        if p.daemon:  # DataLoader workers are daemonic; multiprocessing would terminate these anyway
            p.kill()
            p.join(timeout=5)


def _register_exit_hook() -> None:
    global _exit_hook
    if not _exit_hook:
        atexit.register(_kill_loader_workers)
        _exit_hook = True


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """A loader worker's first act: ignore the stop signals (SIGTERM, SIGINT, SIGUSR1, SIGUSR2).

    SLURM signals every process of a job at preemption, and Ctrl-C the whole process group; a worker
    killed by it takes its rank down with "DataLoader worker killed by signal" before the rank can save.
    The rank decides when to stop; its workers leave when it does (PyTorch's workers watch their parent).
    Before this runs, a forked worker has the rank's handler, which only sets a flag: no window either.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def micro_batch_seed(seed: int, epoch: int, first_sample: int) -> int:
    """The torch RNG seed for the forward and backward of one micro-batch (router jitter, dropout).

    A pure function of (seed, the micro-batch's place in the data stream): two runs of one command, a
    resumed run and a run on another number of ranks draw the same noise for the same samples, with no
    RNG state to save; an activation-checkpointing recompute replays it (torch saves and restores the
    global RNG around a recompute).
    """
    words = np.random.SeedSequence(_seed_words(seed, epoch, first_sample, 3)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class SampleOrder:
    """The deterministic global sample order of one epoch; maps a global position to (shard, sample)."""

    def __init__(self, counts: list[int], seed: int, epoch: int, shuffle: bool) -> None:
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        n = len(counts)
        self.shard_order = np.random.default_rng(_seed_words(seed, epoch)).permutation(n) if shuffle else np.arange(n)
        ordered = np.asarray(counts, dtype=np.int64)[self.shard_order]
        self.ends = np.cumsum(ordered)
        self.starts = self.ends - ordered
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _perm(self, shard: int, count: int) -> np.ndarray:
        perm = self._perms.get(shard)
        if perm is None:
            perm = (
                np.random.default_rng(_seed_words(self.seed, self.epoch, shard, 1)).permutation(count)
                if self.shuffle
                else np.arange(count)
            )
            self._perms[shard] = perm
            if len(self._perms) > _OPEN_SHARDS_PER_WORKER:
                self._perms.popitem(last=False)
        return perm

    def next_shard(self, shard: int) -> int | None:
        """The shard after ``shard`` in this epoch's order (None for the last)."""
        k = int(np.flatnonzero(self.shard_order == shard)[0]) + 1
        return int(self.shard_order[k]) if k < len(self.shard_order) else None

    def __getitem__(self, g: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.ends, g, side="right"))
        shard = int(self.shard_order[k])
        return shard, int(self._perm(shard, int(self.ends[k] - self.starts[k]))[g - self.starts[k]])


class MLMMasker:
    """Per-sample MLM masking (80/10/10 by default) that never touches special tokens."""

    def __init__(self, cfg: MLMConfig, vocab_size: int, special_ids: dict[str, int]) -> None:
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.mask_id = special_ids["mask"]
        self.special = np.asarray(sorted(set(special_ids.values())), dtype=np.int64)
        self.regular = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), self.special)

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (masked ids, target positions, target labels) for one sample."""
        ids = ids.astype(np.int64)
        maskable = np.flatnonzero(~np.isin(ids, self.special))
        # randomised rounding keeps the expected rate exact also for short samples
        k = int(np.floor(self.cfg.mask_prob * len(maskable) + rng.random()))
        pos = np.sort(rng.choice(maskable, size=k, replace=False)) if k else np.zeros(0, np.int64)
        labels = ids[pos]
        action = rng.random(k)
        out = ids.copy()
        to_mask = action < self.cfg.mask_token_prob
        to_random = (~to_mask) & (action < self.cfg.mask_token_prob + self.cfg.random_token_prob)
        out[pos[to_mask]] = self.mask_id
        out[pos[to_random]] = self.regular[rng.integers(0, len(self.regular), size=int(to_random.sum()))]
        return out, pos, labels


def collate(
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], sample_ids: list[tuple[int, int]]
) -> dict:
    """Masked samples (ids, doc_lens, target positions, labels) → one unpadded batch."""
    ids, seg_lens, positions, labels = [], [], [], []
    offset = 0
    for s_ids, s_lens, s_pos, s_labels in samples:
        ids.append(s_ids)
        seg_lens.append(s_lens)
        positions.append(s_pos + offset)
        labels.append(s_labels)
        offset += len(s_ids)
    seg_lens_S = np.concatenate(seg_lens).astype(np.int64)
    cu = np.zeros(len(seg_lens_S) + 1, dtype=np.int32)
    np.cumsum(seg_lens_S, out=cu[1:])
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids)),
        "cu_seqlens": torch.from_numpy(cu),
        "max_seqlen": int(seg_lens_S.max()),
        "mlm_positions": torch.from_numpy(np.concatenate(positions)),
        "mlm_labels": torch.from_numpy(np.concatenate(labels)),
        "sample_ids": torch.tensor(sample_ids, dtype=torch.int64).reshape(-1, 2),
        "num_samples": len(samples),
        "num_tokens": offset,
    }


class _EpochBatches(IterableDataset):
    """This rank's batches [start, stop) of one epoch, split round-robin over loader workers."""

    def __init__(self, loader: "PretrainLoader", epoch: int, start: int, stop: int) -> None:
        self.index, self.cfg = loader.index, loader.cfg
        self.rank, self.gb = loader.rank, loader.global_batch_samples
        self.epoch, self.start, self.stop = epoch, start, stop
        self.counts = [e.samples for e in self.index.splits[self.cfg.split]]
        self.masker = MLMMasker(self.cfg.mlm, self.index.vocab_size, self.index.special_ids)
        self.remote = local_path(self.cfg.dir) is None
        self._cache: ShardCache | None = None  # made in the worker process (it holds a thread pool)

    def _path(self, shard: int, order: SampleOrder) -> str:
        """The local file of ``shard``: in place, or fetched into the node's cache (next one prefetched)."""
        entries = self.index.splits[self.cfg.split]
        entry = entries[shard]
        if not self.remote:
            return self.index.shard_path(entry)
        if self._cache is None:
            self._cache = ShardCache(self.cfg.dir, self.cfg.cache_dir, int(self.cfg.cache_gb * (1 << 30)))
        path = self._cache.fetch(entry.file, entry.sha256)
        nxt = order.next_shard(shard)
        if nxt is not None:
            self._cache.prefetch(entries[nxt].file, entries[nxt].sha256)
        return path

    def _reader(self, readers: OrderedDict, shard: int, order: SampleOrder) -> ShardReader:
        r = readers.get(shard)
        if r is None:
            entry = self.index.splits[self.cfg.split][shard]
            sha = entry.sha256 if self.cfg.verify_shards else None
            try:
                r = ShardReader(self._path(shard, order), sha, entry.samples)
            except ShardError:
                if not self.remote or self._cache is None:
                    raise
                self._cache.drop(entry.file)  # a cached copy that went bad on this node's disk: fetch anew
                r = ShardReader(self._path(shard, order), sha, entry.samples)
            readers[shard] = r
            if len(readers) > _OPEN_SHARDS_PER_WORKER:
                readers.popitem(last=False)[1].close()
        else:
            readers.move_to_end(shard)
        return r

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        order = SampleOrder(self.counts, self.cfg.seed, self.epoch, self.cfg.shuffle)
        readers: OrderedDict[int, ShardReader] = OrderedDict()
        mb = self.cfg.micro_batch_size
        for b in range(self.start + wid, self.stop, nw):
            first = b * self.gb + self.rank * mb
            batch, sample_ids = [], []
            for g in range(first, first + mb):
                shard, i = order[g]
                sample_ids.append((shard, i))
                try:
                    ids, doc_lens, _ = self._reader(readers, shard, order).sample(i)
                except ShardError as e:
                    # handed over as data: an exception raised in a loader worker reaches the trainer as a
                    # traceback wall; this reaches it as the one line
                    yield {_FAULT: str(e)}
                    return
                except (OSError, ValueError) as e:  # a shard changed on disk after it was opened
                    name = self.index.splits[self.cfg.split][shard].file
                    yield {_FAULT: f"shard {name}: sample {i} unreadable ({type(e).__name__}: {e})"}
                    return
                rng = np.random.default_rng(_seed_words(self.cfg.seed, self.epoch, g, 2))
                masked, pos, labels = self.masker(ids, rng)
                batch.append((masked, doc_lens, pos, labels))
            out = collate(batch, sample_ids)
            out["position"] = (self.epoch, first)
            yield out


class PretrainLoader:
    """Deterministic, resumable loader of unpadded MLM batches for one data-parallel rank.

    Iterating yields batch dicts (see the module docstring); ``state_dict()`` counts every batch the
    iterator has returned so far. ``rank``/``world_size`` are the data-parallel coordinates.
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> None:
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: must be in [0, world_size={world_size})")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.index = load_index(cfg.dir)
        if cfg.split not in self.index.splits:
            raise DataPrepError(f"split={cfg.split!r}: not in {cfg.dir}/index.json (has {sorted(self.index.splits)})")
        self.num_samples = sum(e.samples for e in self.index.splits[cfg.split])
        self.global_batch_samples = cfg.micro_batch_size * world_size
        self.batches_per_epoch = self.num_samples // self.global_batch_samples
        if self.batches_per_epoch == 0:
            raise DataPrepError(
                f"micro_batch_size={cfg.micro_batch_size} x world_size={world_size}: the {cfg.split!r} split of "
                f"{cfg.dir} has only {self.num_samples} samples, fewer than one global batch"
            )
        self.fingerprint = self.index.fingerprint(cfg.split)
        self._epoch = 0
        self._batch = 0  # next batch of the current epoch
        self._generation = 0

    @property
    def dropped_samples_per_epoch(self) -> int:
        return self.num_samples - self.batches_per_epoch * self.global_batch_samples

    def __iter__(self) -> Iterator[dict]:
        generation = self._generation
        while self.cfg.epochs is None or self._epoch < self.cfg.epochs:
            ds = _EpochBatches(self, self._epoch, self._batch, self.batches_per_epoch)
            if self.cfg.num_workers:
                _register_exit_hook()
            dl = DataLoader(
                ds,
                batch_size=None,
                num_workers=self.cfg.num_workers,
                pin_memory=self.cfg.pin_memory,
                worker_init_fn=ignore_stop_signals if self.cfg.num_workers else None,
            )
            for batch in dl:
                if generation != self._generation:
                    raise RuntimeError("PretrainLoader: state was loaded after this iterator was created; iterate anew")
                if _FAULT in batch:
                    raise ShardError(batch[_FAULT])
                self._batch += 1
                yield batch
            self._epoch += 1
            self._batch = 0

    def state_dict(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "split": self.cfg.split,
            "data_fingerprint": self.fingerprint,
            "seed": self.cfg.seed,
            "epoch": self._epoch,
            "sample_cursor": self._batch * self.global_batch_samples,  # global samples consumed this epoch
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {_STATE_VERSION}")
        if state["data_fingerprint"] != self.fingerprint or state["split"] != self.cfg.split:
            raise ValueError(
                f"loader state belongs to other data (split {state['split']!r}, fingerprint "
                f"{state['data_fingerprint'][:12]}…) than {self.cfg.dir} split {self.cfg.split!r} "
                f"({self.fingerprint[:12]}…)"
            )
        if state["seed"] != self.cfg.seed:
            raise ValueError(f"seed={self.cfg.seed}: the checkpoint's loader used seed {state['seed']}")
        cursor = int(state["sample_cursor"])
        if cursor % self.global_batch_samples:
            raise ValueError(
                f"micro_batch_size x world_size = {self.global_batch_samples}: the saved cursor ({cursor} samples) "
                "is not a whole number of global batches; resume with the same global batch size"
            )
        self._epoch = int(state["epoch"])
        self._batch = cursor // self.global_batch_samples
        self._generation += 1


def verify_build(data_dir: str, workers: int = 4, log=print, cache_dir: str = "", index=None) -> list[str]:
    """Check every shard of every split against index.json (file, sha256, tar layout, sample count).

    A URL ``data_dir`` is fetched whole into the shard cache (``cache_dir``) on the way.
    Returns one line per bad shard (also passed to ``log``); raises DataPrepError without a readable index.
    """
    from concurrent.futures import ThreadPoolExecutor

    index = index or load_index(data_dir)  # (given when the caller has it: no second fetch of a URL's index)
    entries = [e for split in sorted(index.splits) for e in index.splits[split]]
    cache = ShardCache(data_dir, cache_dir) if local_path(data_dir) is None else None

    def check(entry) -> str | None:
        try:  # a URL build is fetched into the cache, which checks each download's sha256
            path = cache.fetch(entry.file, entry.sha256) if cache else index.shard_path(entry)
            ShardReader(path, entry.sha256, entry.samples)
        except ShardError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashing releases the GIL
        problems = [p for p in pool.map(check, entries) if p]
    for p in problems:
        log(f"bad: {p}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.data DATA_DIR``: verify every shard of a build, then show a batch through the loader.

    Exit status: 0 when every shard verifies, 1 when some do not (each is named), 2 when the build
    cannot be read at all (no index.json, bad arguments).
    """
    import argparse
    import sys

    from data_prep.tokenizer import Tokenizer

    p = argparse.ArgumentParser(
        prog="python -m pretrain.data", description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("data_dir", help="a shard directory or a URL prefix (https://…, s3://…, pipe:CMD {} …)")
    p.add_argument("--cache-dir", default="", help="shard cache for a URL (default: ~/.cache/modernalbert/shards/…)")
    p.add_argument("--split", default="train")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--world-size", type=int, default=1, help="pretend this many data-parallel ranks (rank 0 shown)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking every shard (sha256, tar layout, sample count against index.json)",
    )
    p.add_argument("--verify-threads", type=int, default=4, help="shards hashed in parallel")
    a = p.parse_args(argv)
    try:
        index = load_index(a.data_dir)
        if not a.no_verify:
            total = sum(len(v) for v in index.splits.values())
            bad = verify_build(
                a.data_dir,
                a.verify_threads,
                log=lambda m: print(m, file=sys.stderr),
                cache_dir=a.cache_dir,
                index=index,
            )
            if bad:
                print(
                    f"error: {len(bad)} of {total} shards in {a.data_dir} failed verification; rebuild them with "
                    "data_prep/build_shards.py and the build's arguments (index.json: build_args)",
                    file=sys.stderr,
                )
                return 1
            print(
                f"verified: {total} shards ({', '.join(f'{s} {len(v)}' for s, v in sorted(index.splits.items()))}) "
                "match index.json"
            )
        loader = PretrainLoader(
            LoaderConfig(
                a.data_dir, a.micro_batch_size, split=a.split, num_workers=a.num_workers, cache_dir=a.cache_dir
            ),
            rank=0,
            world_size=a.world_size,
        )
        batch = next(iter(loader))
        tok = Tokenizer(tokenizer_path(a.data_dir, index, a.cache_dir))
    except (DataPrepError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    idx = loader.index
    print(
        f"{a.data_dir} [{a.split}]: {loader.num_samples:,} samples in {len(idx.splits[a.split])} shards, "
        f"seq_len {idx.seq_len}, vocab {idx.vocab_size:,}"
    )
    print(
        f"per epoch: {loader.batches_per_epoch:,} global batches of {loader.global_batch_samples} samples "
        f"({loader.dropped_samples_per_epoch} dropped)"
    )
    print(
        f"batch 0 (rank 0): {batch['num_tokens']} tokens, {len(batch['cu_seqlens']) - 1} segments, "
        f"max_seqlen {batch['max_seqlen']}, {len(batch['mlm_positions'])} MLM targets "
        f"({len(batch['mlm_positions']) / batch['num_tokens']:.1%} of tokens)"
    )
    end = int(batch["cu_seqlens"][1])
    ids = batch["input_ids"][:end].tolist()
    print(
        "first segment as the model sees it:\n  "
        + " ".join(tok.id_to_token(i) for i in ids[:60])
        + (" …" if len(ids) > 60 else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
