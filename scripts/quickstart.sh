#!/usr/bin/env bash
# The whole pipeline on the shipped sample corpus, on CPU. Installs what it needs first.
#   bash scripts/quickstart.sh            # outputs under runs/quickstart/
# corpus -> tokenizer + shards -> 2-process pretraining of `tiny` -> consolidated checkpoint ->
# merged experts (adapter, and folded) -> HuggingFace exports (modernalbert, stock modernbert) -> fill-mask.
# STEPS=50 shortens the pretraining; OUT=dir writes elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
OUT="${OUT:-runs/quickstart}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== 1/6 tokenizer + shards from the sample corpus"
python data_prep/build_shards.py --out "$OUT/shards" --seq-len 256 --vocab-size 8192 --shard-mb 1 --val-fraction 0.02

echo "== 2/6 pretraining: tiny preset, 2 processes (python -m pretrain.torchrun, FSDP2 on gloo)"
OMP_NUM_THREADS=1 python -m pretrain.torchrun --standalone --nproc-per-node 2 -m pretrain.train \
    --config pretrain/configs/tiny.yaml data.dir="$OUT/shards" run_dir="$OUT/tiny" train.steps="${STEPS:-200}"

echo "== 3/6 consolidate the sharded checkpoint"
python tools/consolidate_checkpoint.py "$OUT/tiny" --out "$OUT/native" --overwrite

echo "== 4/6 merge the MoL experts: one adapter per layer, and folded into the dense weights"
python tools/merge_experts.py "$OUT/native" --out "$OUT/merged" --method uniform --overwrite
python tools/merge_experts.py "$OUT/native" --out "$OUT/folded" --method uniform --fold --overwrite

echo "== 5/6 HuggingFace exports (logits verified against the native model)"
python tools/convert_to_hf.py "$OUT/native" --out "$OUT/hf" --format modernalbert --overwrite
python tools/convert_to_hf.py "$OUT/folded" --out "$OUT/hf-modernbert" --format modernbert --overwrite

echo "== 6/6 fill-mask with the exported models"
SENTENCE="And he said unto them, Go ye into all the [MASK], and preach the gospel."
python tools/fill_mask.py "$OUT/hf" "$SENTENCE"
python tools/fill_mask.py "$OUT/hf-modernbert" "$SENTENCE"

echo
echo "artifacts:"
echo "  tokenizer + shards   $OUT/shards/{tokenizer.model,index.json,train-*.tar,val-*.tar}"
echo "  training run         $OUT/tiny/{config.yaml,metrics.jsonl,eval.jsonl,checkpoints/}"
echo "  consolidated         $OUT/native/{model.safetensors,config.json,tokenizer.model}"
echo "  merged experts       $OUT/merged (one adapter per MoL layer), $OUT/folded (no MoL)"
echo "  HF, custom code      $OUT/hf             AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True)"
echo "  HF, stock ModernBERT $OUT/hf-modernbert  AutoModelForMaskedLM.from_pretrained(dir)"
