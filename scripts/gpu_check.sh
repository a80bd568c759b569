#!/usr/bin/env bash
# Qualify a CUDA machine in about 8 minutes, offline, with the Python it already has.
#
#   bash scripts/gpu_wheels.sh      # once, on a machine with a package index: the wheels the GPU image lacks
#   bash scripts/gpu_check.sh       # on the GPU machine, no network needed: runs/gpu_check/gpu_check.md
#
# It never creates a virtual environment and never reaches a package index. It runs scripts/gpu_check.py
# (the stages: shards, GPU attention tests, 50m and 120m throughput, 2-GPU NCCL) with PYTHON, by default
# the first python3 on PATH whose torch sees a CUDA GPU, after installing only the packages that
# interpreter lacks from the wheel folder (pip --no-index --no-deps into a temporary --target on
# PYTHONPATH). Settings, all optional, from the environment:
#   PYTHON=/path/python3   the interpreter (torch >= 2.6 with CUDA)
#   WHEELS=dir             the wheel folder (default .gpu_wheels, what scripts/gpu_wheels.sh fills)
#   OUT=dir                results: gpu_check.md, gpu_check.json, stages.log, environment.txt (runs/gpu_check)
#   SHARDS=dir             where the stage "shards" builds them (default OUT/shards; reused when present)
#   STAGES="tests 120m"    a subset of: shards tests 50m 120m nccl (default all; 50m/120m/nccl need shards)
#   STEPS=30 WARMUP=10     timed steps per configuration, after WARMUP untimed ones (compile, allocator)
#   PEAK_TFLOPS=989        per-GPU peak for MFU (default: known for H100, H200, A100, L40S, A10G, L4)
#   DEADLINE=540           seconds; a stage that would start later is skipped (each has its own cap too)
#   GPU_CHECK_CPU=1        the CPU rehearsal (what CI runs): same stages and files, tiny preset, fp32
# Exit: 0 every stage ok or skipped with a reason, 1 a stage failed or ran out of time, 2 cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${GPU_CHECK_CPU:-0}" in ""|0) cpu=0 ;; *) cpu=1 ;; esac
probe='import sys, torch; sys.exit(0 if (sys.argv[1] == "1" or torch.cuda.is_available()) else 1)'
if [ -z "${PYTHON:-}" ]; then
    tried=()
    while IFS= read -r cand; do
        tried+=("$cand")
        if "$cand" -c "$probe" "$cpu" >/dev/null 2>&1; then PYTHON="$cand"; break; fi
    done < <(type -ap python3 python | awk '!seen[$0]++')
    if [ -z "${PYTHON:-}" ]; then
        what=$([ "$cpu" = 1 ] && echo "a torch" || echo "a CUDA-enabled torch that sees a GPU")
        echo "gpu_check: no python3 on PATH imports $what (tried: ${tried[*]:-none}); set PYTHON=/path/to/python3" >&2
        exit 2
    fi
elif ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: PYTHON=$PYTHON is not an executable" >&2
    exit 2
fi
exec "$PYTHON" scripts/gpu_check.py
