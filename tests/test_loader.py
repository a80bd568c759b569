"""pretrain/data.py: global order, rank/worker split, exact resume, MLM masking, shard verification."""

from __future__ import annotations

import shutil
from itertools import islice

import numpy as np
import pytest
import torch

from data_prep.errors import DataPrepError
from data_prep.shards import ShardIndex
from pretrain.data import LoaderConfig, MLMConfig, PretrainLoader, SampleOrder


def _batches(loader: PretrainLoader, n: int) -> list[dict]:
    return list(islice(iter(loader), n))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if torch.is_tensor(x[k]):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def _cat(batches: list[dict]) -> dict:
    """Concatenate per-rank micro-batches into the batch one process would see."""
    out = {
        "input_ids": torch.cat([b["input_ids"] for b in batches]),
        "sample_ids": torch.cat([b["sample_ids"] for b in batches]),
        "mlm_labels": torch.cat([b["mlm_labels"] for b in batches]),
    }
    offsets = np.cumsum([0] + [b["num_tokens"] for b in batches])
    out["mlm_positions"] = torch.cat([b["mlm_positions"] + int(o) for b, o in zip(batches, offsets)])
    out["cu_seqlens"] = torch.cat(
        [batches[0]["cu_seqlens"]] + [b["cu_seqlens"][1:] + int(o) for b, o in zip(batches[1:], offsets[1:])]
    )
    return out


def test_two_ranks_two_workers_see_every_sample_once(shards_dir):
    seen = []
    loaders = [
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=16, num_workers=2, epochs=1), r, 2) for r in range(2)
    ]
    for loader in loaders:
        batches = list(loader)
        assert len(batches) == loader.batches_per_epoch  # every rank: the same number of batches
        seen += [tuple(x) for b in batches for x in b["sample_ids"].tolist()]
    n = loaders[0].num_samples
    assert len(seen) == len(set(seen)) == loaders[0].batches_per_epoch * 32
    assert n - len(seen) == loaders[0].dropped_samples_per_epoch < 32
    counts = [e.samples for e in ShardIndex.load(shards_dir).splits["train"]]
    order = SampleOrder(counts, seed=0, epoch=0, shuffle=True)
    everything = {order[g] for g in range(n)}
    assert len(everything) == n and set(seen) <= everything  # only the tail of the order is dropped
    assert set(seen) == {order[g] for g in range(len(seen))}


def test_order_is_shuffled_per_epoch_and_seed(shards_dir):
    counts = [e.samples for e in ShardIndex.load(shards_dir).splits["train"]]
    first = [SampleOrder(counts, 0, 0, True)[g] for g in range(50)]
    assert first == [SampleOrder(counts, 0, 0, True)[g] for g in range(50)]
    assert first != [SampleOrder(counts, 0, 1, True)[g] for g in range(50)]
    assert first != [SampleOrder(counts, 1, 0, True)[g] for g in range(50)]
    assert [SampleOrder(counts, 0, 0, False)[g] for g in range(3)] == [(0, 0), (0, 1), (0, 2)]


def test_ranks_together_equal_one_process_with_the_global_batch(shards_dir):
    single = _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=8, num_workers=0)), 4)
    ranks = [
        _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=4, num_workers=1), r, 2), 4) for r in range(2)
    ]
    for step in range(4):
        joined = _cat([ranks[0][step], ranks[1][step]])
        for k, v in joined.items():
            assert torch.equal(v, single[step][k]), (step, k)


def test_worker_count_does_not_change_the_stream(shards_dir):
    a = _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=5, num_workers=0)), 7)
    b = _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=5, num_workers=2)), 7)
    _assert_same(a, b)


@pytest.mark.parametrize("where", ["mid_epoch", "across_epochs"])
def test_resume_from_state_dict_gives_the_same_batches(shards_dir, where):
    def make():
        cfg = LoaderConfig(shards_dir, micro_batch_size=128, num_workers=2)
        return PretrainLoader(cfg, rank=1, world_size=2)

    n = 5 if where == "mid_epoch" else make().batches_per_epoch - 2  # the 6 batches after n cross epoch 0's end
    reference = _batches(make(), n + 6)
    first = make()
    it = iter(first)
    for _ in range(n):
        next(it)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    _assert_same(_batches(resumed, 6), reference[n:])


def test_resume_on_another_world_size_with_the_same_global_batch(shards_dir):
    two = [PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=4, num_workers=0), r, 2) for r in range(2)]
    for loader in two:
        _batches(loader, 3)
    one = PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=8, num_workers=0))
    one.load_state_dict(two[0].state_dict())
    uninterrupted = _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=8, num_workers=0)), 5)
    _assert_same(_batches(one, 2), uninterrupted[3:])


def test_state_of_other_data_or_batch_size_is_refused(shards_dir, tmp_path):
    loader = PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=4, num_workers=0))
    _batches(loader, 1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="not a whole number of global batches"):
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=3, num_workers=0)).load_state_dict(state)
    with pytest.raises(ValueError, match="other data"):
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=4, split="val", num_workers=0)).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1"):
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=4, seed=1, num_workers=0)).load_state_dict(state)


def test_masking_rates_and_special_tokens(shards_dir):
    loader = PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=2000, num_workers=0))
    batch = next(iter(loader))
    special = torch.tensor(sorted(loader.index.special_ids.values()))
    ids, pos, labels = batch["input_ids"], batch["mlm_positions"], batch["mlm_labels"]
    assert batch["num_tokens"] > 200_000
    # specials are never targets, and every special token of the samples is still in place
    assert not torch.isin(labels, special).any()
    starts = batch["cu_seqlens"][:-1].long()
    ends = batch["cu_seqlens"][1:].long() - 1
    assert (ids[starts] == loader.index.special_ids["cls"]).all() and (
        ids[ends] == loader.index.special_ids["sep"]
    ).all()
    maskable = batch["num_tokens"] - 2 * (len(batch["cu_seqlens"]) - 1)
    assert abs(len(pos) / maskable - 0.30) < 0.01
    at = ids[pos]
    mask_share = (at == loader.index.special_ids["mask"]).float().mean().item()
    same_share = (at == labels).float().mean().item()
    random_share = 1 - mask_share - same_share
    assert abs(mask_share - 0.8) < 0.02 and abs(same_share - 0.1) < 0.02 and abs(random_share - 0.1) < 0.02
    assert not torch.isin(at[(at != labels) & (at != loader.index.special_ids["mask"])], special).any()
    # positions are inside the batch and sorted within each sample
    assert pos.min() >= 0 and pos.max() < batch["num_tokens"]


def test_masking_config_is_used_and_validated(shards_dir):
    cfg = LoaderConfig(shards_dir, micro_batch_size=500, num_workers=0, mlm=MLMConfig(mask_prob=0.15))
    batch = next(iter(PretrainLoader(cfg)))
    maskable = batch["num_tokens"] - 2 * (len(batch["cu_seqlens"]) - 1)
    assert abs(len(batch["mlm_positions"]) / maskable - 0.15) < 0.01
    with pytest.raises(ValueError, match="mlm.mask_prob=1.5"):
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=1, mlm=MLMConfig(mask_prob=1.5)))


def test_batch_layout(shards_dir):
    batch = next(iter(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=6, num_workers=0))))
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == batch["num_tokens"] == len(batch["input_ids"])
    assert batch["max_seqlen"] == int((cu[1:] - cu[:-1]).max()) <= 128
    assert batch["input_ids"].dtype == torch.int64 and batch["sample_ids"].shape == (6, 2)
    assert len(batch["mlm_positions"]) == len(batch["mlm_labels"]) > 0


def test_corrupt_shard_is_named(shards_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(shards_dir, data)
    victim = data / "train-000002.tar"
    raw = bytearray(victim.read_bytes())
    raw[5000] ^= 0xFF
    victim.write_bytes(bytes(raw))
    loader = PretrainLoader(LoaderConfig(str(data), micro_batch_size=64, num_workers=1, shuffle=False, epochs=1))
    with pytest.raises(Exception, match=r"shard train-000002\.tar: corrupt"):
        list(loader)


def test_missing_data_dir_and_too_small_split(shards_dir, tmp_path):
    with pytest.raises(DataPrepError, match="no such directory"):
        PretrainLoader(LoaderConfig(str(tmp_path / "none"), micro_batch_size=1))
    with pytest.raises(DataPrepError, match="fewer than one global batch"):
        PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=100_000))
