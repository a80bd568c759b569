"""docs/training.md's "Your own corpus, end to end" block, run as written: shards → 2-process pretraining of
`tiny` → consolidate → fold the experts → stock ModernBERT → fill-mask.

The block is read from the page (so the page cannot drift from what works) and run by bash from a
directory that looks like the repository root (a link to every top-level entry) but holds its own
``data/`` and ``runs/``: the corpus goes where the page says, 300 KB of the shipped sample corpus. The one
change is ``train.steps=200`` → ``20``.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

PAGE = os.path.join(REPO, "docs", "training.md")
HEADING = "## Your own corpus, end to end"


def own_corpus_block() -> str:
    """The first ```bash block after the heading."""
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    assert HEADING in text, f"{PAGE}: no heading {HEADING!r}"
    m = re.search(r"```bash\n(.*?)```", text[text.index(HEADING) :], re.S)
    assert m, f"{PAGE}: no bash block under {HEADING!r}"
    return m.group(1)


def write_corpus(path: str, size: int = 300_000) -> int:
    """About ``size`` bytes of the shipped corpus's documents, as plain text with a blank line between them."""
    from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs

    docs = [" ".join(d.split()) for f in resolve_inputs([SAMPLE_CORPUS_DIR]) for d in CorpusReader([f])]
    out, n = [], 0
    for d in docs[::5]:  # every source, not only the first file's start
        if d and n < size:
            out.append(d)
            n += len(d) + 2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(out) + "\n")
    return os.path.getsize(path)


def test_the_own_corpus_block_runs_as_written(tmp_path):
    block = own_corpus_block()
    assert "data/corpus/" in block and block.count("train.steps=200") == 1, block
    root = tmp_path / "checkout"
    root.mkdir()
    for name in os.listdir(REPO):
        if name not in ("data", "runs", ".git") and not name.startswith(".venv"):
            os.symlink(os.path.join(REPO, name), root / name)
    assert write_corpus(str(root / "data" / "corpus" / "mine.txt")) > 250_000
    script = root / "own_corpus.sh"
    script.write_text(block.replace("train.steps=200", "train.steps=20"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    r = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    out = r.stdout
    assert "done: 20 steps" in out and "eval step     20: val loss" in out, out[-3000:]  # validation ran
    assert "val MLM loss" in out  # and the merge tool's
    assert "verify: max |logits_hf - logits_native|" in out
    assert re.search(r"The \[MASK\] of the world\.\n  -> \S", out), out[-2000:]
    for path in ("shards/index.json", "tiny/checkpoints/latest", "native/model.safetensors", "folded/config.json"):
        assert (root / "runs" / "mine" / path).exists(), path
    assert (root / "runs" / "mine" / "hf" / "config.json").exists()
    assert not (tmp_path / "runs").exists() and not os.path.exists(os.path.join(REPO, "runs", "mine"))
