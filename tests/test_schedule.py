import pytest

from pretrain.config import ScheduleConfig
from pretrain.schedule import wsd_factor


def test_warmup_stable_decay_shape():
    cfg = ScheduleConfig(warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    f = [wsd_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert all(x == 1.0 for x in f[10:80])  # stable
    assert f[80] < 1.0 and f[99] == pytest.approx(0.1)  # linear decay to min_lr_ratio over the last 20
    assert all(a >= b for a, b in zip(f[80:], f[81:]))


def test_no_warmup_no_decay():
    assert [wsd_factor(s, 5, ScheduleConfig(warmup_steps=0, decay_fraction=0.0)) for s in range(5)] == [1.0] * 5
