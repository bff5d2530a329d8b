#!/usr/bin/env bash
# A real one-machine SLURM (Debian's munge, slurmctld and slurmd) for tests/test_slurm.py and for trying
# `decnode-sweep --launcher slurm` without a cluster. Root only.
#   launch/slurm_local.sh install     apt-get the packages (only if a daemon or sbatch is missing)
#   launch/slurm_local.sh start       configure for this machine, start the daemons, wait until the node is idle
#   launch/slurm_local.sh stop        stop what start started (munge only if start started it)
# Then: export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf (start prints it) and sbatch/squeue/sinfo work.
# SLURM_LOCAL_DIR (default /var/tmp/decnode-slurm) holds slurm.conf, the daemons' state, logs and pid files;
# nothing under /etc is written. The node is this machine as `slurmd -C` sees it (its CPUs and memory), one
# partition "debug". No cgroups (containers often have none to give): processes are tracked by their parent
# (proctrack/linuxproc) and not bound to cores (task/none), which also holds for gVisor.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/var/tmp/decnode-slurm}
CONF=$DIR/slurm.conf
PORT=${SLURM_LOCAL_PORT:-6817}  # slurmctld; slurmd listens on PORT+1
say() { echo "slurm_local.sh: $*" >&2; }
need_root() { [[ $(id -u) == 0 ]] || { say "must run as root (daemons, /run/munge)"; exit 2; }; }
missing() { local t; for t in munged slurmctld slurmd sbatch sinfo squeue scontrol; do
    command -v "$t" >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "$t"; return 0; }; done; return 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
    need_root
    if ! missing >/dev/null; then return 0; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurmctld slurmd munge >/dev/null \
        || { say "apt-get install slurmctld slurmd munge failed (no network?)"; exit 3; }
}

start_munge() {
    # A running munged (the system's) is used as it is; one started here is stopped by stop.
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    touch "$DIR/munge.ours"
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "munged did not answer"; exit 1
}

write_conf() {
    # The node line as slurmd itself measures this machine (CPUs, sockets, cores, RealMemory), without UpTime.
    local node host
    node=$(/usr/sbin/slurmd -C | head -n 1)
    host=$(hostname -s)
    cat >"$CONF" <<EOF
# written by launch/slurm_local.sh: a one-machine cluster for decnode's tests
ClusterName=decnode
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol for 5 minutes; SIGKILL 30 s after a cancel's SIGTERM
MinJobAge=300
KillWait=30
InactiveLimit=0
SlurmdTimeout=60
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_root
    if t=$(missing); then say "$t is not installed: run '$0 install' first"; exit 3; fi
    mkdir -p "$DIR/state" "$DIR/spool"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        say "already running"; echo "export SLURM_CONF=$CONF"; return 0
    fi
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
    alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -o %t 2>/dev/null | head -n 1 || true)
        if [[ $state == idle* || $state == mix* || $state == alloc* ]]; then
            echo "export SLURM_CONF=$CONF"; return 0
        fi
        sleep 0.5
    done
    say "the node is not idle after 60 s (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
    exit 1
}

stop_pid() {
    local f=$1
    alive "$f" || { rm -f "$f"; return 0; }
    local pid
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

stop() {
    need_root
    # Jobs first: slurmd would leave their processes running.
    if alive "$DIR/slurmctld.pid"; then SLURM_CONF=$CONF scancel --full --quiet --user root 2>/dev/null || true; fi
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    if [[ -f $DIR/munge.ours ]]; then
        stop_pid /run/munge/munged.pid
        rm -f "$DIR/munge.ours"
    fi
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
