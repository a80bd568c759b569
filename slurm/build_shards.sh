#!/usr/bin/env bash
# Build shards on many nodes as a SLURM array:  sbatch slurm/build_shards.sh --out /shared/shards CORPUS... [build options]
# Submit from the repository root; --out must be on a file system every node sees. Each array task
# builds every N-th shard (N = the array size; --num-tasks/--task-id come from SLURM's array
# variables), task 0 also trains the tokenizer while the others wait for it, and the last task to
# finish writes index.json: the result is byte-identical to a one-machine build with the same options.
# A failed or cancelled task: resubmit the same command (finished shards are kept), or rerun just that
# task with --task-id I --num-tasks N; `python data_prep/build_shards.py … --finalize` joins by hand.
# Environment: VENV (virtualenv to activate). Edit the headers (array size, partition, account, time).
#SBATCH --job-name=modernalbert-shards
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [[ -n "${VENV:-}" ]]; then source "$VENV/bin/activate"; fi
echo "array job ${SLURM_ARRAY_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID:-?} of ${SLURM_ARRAY_TASK_COUNT:-?} on $(hostname)"
exec python data_prep/build_shards.py --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress "$@"
