"""scripts/gpu_check.sh rehearsed on CPU, offline: no download, carried wheels installed, every column written.

The GPU machine has no network and its own torch, so the check must run from the interpreter it is given
and a wheel folder in the checkout. Here the network is replaced by a listening socket that every proxy
and index variable points at: any download attempt shows up as a connection to it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

from conftest import REPO

STAGES = ("shards", "tests", "50m", "120m", "mol", "profile", "nccl")


class Trap:
    """A TCP listener that counts connections: the stand-in for the network (proxy and package index)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def env(self) -> dict:
        offline = {
            k: self.url
            for k in (
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
                "PIP_INDEX_URL",
                "PIP_EXTRA_INDEX_URL",
            )
        }
        # no config file either: the machine's pip.conf may name local indexes and wheel folders
        return {**offline, "NO_PROXY": "", "no_proxy": "", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


def _probe_wheel(tmp_path) -> str:
    """A one-module wheel of a distribution no interpreter has, written by hand (a wheel is a zip with a
    dist-info; building one would need setuptools and wheel): what the check must install."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "gpu_check_probe-0.1.dist-info"
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheels / "gpu_check_probe-0.1-py3-none-any.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return str(wheels)


def _check(env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=timeout,
    )


def test_the_trap_sees_a_download_attempt():
    trap = Trap()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import urllib.request\ntry:\n urllib.request.urlopen("
            "'http://pypi.org/simple/', timeout=5)\nexcept Exception:\n pass",
        ],
        env={**os.environ, **trap.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert trap.connections == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_rehearsal_runs_every_stage_offline_with_the_carried_wheels(tmp_path):
    trap = Trap()
    wheels = _probe_wheel(tmp_path)
    out = tmp_path / "out"
    (tmp_path / "tmp").mkdir()
    r = _check(
        {
            **trap.env(),
            "GPU_CHECK_CPU": "1",
            "PYTHON": sys.executable,
            "WHEELS": wheels,
            "OUT": str(out),
            "TMPDIR": str(tmp_path / "tmp"),
        }
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert trap.connections == 0, "the check tried to reach the network"
    # only the missing distribution came from the folder, named in one line
    assert f"gpu_check: from {wheels}: gpu-check-probe 0.1" in r.stdout
    assert not list((tmp_path / "tmp").glob("gpu_check_site_*")), "the temporary --target was left behind"
    md = (out / "gpu_check.md").read_text()
    assert "| stage | status | seconds | note |" in md
    assert (
        "| configuration | tokens/s | TFLOP/s per GPU | MFU | step s median / max | peak memory GiB | "
        "loss at last step | wall s | torch.compile |"
    ) in md
    for stage in STAGES:
        assert f"| {stage} | ok |" in md, md
    rows = [line for line in md.splitlines() if "(cpu rehearsal: tiny, fp32)" in line]
    assert len(rows) == 6, md  # 50m MoL and dense; 120m MoL, dense and dense eager; the 2-process case
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9 and float(cells[1].replace(",", "")) > 0 and float(cells[6]) > 0, row
        median, longest = (float(x) for x in cells[4].split(" / "))
        assert 0 < median <= longest, row
    mol = (out / "mol.md").read_text()  # the MoL FFN against the dense one, timed and counted
    assert "grouped_mm / dense =" in mol and "slots / dense =" in mol and "| MoL, slots |" in mol, mol
    profile = (out / "profile" / "profile.md").read_text()
    assert "| sdpa |" in profile and "Top 30 by cpu time total" in profile, profile
    assert (out / "profile" / "trace.json").stat().st_size > 0
    env_txt = (out / "environment.txt").read_text()
    assert '"gpu-check-probe 0.1"' in env_txt


def test_stages_subset_and_errors_are_one_line(tmp_path):
    r = _check({"GPU_CHECK_CPU": "1", "PYTHON": sys.executable, "STAGES": "shards bogus", "OUT": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "STAGES: unknown stage(s) bogus; allowed: shards tests 50m 120m mol profile nccl" in r.stderr
    r = _check({"GPU_CHECK_CPU": "1", "PYTHON": sys.executable, "STEPS": "0", "OUT": str(tmp_path)})
    assert r.returncode == 2 and "STEPS=0 WARMUP=1: need STEPS >= 1" in r.stderr, r.stderr
    assert not os.listdir(tmp_path), "a refused start wrote files"
    # no GPU at all (the default interpreter search): tests/test_faults.py


@pytest.mark.slow
def test_a_stage_subset_runs_alone_and_reuses_the_shards(tmp_path):
    env = {"GPU_CHECK_CPU": "1", "PYTHON": sys.executable, "OUT": str(tmp_path), "WHEELS": str(tmp_path / "none")}
    r = _check({**env, "STAGES": "shards tests"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing installed" in r.stdout
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| shards | ok |" in md and "| tests | ok |" in md and "| 50m |" not in md
    assert "(none measured)" in md
