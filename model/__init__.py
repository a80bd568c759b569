"""ModernALBERT model (single device; no torch.distributed)."""
