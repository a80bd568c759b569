"""Shared fixtures: one small shard build of the shipped corpus, made once per test session."""

from __future__ import annotations

import os
import sys

import pytest

from data_prep.build_shards import BuildConfig, build
from data_prep.corpus import SAMPLE_CORPUS_DIR
from model.attention import _flash_attn_fn, _torch_varlen_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the fused attention backends as test parameters, each skipped where it cannot run (the GPU tests)
FUSED_BACKENDS = [
    pytest.param("flash_attn", marks=pytest.mark.skipif(_flash_attn_fn() is None, reason="flash-attn not installed")),
    pytest.param("torch_varlen", marks=pytest.mark.skipif(_torch_varlen_fn() is None, reason="no torch varlen_attn")),
]

# init_from_teacher's arguments for the student that computes a BERT teacher's function exactly (all-MiniLM-L6-v2:
# K 6 groups of depth 1, e = d = 384, its FFN 1536), as docs/training.md gives them
EXACT_STUDENT_ARGS = ["--exact"]

# Small but real: the whole shipped corpus, short samples, a small vocabulary, several shards per split.
TINY_BUILD = dict(
    inputs=[SAMPLE_CORPUS_DIR], seq_len=128, vocab_size=4000, shard_mb=0.3, val_fraction=0.05, tokenizer_sample_mb=1.0
)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("shards"))
    build(BuildConfig(**TINY_BUILD), out, workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory, shards_dir) -> str:
    """A tiny random-init native model without MoL (so it also exports to stock ModernBERT), for the
    evaluation tools' tests."""
    import dataclasses

    from data_prep.tokenizer import Tokenizer
    from model.config import MoLConfig, preset
    from model.modernalbert import ModernAlbertForMaskedLM
    from model.native_format import save_native

    out = str(tmp_path_factory.mktemp("eval") / "native")
    os.makedirs(out)
    tok = os.path.join(shards_dir, "tokenizer.model")
    import torch

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny", vocab_size=Tokenizer(tok).vocab_size), mol=MoLConfig(groups=()))
    model = ModernAlbertForMaskedLM(cfg.validate())
    save_native(out, model.state_dict(), model.cfg, tok, None, [])
    return out


def run_cli(args: list[str], **kw):
    """Run a repo script the way a user does (python path/to/script.py ...), from the repo root."""
    import subprocess

    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, **kw)


def torchrun(nproc: int, module_args: list[str], env: dict | None = None, timeout: int = 600):
    """``python -m …`` on ``nproc`` processes (torchrun --standalone; plain python for 1), from the repo root,
    one thread per process; returns the CompletedProcess (text output captured)."""
    import subprocess

    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, *module_args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wrapped_cmd(nproc: int, train_args: list[str]) -> list[str]:
    """``python -m pretrain.torchrun --standalone --nproc-per-node N -m pretrain.train …``: what users run."""
    return [
        sys.executable,
        "-m",
        "pretrain.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pretrain.train",
        *train_args,
    ]


def wrapped_pretrain(nproc: int, train_args: list[str], env: dict | None = None, timeout: int = 600):
    """``wrapped_cmd`` run to the end from the repo root, one thread per process (output captured)."""
    import subprocess

    return subprocess.run(
        wrapped_cmd(nproc, train_args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def pretrain(nproc: int, args: list[str], env: dict | None = None, timeout: int = 600):
    """``pretrain.train`` on the tiny config with ``args`` (dotted overrides) on ``nproc`` processes."""
    return torchrun(nproc, ["-m", "pretrain.train", "--config", "pretrain/configs/tiny.yaml", *args], env, timeout)


def assert_close(actual, expected, tol: float = 1e-5, what: str = "") -> None:
    """max |actual - expected| <= tol, relative to the largest |expected| entry once that exceeds 1.

    Gradients here are sums over hundreds of tokens and reach 1e1..1e2; fp32 sums in a different
    order then differ by ~1e-7 of their size, which an absolute 1e-5 would misread as a bug.
    """
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    err = (actual.detach() - expected.detach()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol:g} x {scale:.3g}"


def final_weights(run_dir) -> dict:
    """The model weights of ``run_dir``'s latest checkpoint (DCP converted to one torch file)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run_dir = str(run_dir)
    ckpt = os.path.join(run_dir, "checkpoints", open(os.path.join(run_dir, "checkpoints", "latest")).read().strip())
    dest = os.path.join(run_dir, "final.pt")
    dcp_to_torch_save(ckpt, dest)
    return torch.load(dest, weights_only=False)["model"]
