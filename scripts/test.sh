#!/usr/bin/env bash
# Run the CPU test suite (installs what it needs first). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k loader -x
#   bash scripts/test.sh tests/test_faults.py     # that file only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# lint first (a second): undefined names, unused imports, syntax errors ([tool.ruff] in pyproject.toml)
python -m ruff check --quiet .
python -m ruff format --check --quiet .  # `python -m ruff format .` fixes what it reports
python -m mypy  # model/, pretrain/, fileio/, config_check/, scoring/ ([tool.mypy] in pyproject.toml; ~40 s on a fresh cache)
# no paths given: pytest takes testpaths (tests/) from pyproject.toml; given ones run alone
python -m pytest "$@"
