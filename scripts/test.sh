#!/usr/bin/env bash
# Run the CPU test suite (installs what it needs first). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k loader -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest tests "$@"
