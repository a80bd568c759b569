#!/usr/bin/env bash
# Shared body of slurm/pretrain_*.sh (sourced after CONFIG is set; run from the repository root).
# One srun task per node starts torchrun with one worker per GPU; the rendezvous comes from SLURM's
# variables (first node of the allocation, job id as rendezvous id).
#
# Preemption: SLURM sends SIGUSR1 to the step's processes 120 s before the time limit (--signal) or
# on preemption. torchrun would die of it (it does not handle USR1), so it runs with USR1 ignored;
# the training workers install their own handler, agree on a step, save, write run_dir/preempted
# and exit 75. torchrun runs through `python -m pretrain.torchrun`, which passes the workers' exit
# status on (torchrun itself turns every failure into 1): 75 or the marker requeue the job (it
# resumes from run_dir/checkpoints/latest); 2 (a bad config, data or checkpoint: one line in the log
# says what to change) ends the job without a requeue, since a relaunch would fail the same way.
set -euo pipefail

: "${CONFIG:?CONFIG must name a pretrain/configs/*.yaml}"
if [[ -z "${SLURM_JOB_NODELIST:-}" ]]; then
    echo "$(basename "$0"): not inside a SLURM job (SLURM_JOB_NODELIST is unset): submit it with sbatch $0;" \
         "on one machine use python -m pretrain.torchrun --standalone --nproc-per-node N -m pretrain.train" >&2
    exit 2
fi
RUN_DIR="${RUN_DIR:-runs/$(basename "$CONFIG" .yaml)}"
NNODES="${SLURM_NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
# The whole list is read (no `| head`): under pipefail, head closing the pipe early would let SIGPIPE
# (exit 141) kill the script on a large allocation.
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MASTER_ADDR="${HOSTS[0]:?scontrol listed no hosts for $SLURM_JOB_NODELIST}"
MASTER_PORT="${MASTER_PORT:-29500}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
if [[ -n "${VENV:-}" ]]; then source "$VENV/bin/activate"; fi

echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $NNODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $MASTER_ADDR:$MASTER_PORT, run_dir $RUN_DIR"

rc=0
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c 'trap "" USR1; exec "$@"' ignore-usr1 \
    python -m pretrain.torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    -m pretrain.train --config "$CONFIG" run_dir="$RUN_DIR" "$@" || rc=$?

if [[ -f "$RUN_DIR/preempted" || $rc -eq 75 ]]; then
    echo "preempted after step $(cat "$RUN_DIR/preempted" 2>/dev/null || echo '?'); requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$rc"
