"""Validation MLM loss and accuracy on the shards' ``val`` split, over every rank.

The order is unshuffled and the masks are seeded per sample (``pretrain/data.py``), so the same model
gets the same number at any step, on any number of ranks (up to the dropped remainder of the split).
Collective under FSDP: every rank runs its share of the batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from data_prep.errors import DataPrepError
from data_prep.shards import ShardError
from model.modernalbert import model_inputs
from pretrain.config import DataConfig
from pretrain.data import LoaderConfig, PretrainLoader
from pretrain.reduce import all_reduce, first_fault


def val_loader(data: DataConfig, micro_batch_size: int, rank: int, world: int) -> PretrainLoader | None:
    """The validation loader of a run's ``data:`` section, or None (with the reason printed on rank 0) when the
    data has no usable val split. One pass in file order, masked with seed 0 whatever ``data.seed`` is, so
    validation numbers compare across runs."""
    try:
        cfg = LoaderConfig.of(data, micro_batch_size, split="val", shuffle=False, num_workers=0, epochs=1, seed=0)
        return PretrainLoader(cfg, rank, world)
    except DataPrepError as e:
        if rank == 0:
            print(f"validation skipped: {e}")
        return None


@torch.no_grad()
def val_scores(
    model: torch.nn.Module,
    loader: PretrainLoader,
    device: torch.device,
    max_batches: int = 0,
    beat: Callable[[], None] | None = None,
) -> dict:
    """{"val_loss", "val_accuracy", "val_masked"}: means over every masked token of the evaluated batches.

    ``beat`` is called before each batch (the trainer's hang watchdog: progress, however long the split)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # CE sum, correct, masked tokens
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "sample_cursor": 0})  # from the start
    batches = iter(loader)
    for i in itertools.count():
        if max_batches and i >= max_batches:
            break
        if beat is not None:
            beat()
        try:
            b, fault = next(batches), None
        except StopIteration:  # every rank has the same number of batches
            break
        except ShardError as e:
            b, fault = None, str(e)
        fault = first_fault(fault)  # a bad val shard on one rank stops all of them here, together
        if fault or b is None:
            raise ShardError(fault or "no batch")
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs(b).items()}
        out = model(**inputs)
        n = out.num_masked
        sums += torch.tensor([out.mlm_loss.item() * n, out.mlm_accuracy.item() * n, n], dtype=torch.float64)
    model.train(was_training)
    ce, correct, masked = all_reduce(sums).tolist()
    return {"val_loss": ce / max(masked, 1), "val_accuracy": correct / max(masked, 1), "val_masked": int(masked)}
