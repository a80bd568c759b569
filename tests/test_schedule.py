import pytest

from pretrain.config import ScheduleConfig
from pretrain.schedule import warmup_warning, wsd_factor


def test_warmup_stable_decay_shape():
    cfg = ScheduleConfig(warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    f = [wsd_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert all(x == 1.0 for x in f[10:80])  # stable
    assert f[80] < 1.0 and f[99] == pytest.approx(0.1)  # linear decay to min_lr_ratio over the last 20
    assert all(a >= b for a, b in zip(f[80:], f[81:]))


def test_no_warmup_no_decay():
    assert [wsd_factor(s, 5, ScheduleConfig(warmup_steps=0, decay_fraction=0.0)) for s in range(5)] == [1.0] * 5


def test_a_run_that_ends_in_its_warmup_gets_one_warning_line():
    cfg = ScheduleConfig(warmup_steps=20)
    assert warmup_warning(21, 1e-3, cfg) is None and warmup_warning(5, 1e-3, ScheduleConfig(warmup_steps=0)) is None
    line = warmup_warning(5, 3e-3, cfg)
    assert line == (
        "warning: train.steps=5 ends inside its warm-up (schedule.warmup_steps=20): the last step runs at lr "
        "7.50e-04 (5/20 of optim.lr=0.003) and the lr never decays; set schedule.warmup_steps=0 (no warm-up) or "
        "another value below 5"
    )
    assert 3e-3 * wsd_factor(4, 5, cfg) == pytest.approx(7.5e-4)  # the lr it names is the schedule's
    assert "set schedule.warmup_steps=5 (a tenth of the run)" in warmup_warning(50, 1e-3, ScheduleConfig(2000))
    assert "ends at the end of its warm-up" in warmup_warning(20, 1e-3, cfg)
