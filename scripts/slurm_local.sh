#!/usr/bin/env bash
# A real one-host SLURM (slurmctld + slurmd + munged, Debian's slurm-wlm 22.05) to try the slurm/ scripts
# on one machine and to test them against (tests/test_slurm.py):
#
#   bash scripts/slurm_local.sh install       # apt-get install slurm-wlm munge when missing (root)
#   bash scripts/slurm_local.sh start DIR     # config, state and logs in DIR; prints the line to source
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch/squeue/scontrol talk to it
#   bash scripts/slurm_local.sh stop DIR
#
# The node is this host (its CPUs, no GPUs), one partition "debug"; daemons run as root with their own
# munge socket and ports (16817/16818 unless SLURMCTLD_PORT/SLURMD_PORT say otherwise), so a system
# SLURM or munge is left alone. ProctrackType=linuxproc and TaskPlugin=none: no cgroups needed. On the
# sbatch command line, override the GPU scripts' headers as a user would on a CPU node:
#   sbatch --gpus-per-node=0 --cpus-per-task=2 --time=10 slurm/pretrain_50m.sh model.preset=tiny ...
# A requeued job waits about 1.5 minutes (BeginTime); `scontrol update JobId=N StartTime=now` releases it.
set -euo pipefail

die() { echo "slurm_local: $*" >&2; exit 2; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "slurm-wlm/munge are not installed and installing them needs root (apt-get)"
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get to install them"
    echo "slurm_local: installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; } \
        || die "apt-get install slurm-wlm munge failed"
}

start() {
    local dir="${1:?usage: slurm_local.sh start DIR}"
    command -v slurmctld >/dev/null || die "slurmctld not found: run 'bash scripts/slurm_local.sh install' first"
    [[ $(id -u) == 0 ]] || die "the daemons run as root here (SlurmUser=root); run as root"
    mkdir -p "$dir/state" "$dir/spool"
    dir="$(cd "$dir" && pwd)"
    chmod 755 "$dir"  # munged wants its socket's directory reachable by all
    local host key="$dir/munge.key"
    host="$(hostname -s)"
    if [[ ! -f $key ]]; then
        if [[ -r /etc/munge/munge.key ]]; then cp /etc/munge/munge.key "$key"; else head -c 1024 /dev/urandom > "$key"; fi
        chmod 600 "$key"
    fi
    cat > "$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc --all) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    munged -f --socket="$dir/munge.sock" --key-file="$key" --log-file="$dir/munged.log" \
        --pid-file="$dir/munged.pid" --seed-file="$dir/munged.seed" || die "munged did not start ($dir/munged.log)"
    slurmctld -f "$dir/slurm.conf" || die "slurmctld did not start ($dir/slurmctld.log)"
    slurmd -f "$dir/slurm.conf" || die "slurmd did not start ($dir/slurmd.log)"
    export SLURM_CONF="$dir/slurm.conf"
    local i
    for i in $(seq 60); do  # the node registers within a few seconds
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.5
    done
    stop "$dir"
    die "the node did not come up idle within 30 s ($dir/slurmctld.log, $dir/slurmd.log)"
}

stop() {
    local dir="${1:?usage: slurm_local.sh stop DIR}" name pid
    for name in slurmd slurmctld munged; do
        pid="$(cat "$dir/$name.pid" 2>/dev/null || true)"
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done
    for name in slurmd slurmctld munged; do
        pid="$(cat "$dir/$name.pid" 2>/dev/null || true)"
        for _ in $(seq 50); do [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
}

case "${1:-}" in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: bash scripts/slurm_local.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
