#!/usr/bin/env bash
# The whole pipeline on the shipped sample corpus, on CPU. Installs what it needs first.
#   bash scripts/quickstart.sh            # outputs under runs/quickstart/
# Stages built so far: corpus -> tokenizer + shards -> loader check -> 2-process pretraining of `tiny`.
# Consolidation, expert merging and HF export join this script as they land.
# STEPS=50 bash scripts/quickstart.sh runs a shorter pretraining.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
OUT="${OUT:-runs/quickstart}"
mkdir -p "$OUT"

echo "== 1/3 tokenizer + shards from the sample corpus"
python data_prep/build_shards.py --out "$OUT/shards" --seq-len 256 --vocab-size 8192 --shard-mb 1 --val-fraction 0.02

echo "== 2/3 loader check: two data-parallel ranks, one batch of rank 0"
python -m pretrain.data "$OUT/shards" --micro-batch-size 8 --world-size 2 --num-workers 2

echo "== 3/3 pretraining: tiny preset, 2 processes (torchrun, FSDP2 on gloo)"
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m pretrain.train --config pretrain/configs/tiny.yaml \
    data.dir="$OUT/shards" run_dir="$OUT/tiny" train.steps="${STEPS:-200}"

echo
echo "artifacts:"
echo "  tokenizer  $OUT/shards/tokenizer.model"
echo "  shards     $OUT/shards/{train,val}-*.tar"
echo "  index      $OUT/shards/index.json"
echo "  run        $OUT/tiny/{config.yaml,metrics.jsonl}"
echo "  checkpoint $OUT/tiny/checkpoints/latest"
