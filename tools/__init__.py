"""Checkpoint consolidation, expert merging, HuggingFace conversion."""
