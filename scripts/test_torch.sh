#!/usr/bin/env bash
# Run the CPU tests on another torch release than the pin, in a venv of its own (.venv-torch<VERSION>),
# e.g. the GPU image's 2.11 before a GPU run. Extra arguments go to pytest.
#   bash scripts/test_torch.sh 2.11.0 -m "not slow"
# PyPI's x86-64 Linux wheels of torch are CUDA builds (about 3 GB with their libraries) that run on CPU.
# DeepSpeed, W&B and the S3 test server are left out: their tests skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: bash scripts/test_torch.sh TORCH_VERSION [pytest args...]}"
shift
venv="${VENV:-.venv-torch$version}"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
venv="$(cd "$venv" && pwd)"
stamp="$venv/.installed"
if [ ! -f "$stamp" ]; then
    reqs="$(mktemp)"
    trap 'rm -f "$reqs"' EXIT
    grep -hv '^torch' requirements.txt | sed 's/#.*//' > "$reqs"
    echo "torch==$version" > "$reqs.constraints"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$reqs.constraints" "torch==$version" \
        -r "$reqs" pytest scipy scikit-learn matplotlib setuptools wheel
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-teacher.txt
    rm -f "$reqs.constraints"
    touch "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$venv/bin:$PATH"
"$venv/bin/python" -c "import torch; print(f'torch {torch.__version__} in $venv')"
# no paths given: pytest takes testpaths (tests/) from pyproject.toml; given ones run alone
exec "$venv/bin/python" -m pytest "$@"
