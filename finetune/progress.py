"""Progress of a loop that can run for more than a few seconds, on stderr, the way pretraining shows its steps
(``pretrain/logger.py``): a tqdm bar when stderr is a terminal; otherwise (a log file, a CI job, a pipe) one
plain line every ``EVERY_S`` seconds, without a bar's carriage returns:

    SST-2 seed 0 epoch 1/3: 120/2,105 batches (6%), loss 0.6931, 10 s, about 165 s left

``MODERNALBERT_PROGRESS_S`` sets that interval in seconds (0: a line per update; ``inf``: none). Used by the
one fine-tuning loop (``finetune/loop.py``: the GLUE, SQuAD 2.0 and BEIR runners and ``finetune.train``) and
by the embedder's encoding (``evaluation/embedder.py``: BEIR). stdout stays what the tools print there
(results, JSON lines).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

EVERY_S = 10.0  # a line at most this often when stderr is not a terminal


def interval_s() -> float:
    """The seconds between two lines: ``MODERNALBERT_PROGRESS_S``, else ``EVERY_S``."""
    value = os.environ.get("MODERNALBERT_PROGRESS_S", "")
    try:
        return float(value) if value.strip() else EVERY_S
    except ValueError:
        return EVERY_S


class Progress:
    """``with Progress(total, "what", "batches") as p: … p.update(1, "loss 0.69")``: a bar on a terminal, else
    a line every ``interval_s()`` seconds (none for a loop that ends sooner). ``total`` may be 0 (unknown);
    ``quiet`` shows nothing (a caller that shows no progress keeps one code path)."""

    def __init__(
        self, total: int, desc: str, unit: str = "batches", stream: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = float("inf") if quiet else interval_s()
        self.done = 0
        self.t0 = self.t_last = time.perf_counter()
        self.bar = None
        isatty = getattr(self.stream, "isatty", None)
        if not quiet and isatty is not None and isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total or None, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False
            )

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.t_last >= self.every_s:
            self.t_last = now
            print(self.line(now - self.t0, note), file=self.stream, flush=True)

    def line(self, elapsed: float, note: str = "") -> str:
        """``desc: done/total unit (pct), note, elapsed, about … left``."""
        if self.total:
            parts = [f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%})"]
        else:  # unknown length
            parts = [f"{self.desc}: {self.done:,} {self.unit}"]
        if note:
            parts.append(note)
        parts.append(f"{elapsed:.0f} s")
        if self.total and 0 < self.done < self.total:
            parts.append(f"about {elapsed / self.done * (self.total - self.done):.0f} s left")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
