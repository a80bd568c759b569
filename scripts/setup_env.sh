#!/usr/bin/env bash
# Create (or update) the project's virtual environment and install the project into it.
# Source it to get the venv activated:  source scripts/setup_env.sh
# VENV=/path/to/venv chooses where (default: .venv in the repo root). Torch is pinned through
# constraints.txt so no install can replace the CPU build with a multi-GB CUDA one.
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$_repo/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    python3 -m venv "$VENV" || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
_stamp="$VENV/.modernalbert-installed"
_want="$(cat "$_repo/requirements.txt" "$_repo/requirements-dev.txt" "$_repo/requirements-teacher.txt" "$_repo/requirements-deepspeed.txt" "$_repo/requirements-megatron.txt" "$_repo/constraints.txt" "$_repo/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "setup: installing requirements into $VENV"
    python -m pip install -q --disable-pip-version-check -c "$_repo/constraints.txt" \
        -r "$_repo/requirements.txt" -r "$_repo/requirements-dev.txt" || return 1 2>/dev/null || exit 1
    python -m pip install -q --disable-pip-version-check --no-deps -r "$_repo/requirements-teacher.txt" \
        || return 1 2>/dev/null || exit 1
    python -m pip install -q --disable-pip-version-check --no-build-isolation -c "$_repo/constraints.txt" \
        -r "$_repo/requirements-deepspeed.txt" || return 1 2>/dev/null || exit 1
    python -m pip install -q --disable-pip-version-check -c "$_repo/constraints.txt" \
        -r "$_repo/requirements-megatron.txt" || return 1 2>/dev/null || exit 1
    python -m pip install -q --disable-pip-version-check --no-deps -e "$_repo" || return 1 2>/dev/null || exit 1
    echo "$_want" > "$_stamp"
fi
unset _repo _stamp _want
