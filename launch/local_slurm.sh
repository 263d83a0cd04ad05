#!/usr/bin/env bash
# A throw-away 2-node SLURM cluster on this one machine, for trying and testing the sbatch scripts.
#
#   sudo launch/local_slurm.sh start    # install slurm-wlm + munge if missing, start munged, slurmctld, 2 slurmd
#   sudo launch/local_slurm.sh status   # daemons and `sinfo`
#   sudo launch/local_slurm.sh stop     # `scontrol shutdown`, then make sure every daemon started here is gone
#   sudo KILL_WAIT=5 launch/local_slurm.sh start   # KillWait (SIGTERM to SIGKILL) of 5 s instead of SLURM's 30
#
# Nodes n1 and n2 (CPUs=1 each, partition `debug`) are two slurmd daemons on loopback (127.0.0.1, ports
# 17001/17002); `127.0.0.1 n1 n2` goes into /etc/hosts so `scontrol show hostnames` users can reach them.
# Both commands are idempotent. Needs root (packages, /etc, daemons). Debian/Ubuntu (apt) only.
#
# It writes /etc/slurm/slurm.conf and /etc/munge/munge.key only when they are absent or were written by this
# script (marked), so it never clobbers a real cluster's configuration. Job state is not kept across restarts
# (slurmctld -c): this cluster is disposable.
set -euo pipefail

MARK="# written by insanesr-dist launch/local_slurm.sh"
CONF=/etc/slurm/slurm.conf
STATE=/run/insanesr-local-slurm     # pid files of the daemons this script started
NODES=(n1 n2)
PORTS=(17001 17002)
# Seconds a job's processes get between SIGTERM and SIGKILL (SLURM's default, 30 s, unless set); read at start,
# when the configuration is written. The tests shorten it: a fake slow requeue must outlast it, and it bounds how
# long a cancelled or requeued job lingers.
KILL_WAIT=${KILL_WAIT:-30}

die() { echo "local_slurm: $*" >&2; exit 1; }
say() { echo "local_slurm: $*"; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pid_in() { [[ -s "$1" ]] && tr -dc '0-9' <"$1" || true; }

# Record the pid a daemon writes to pid file $1 (once it has daemonized) as one this script started.
record() {
    local i
    for i in $(seq 100); do
        alive "$(pid_in "$1")" && break
        sleep 0.1
    done
    alive "$(pid_in "$1")" || die "$2 did not start (see /var/log/)"
    echo "$(pid_in "$1")" >"$STATE/$2.pid"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

setup_hosts() {
    local node
    for node in "$(hostname -s)" "${NODES[@]}"; do
        getent hosts "$node" >/dev/null || echo "127.0.0.1 $node  $MARK" >>/etc/hosts
    done
}

start_munge() {
    mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key /var/log/munge /run/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    chmod 700 /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already serving (ours from an earlier start, or the system's)
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
    record /run/munge/munged.pid munged
    local i
    for i in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    if [[ -e "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it"
    fi
    local host
    host=$(hostname -s)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm "${NODES[@]/#//var/spool/slurmd/}"
    cat >"$CONF" <<EOF
$MARK
# A 2-node cluster on loopback: two slurmd daemons (n1, n2) on one machine.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# Requeued batch jobs wait cred_expire seconds before they start again (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdLogFile=/var/log/slurm/slurmd.%n.log
SlurmdPidFile=/run/slurmd.%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=$KILL_WAIT
MinJobAge=600
# Schedule pending (e.g. requeued) jobs within seconds, not on the default 60 s pass.
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[0]} CPUs=1 RealMemory=10000
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[1]} CPUs=1 RealMemory=10000
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    [[ "$KILL_WAIT" =~ ^[0-9]+$ ]] || die "KILL_WAIT=$KILL_WAIT is not a number of seconds"
    install_packages
    mkdir -p "$STATE"
    setup_hosts
    start_munge
    if ! alive "$(pid_in /run/slurmctld.pid)"; then
        write_conf
        slurmctld -c
        record /run/slurmctld.pid slurmctld
    fi
    local node i
    for node in "${NODES[@]}"; do
        alive "$(pid_in "/run/slurmd.$node.pid")" && continue
        slurmd -N "$node"
        record "/run/slurmd.$node.pid" "slurmd.$node"
    done
    # Ready when both nodes are up and idle (slurmd registers within a few seconds).
    for i in $(seq 120); do
        if [[ $(sinfo -h -N -t idle,mixed,allocated -o %N 2>/dev/null | sort -u | wc -l) -eq ${#NODES[@]} ]]; then
            say "cluster up"; sinfo; return
        fi
        sleep 0.5
    done
    sinfo -N -l || true
    die "nodes did not come up; see /var/log/slurm/"
}

ours() { grep -qsF "$MARK" "$CONF"; }

# Wait up to $1 tenths of a second for the pids that follow to exit; print those still alive.
wait_gone() {
    local tenths=$1 pid left i; shift
    for i in $(seq "$tenths"); do
        left=""
        for pid in "$@"; do alive "$pid" && left+=" $pid"; done
        [[ -z "$left" ]] && return
        sleep 0.1
    done
    echo $left
}

# SIGTERM, then SIGKILL, for the given pids.
terminate() {
    local left
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    left=$(wait_gone 50 "$@")
    [[ -n "$left" ]] && kill -KILL $left 2>/dev/null || true
    wait_gone 20 $left >/dev/null
}

stop() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    local slurm_pids="" munge_pid left f name names=""
    munge_pid=$(pid_in "$STATE/munged.pid")  # only a munged this script started
    if ours; then
        for f in "$STATE"/slurm*.pid /run/slurmctld.pid /run/slurmd.n1.pid /run/slurmd.n2.pid; do
            [[ -e "$f" ]] && slurm_pids+=" $(pid_in "$f")"
        done
        if alive "$(pid_in /run/slurmctld.pid)"; then
            # Jobs first: slurmd's shutdown leaves running steps (slurmstepd and the training) behind.
            # Repeated, since a job may requeue itself while it is being cancelled (up to KillWait).
            local jobs
            for _ in $(seq 40); do
                jobs=$(squeue -h -o %i 2>/dev/null || true)
                [[ -z "$jobs" ]] && break
                scancel --full $jobs 2>/dev/null || true
                sleep 1
            done
            timeout 20 scontrol shutdown >/dev/null 2>&1 || true
        fi
        left=$(wait_gone 150 $slurm_pids)
        terminate $left $(pgrep -x slurmstepd || true)  # steps of this cluster that outlived their job
    fi
    terminate $munge_pid
    rm -rf "$STATE"
    for name in slurmctld slurmscriptd slurmd slurmstepd munged; do
        pgrep -x "$name" >/dev/null && names+=" $name"
    done
    [[ -z "$names" ]] || die "still running (not started by this script, or would not stop):$names"
    say "stopped"
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        printf '%-10s %s\n' "$name" "$(pgrep -x "$name" | tr '\n' ' ')"
    done
    command -v sinfo >/dev/null && sinfo 2>&1 || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
