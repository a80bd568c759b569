"""Pretraining engine: data loader, parallelism, training loop, checkpoints."""
