#!/usr/bin/env bash
# Pretrain ModernALBERT-120m on SLURM:  sbatch slurm/pretrain_120m.sh [dotted.key=value ...]
# Submit from the repository root. Environment: VENV (virtualenv to activate), RUN_DIR (default
# runs/120m), GPUS_PER_NODE (default: SLURM's count). Edit the headers for your cluster (partition,
# account, nodes); the global batch is in tokens, so the number of GPUs does not change the run.
#SBATCH --job-name=modernalbert-120m
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
cd "${SLURM_SUBMIT_DIR:-.}"
CONFIG=pretrain/configs/120m.yaml
source slurm/torchrun_job.sh
