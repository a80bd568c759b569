"""pretrain/train_state.py: trainer.json as Stateful components, in the layout older checkpoints have."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from pretrain.data import LoaderConfig, PretrainLoader
from pretrain.train_state import ComponentStateError, RNGState, TrainerState

# trainer.json as pretrain/train.py wrote it at commit 4857fd9 (before the Stateful components), 8 steps of
# the tiny preset with train.micro_batch_size=8 on one process; "config" shortened, the data fingerprint is
# the test shards'
OLD_TRAINER_JSON = {
    "step": 8,
    "scheduler": {
        "base_lrs": [0.003, 0.003],
        "last_epoch": 8,
        "_step_count": 9,
        "_is_initial": False,
        "_get_lr_called_within_step": False,
        "_last_lr": [0.00135, 0.00135],
        "lr_lambdas": [None, None],
    },
    "loader": {
        "version": 1,
        "split": "train",
        "data_fingerprint": "<the shards'>",
        "seed": 0,
        "epoch": 0,
        "sample_cursor": 128,
    },
    "config": {"engine": "fsdp2"},
    "engine": "fsdp2",
    "world_size": 1,
}


def _state(shards_dir: str, loader=None):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.003)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 * s)
    # num_workers=0: this loader is never iterated, only its state is saved and loaded (workers change nothing)
    loader = loader or PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=8, num_workers=0))
    return TrainerState({"loader": loader, "scheduler": sched}, info=lambda: {"engine": "fsdp2"}), loader, sched


def test_a_checkpoint_in_the_old_layout_loads_into_the_components(shards_dir):
    state, loader, sched = _state(shards_dir)
    old = copy.deepcopy(OLD_TRAINER_JSON)
    old["loader"]["data_fingerprint"] = loader.fingerprint
    state.load_state_dict(old)
    assert state.step == 8
    assert sched.last_epoch == 8 and sched.get_last_lr() == [0.00135, 0.00135]
    assert loader.state_dict()["sample_cursor"] == 128
    # and it writes the same layout back: the step, each component under its name, the run's facts
    again = state.state_dict()
    assert again.keys() == {"step", "loader", "scheduler", "engine"}
    assert again["loader"] == old["loader"] and again["scheduler"]["last_epoch"] == 8


def test_a_checkpoint_from_before_the_routing_average_resumes_with_a_fresh_one(shards_dir):
    """The old layout has no ``routing_ema``: an optional component keeps its fresh state, the rest loads."""
    from model.config import ModelConfig, MoLConfig
    from pretrain.routing_ema import RoutingShareEMA

    state, loader, sched = _state(shards_dir)
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        num_heads=2,
        intermediate_size=48,
        num_groups=2,
        group_depth=2,
        mol=MoLConfig(groups=(1,)),
    )
    ema = RoutingShareEMA(cfg, 0.5)
    state = TrainerState({"loader": loader, "scheduler": sched, "routing_ema": ema})
    old = copy.deepcopy(OLD_TRAINER_JSON)
    old["loader"]["data_fingerprint"] = loader.fingerprint
    state.load_state_dict(old)
    assert state.step == 8 and ema.updates == 0 and ema.ema == {}
    # the average itself: the first step's share, then decay * old + (1 - decay) * new, over a group's layers
    g = cfg.mol.groups[0]
    layers = [f"layer{i}.ffn" for i in range(g * cfg.group_depth, (g + 1) * cfg.group_depth)]
    E = cfg.mol.num_experts
    ema.update({layers[0]: [1] + [0] * (E - 1), layers[-1]: [1] + [0] * (E - 1)})
    ema.update({layers[0]: [0, 2] + [0] * (E - 2)})
    assert ema.ema[g][:2] == [0.5, 0.5] and ema.updates == 2
    again = RoutingShareEMA(cfg, 0.5)
    again.load_state_dict(json.loads(json.dumps(ema.state_dict())))  # trainer.json is JSON
    assert again.ema == ema.ema and again.updates == 2


def test_a_component_that_refuses_its_state_is_named(shards_dir):
    state, loader, _ = _state(shards_dir)
    old = copy.deepcopy(OLD_TRAINER_JSON)  # the loader state of other data
    with pytest.raises(ComponentStateError, match="^loader: loader state belongs to other data") as e:
        state.load_state_dict(old)
    assert e.value.name == "loader" and state.step == 0  # nothing half-loaded into the counter
    del old["scheduler"]
    old["loader"]["data_fingerprint"] = loader.fingerprint
    with pytest.raises(ComponentStateError, match="scheduler: .*no 'scheduler' state"):
        state.load_state_dict(old)


def test_components_must_be_stateful():
    with pytest.raises(TypeError, match="'counter': int has no state_dict/load_state_dict"):
        TrainerState({"counter": 3})


def test_rng_state_puts_every_generator_back():
    saved = RNGState().state_dict()
    first = (torch.rand(3), np.random.rand(3), random.random())
    RNGState().load_state_dict(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
