#!/usr/bin/env bash
# Qualify a CUDA machine in one command: install the GPU extras, run the GPU tests (flash-attn and torch
# varlen attention, forward and backward, against the SDPA reference), then measure pretraining on one
# GPU: presets 50m and 120m, dense and MoL, torch.compile off and on, bf16 — tokens/s, MFU (per-application
# FLOPs over PEAK_TFLOPS, default 989: H100 bf16 dense) and peak memory.
#   bash scripts/gpu_check.sh                 # results: runs/gpu_check/gpu_check.{json,md}
#   STEPS=60 OUT=runs/gpu_h200 bash scripts/gpu_check.sh
# Without a CUDA GPU it says so in one line and exits 2. A failed flash-attn build is reported and the
# rest still runs (the torch varlen backend needs no extra).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi lists none); nothing to check" >&2
    exit 2
fi
source scripts/setup_env.sh
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch $(python -c 'import torch; print(torch.__version__)') in $VIRTUAL_ENV has no CUDA; install a CUDA build of the pinned version (constraints.txt)" >&2
    exit 2
fi
OUT="${OUT:-runs/gpu_check}"
STEPS="${STEPS:-40}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpus.txt"

echo "== 1/3 GPU extras (flash-attn; building it can take a while)"
if ! python -m pip install -q --disable-pip-version-check --no-build-isolation -c constraints.txt -r requirements-gpu.txt; then
    echo "gpu_check: flash-attn did not install; its tests will be skipped, the torch varlen backend is still tested" >&2
fi

echo "== 2/3 GPU tests"
python -m pytest -q -m gpu tests | tee "$OUT/gpu_tests.txt"

echo "== 3/3 pretraining throughput on one GPU"
if [ ! -f "$OUT/shards/index.json" ]; then
    python data_prep/build_shards.py --out "$OUT/shards" --seq-len 1024 --vocab-size 32768 --no-progress
fi
rm -f "$OUT/gpu_check.json"
for preset in 50m 120m; do
    for variant in mol dense; do
        for compile in false true; do
            extra=()
            if [ "$variant" = dense ]; then extra+=("model.mol.groups=[]"); fi
            label="$preset $variant compile=$compile"
            echo "-- $label"
            # accumulation 1 (global batch = one micro-batch of 16 x 1024) so every logged step is timed alike
            python benchmarks/bench_train.py --config "pretrain/configs/$preset.yaml" --data "$OUT/shards" \
                --steps "$STEPS" --warmup 10 --nprocs 1 --num-workers 4 --json "$OUT/gpu_check.json" --label "$label" \
                train.micro_batch_size=16 train.global_batch_tokens=16384 train.log_every=5 \
                parallel.compile="$compile" parallel.precision=bf16 log.peak_tflops="$PEAK_TFLOPS" "${extra[@]}"
        done
    done
done
python - "$OUT" <<'EOF'
import json, os, platform, subprocess, sys
import torch
out = sys.argv[1]
rows = [json.loads(line) for line in open(os.path.join(out, "gpu_check.json"))]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, commit {commit}, "
         f"Python {platform.python_version()}; 1 GPU, bf16, micro-batch 16 x 1024",
         "", "| configuration | tokens/s | TFLOP/s | MFU | peak memory GiB |", "|---|---|---|---|---|"]
for r in rows:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
    lines.append(f"| {r['label']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {mfu} | {r['memory_gib']:.1f} |")
open(os.path.join(out, "gpu_check.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
