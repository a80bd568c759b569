"""Data preparation: text corpora -> tokenizer + webdataset tar shards + index.json."""
