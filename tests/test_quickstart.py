"""The README's main command, shortened (20 training steps), from scratch into a temporary directory."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_quickstart_runs_the_whole_chain_and_prints_what_the_readme_shows(tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "STEPS": "20", "OUT": str(out)},
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    text = r.stdout
    for stage in range(1, 7):
        assert f"== {stage}/6 " in text
    assert "done: 20 steps" in text and "eval step     20: val loss" in text
    assert text.count("verify: max |logits_hf - logits_native|") == 2
    assert text.count("And he said unto them, Go ye into all the [MASK], and preach the gospel.\n  -> ") == 2
    assert "artifacts:" in text
    for path in (
        "shards/index.json",
        "tiny/checkpoints/latest",
        "native/model.safetensors",
        "merged/merge_report.json",
        "folded/model.safetensors",
        "hf/modeling_modernalbert.py",
        "hf/tokenizer.json",
        "hf-modernbert/config.json",
    ):
        assert (out / path).exists(), path
    # exports are readable by the group and others as the umask allows (safetensors itself writes 0600)
    umask = os.umask(0)
    os.umask(umask)
    for path in (
        "native/model.safetensors",
        "folded/model.safetensors",
        "hf/model.safetensors",
        "hf-modernbert/model.safetensors",
        "hf/config.json",
    ):
        assert (out / path).stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_test_script_runs_only_the_tests_it_is_given():
    """`bash scripts/test.sh tests/test_flops.py` used to run the whole suite (it passed `tests` first)."""
    r = subprocess.run(
        ["bash", "scripts/test.sh", "--collect-only", "-q", "tests/test_flops.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    collected = [line for line in r.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/test_flops.py::") for line in collected), r.stdout[-2000:]
    # no path: the whole suite (pyproject's testpaths)
    r = subprocess.run(
        ["bash", "scripts/test.sh", "--collect-only", "-q", "-m", "not slow"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    files = {line.split("::")[0] for line in r.stdout.splitlines() if "::" in line}
    assert r.returncode == 0 and len(files) > 10 and "tests/test_flops.py" in files, r.stdout[-2000:]
