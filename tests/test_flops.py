"""The per-application FLOP count (model/flops.py) and its vectorised form used by the training loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import MoLConfig, preset
from model.flops import attention_pairs, block_flops, count_flops


def test_hand_computed_count_on_tiny():
    cfg = preset("tiny")  # d 64, I 96, e 64, V 32768, K 2 × G 2, MoL (E 8, k 2, r 16) on group 1
    fc = count_flops(cfg, doc_lens=[10, 20], num_masked=5)
    T, d, I = 30, 64, 96
    attn_pairs = 10 * 10 + 20 * 20  # both documents fit in the ±64 window: local = global
    dense = 2 * T * d * 3 * d + 2 * T * d * d + 4 * attn_pairs * d + 2 * T * d * 2 * I + 2 * T * I * d
    assert dense == 737_280 + 245_760 + 128_000 + 737_280 + 368_640 == 2_216_960
    mol = 2 * T * d * 8 + 2 * 2 * T * 16 * (d + 2 * I + I + d)  # router + k=2 experts' A1, B1, A2, B2
    assert mol == 30_720 + 798_720
    assert fc.layers == [dense, dense, dense + mol, dense + mol]  # layers 2, 3 = group 1's applications
    assert fc.embedding == 2 * T * 64 * d == 245_760
    assert fc.head == 2 * 5 * (d * d + d * 64 + 64 * 32768) == 21_053_440
    assert fc.forward == 31_825_920 and fc.training == 3 * 31_825_920
    # the BERT family's plain GELU FFN: Wi is d→I, not d→2I (its biases and positions are not counted)
    bert = count_flops(dataclasses.replace(cfg, ffn_activation="gelu", bias=True), [10, 20], 5)
    assert dense - bert.layers[0] == 2 * T * d * I and (dense + mol) - bert.layers[2] == 2 * T * d * I * (
        1 + 2 * 16 / 64
    )


def test_recursion_depth_multiplies_the_shared_part():
    base = preset("50m", mol=MoLConfig(groups=(2, 3)))
    g1 = dataclasses.replace(base, group_depth=1, global_every=1)
    g3 = dataclasses.replace(base, group_depth=3, global_every=1)
    docs = [100, 37, 250]
    f1, f3 = count_flops(g1, docs, 50), count_flops(g3, docs, 50)
    assert sum(f3.layers) == 3 * sum(f1.layers)
    per_group = [block_flops(g3, 3 * k, docs) for k in range(9)]
    assert f3.layers == [f for f in per_group for _ in range(3)]
    assert f3.embedding == f1.embedding and f3.head == f1.head


def test_local_attention_is_counted_over_its_window():
    for n, w in [(200, 64), (10, 64), (129, 64), (5, 1)]:
        brute = int(((torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() <= w).sum())
        assert attention_pairs([n], w) == brute
    assert attention_pairs([200], None) == 40_000
    cfg = preset("tiny")
    assert block_flops(cfg, 1, [500]) < block_flops(cfg, 0, [500])  # layer 1 local, layer 0 global


def test_vectorised_training_count_equals_the_per_layer_count():
    """TrainingFlops (the training loop's, a few tensor ops per micro-batch) = count_flops(...).training."""
    from model.config import AttnExpertsConfig
    from model.flops import TrainingFlops

    configs = [
        preset("tiny"),
        preset("120m"),
        dataclasses.replace(preset("tiny"), attn_experts=AttnExpertsConfig(groups=(0,), routing="soft")),
    ]
    lens = [1, 2, 5, 64, 65, 66, 129, 300, 1024]  # around the tiny window (±64) and far beyond it
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    for cfg in configs:
        assert TrainingFlops(cfg)(cu, 77) == count_flops(cfg, lens, 77).training


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
    ],
)
def test_the_mfu_peak_is_the_exact_device_models(monkeypatch, name, peak):
    from pretrain.config import LogConfig
    from pretrain.logger import peak_tflops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_tflops(LogConfig(), torch.device("cuda", 0)) == peak
    assert peak_tflops(LogConfig(peak_tflops=123.0), torch.device("cuda", 0)) == 123.0  # the config wins


def test_an_unknown_gpu_asks_for_the_peak_in_one_line_instead_of_guessing(monkeypatch):
    from pretrain.config import LogConfig
    from pretrain.logger import peak_tflops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA B200")
    lines: list[str] = []
    assert peak_tflops(LogConfig(), torch.device("cuda", 0), say=lines.append) is None
    assert lines == [
        "MFU not logged: no peak known for 'NVIDIA B200'; set log.peak_tflops=<dense bf16 TFLOP/s of one device>"
    ]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40")  # not an L4
    assert peak_tflops(LogConfig(), torch.device("cuda", 0), say=lines.append) is None and len(lines) == 2
    assert peak_tflops(LogConfig(), torch.device("cpu"), say=lines.append) is None and len(lines) == 2
