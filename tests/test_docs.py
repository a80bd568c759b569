"""The documented commands: what the guide pages, the README, the scripts and every ``--help`` show.

Static checks, no training: a training launch shown to users goes through ``python -m pretrain.torchrun``
(plain torchrun turns every failure into exit status 1 and ~40 lines of its own report), and a shell line
continuation in a docstring survives into ``--help`` (``\\`` + newline inside a normal string literal joins
the two lines). The own-corpus sequence of docs/training.md runs as written in tests/test_docs_own_corpus.py.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tokenize

from conftest import REPO

SKIP_DIRS = {".git", ".venv", "runs", "data", "build", "__pycache__", ".mypy_cache", ".pytest_cache"}

# a command line (or a `code span`) that starts torchrun itself: `torchrun …`, `VAR=x torchrun …`
PLAIN_TORCHRUN = re.compile(r"(^|[`$;&|(]\s*|^\s*(?:\w+=\S*\s+)*)torchrun\s+(?:--|\.\.\.|…|-m\b)")


# an odd number of backslashes before a newline: the last one escapes the newline (an even number is text)
ODD_BACKSLASHES_NEWLINE = re.compile(r"(?<!\\)(?:\\\\)*\\\n")


def _files(*patterns: str) -> list[str]:
    out = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
            rel = os.path.relpath(path, REPO)
            if not set(rel.split(os.sep)) & SKIP_DIRS:
                out.append(path)
    return sorted(set(out))


def _string_literals(path: str):
    """(line, token text) of every string literal of a Python file."""
    with open(path, "rb") as f:
        source = f.read()
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        if tok.type == tokenize.STRING:
            yield tok.start[0], tok.string


def test_documented_training_launches_use_the_torchrun_wrapper():
    """README, docs/, slurm/README.md, scripts/*.sh and the Python docstrings and help strings: no plain
    ``torchrun --… -m pretrain.…`` command (prose about torchrun itself is fine)."""
    found = []
    for path in _files("*.md", "docs/*.md", "slurm/*.md", "slurm/*.sh", "scripts/*.sh"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if PLAIN_TORCHRUN.search(line):
                    found.append(f"{os.path.relpath(path, REPO)}:{n}: {line.strip()}")
    for path in _files("**/*.py"):
        if os.path.relpath(path, REPO).startswith("tests" + os.sep):
            continue
        for n, text in _string_literals(path):
            for i, line in enumerate(text.splitlines()):
                if PLAIN_TORCHRUN.search(line) and "pretrain." in line:
                    found.append(f"{os.path.relpath(path, REPO)}:{n + i}: {line.strip()}")
    assert not found, "use python -m pretrain.torchrun:\n" + "\n".join(found)


def test_the_plain_torchrun_pattern_finds_commands_not_prose():
    for line in (
        "torchrun --standalone --nproc-per-node 8 -m pretrain.train --config x.yaml",
        "OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m pretrain.train \\",
        "torchrun ... engine=deepspeed",
        "    torchrun --nproc-per-node 8 -m pretrain.dryrun --config pretrain/configs/tiny.yaml",
        "run `torchrun --nproc-per-node 2 -m pretrain.train`",
    ):
        assert PLAIN_TORCHRUN.search(line), line
    for line in (
        "python -m pretrain.torchrun --standalone --nproc-per-node 8 -m pretrain.train --config x.yaml",
        "to resume from the last checkpoint). torchrun itself turns every",
        "### Launching: torchrun, submitit, SLURM",
        "gloo processes under torchrun with every collective counted",
    ):
        assert not PLAIN_TORCHRUN.search(line), line


def test_the_continuation_pattern_counts_the_backslashes():
    assert ODD_BACKSLASHES_NEWLINE.search("--world-size 8 \\\n    --seq-len")  # source: one backslash
    assert not ODD_BACKSLASHES_NEWLINE.search("--world-size 8 \\\\\n    --seq-len")  # source: two
    assert ODD_BACKSLASHES_NEWLINE.search("x \\\\\\\n")  # three: the last escapes the newline


def test_no_docstring_loses_a_shell_line_continuation():
    """``\\`` at the end of a line inside a non-raw string literal is Python's line continuation: the
    example in ``--help`` comes out as one line with the indentation in the middle. Write ``\\\\``."""
    found = []
    for path in _files("**/*.py"):
        for n, text in _string_literals(path):
            prefix = text[: len(text) - len(text.lstrip("rRbBuUfF"))].lower()
            m = ODD_BACKSLASHES_NEWLINE.search(text)
            if "r" not in prefix and m:
                found.append(f"{os.path.relpath(path, REPO)}:{n + text[: m.start()].count(chr(10))}")
    why = "a backslash-newline inside a string literal (write \\\\ for a shell continuation)"
    assert not found, why + ":\n" + "\n".join(found)


def test_every_quickstart_path_shown_is_one_the_quickstart_makes():
    """``runs/quickstart/X`` in any page, script, config or help text is an output of scripts/quickstart.sh."""
    with open(os.path.join(REPO, "scripts", "quickstart.sh"), encoding="utf-8") as f:
        made = set(re.findall(r"\$OUT/([\w.-]+)", f.read()))
    assert {"shards", "tiny", "native", "folded", "hf"} <= made, made
    found = []
    for path in _files("*.md", "docs/*.md", "slurm/*.md", "scripts/*.sh", "**/*.py", "pretrain/configs/*.yaml"):
        if os.path.relpath(path, REPO).startswith("tests" + os.sep):
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                for name in re.findall(r"runs/quickstart/([\w.-]+)", line):
                    if name not in made:
                        found.append(f"{os.path.relpath(path, REPO)}:{n}: runs/quickstart/{name}")
    assert not found, f"not made by scripts/quickstart.sh (it makes {sorted(made)}):\n" + "\n".join(found)
