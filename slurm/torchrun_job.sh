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

# srun runs in the background so that this shell can pass SIGUSR1 on: with `#SBATCH --signal=B:USR1@...`
# or `scancel --signal=USR1 --full` the signal reaches this batch shell, which would die of it (the job then
# ends FAILED, not requeued, although the workers saved). srun forwards it to the step's processes; a
# worker that also got it directly ignores the repeat. SIGTERM (scancel, scontrol requeue, the time limit)
# keeps bash's default: SLURM itself requeues or ends the job then, and a cancel must stay a cancel.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c 'trap "" USR1; exec "$@"' ignore-usr1 \
    python -m pretrain.torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    -m pretrain.train --config "$CONFIG" run_dir="$RUN_DIR" "$@" &
srun_pid=$!
trap 'signalled=1; kill -USR1 "$srun_pid" 2>/dev/null || true' USR1
while :; do
    signalled=0 rc=0
    wait "$srun_pid" || rc=$?
    [[ $signalled == 1 && $rc -gt 128 ]] || break  # a wait cut short by the trap: the step still runs
done
trap - USR1

# 75: preempted after a checkpoint; 76: a collective waited past parallel.collective_timeout_s (a hung
# rank, the stacks are in $RUN_DIR/hang/): both transient, so requeue and resume from the last checkpoint.
# A hang that comes back without progress would loop: after HANG_REQUEUES (default 3) hangs at the same
# checkpoint the job ends instead.
if [[ -f "$RUN_DIR/preempted" || $rc -eq 75 ]]; then
    echo "preempted after step $(cat "$RUN_DIR/preempted" 2>/dev/null || echo '?'); requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
if [[ $rc -eq 76 ]]; then
    latest="$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo none)"
    echo "$latest" >> "$RUN_DIR/hangs"
    hangs=$(grep -cxF "$latest" "$RUN_DIR/hangs")
    if (( hangs <= ${HANG_REQUEUES:-3} )); then
        echo "hung collective (hang $hangs at checkpoint $latest); requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "hung collective $hangs times at checkpoint $latest (HANG_REQUEUES=${HANG_REQUEUES:-3}): not requeueing;" \
         "the stacks are in $RUN_DIR/hang/"
fi
exit "$rc"
