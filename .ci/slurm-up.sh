#!/usr/bin/env bash
# Start a single-node SLURM on this machine for tests/test_slurm.py (or find one running).
#
#   bash .ci/slurm-up.sh      # idempotent: a second call returns at once when the node is up
#   bash .ci/slurm-down.sh    # stops what this script started
#
# Needs root (Debian packages slurm-wlm 22.05 and munge; installed here with apt-get if
# missing). Writes /etc/slurm/slurm.conf only when there is none or when it is one this
# script wrote before (marker line); another cluster's config is never touched. One node
# (this machine's CPUs, 90 % of its memory), one partition "debug", no accounting
# (AccountingStorageType=accounting_storage/none, so Snakemake's SLURM plugin must poll
# with `--slurm-status-command squeue`), no cgroups (proctrack/linuxproc, task/none).
# Exits 0 when the node is idle; 1 (with the reason) when SLURM cannot be started here.
set -euo pipefail

MARKER="# written by bpttbench .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
STATE=/run/bpttbench-slurm          # pid files of what we started, for slurm-down.sh
LOGDIR=/var/log/bpttbench-slurm
WAIT_S=${SLURM_UP_WAIT_S:-60}
t0=$(date +%s.%N)

say() { echo "slurm-up: $*" >&2; }
fail() { say "$*"; exit 1; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

node_state() {  # state of our node as sinfo prints it (idle, mix, alloc, down*, drain...)
    sinfo -h -N -o '%t' 2>/dev/null | head -n1
}

node_ready() {
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

# 0. A SLURM that already answers (ours from an earlier call, or a real one): use it.
if command -v scontrol >/dev/null 2>&1 && timeout 5 scontrol ping 2>/dev/null | grep -q UP \
    && node_ready; then
    say "SLURM already up ($(sinfo -h -o '%P %D %t' | head -n1)); nothing to do ($(elapsed) s)"
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "needs root to install and start slurmctld/slurmd/munged"

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing Debian packages slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null || fail "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# 2. Config: only ours or none.
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    fail "$CONF exists and was not written by this script; start that cluster's daemons" \
        "yourself (tests/test_slurm.py uses any SLURM whose scontrol ping answers UP)"
fi
host=$(hostname -s)
# slurmd -C prints this machine's NodeName line (CPUs, sockets, cores, RealMemory).
node_line=$(slurmd -C | head -n1) || fail "slurmd -C failed"
real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
mem=$((real_mem * 9 / 10))
node_line=$(sed "s/NodeName=[^ ]*/NodeName=$host/; s/RealMemory=[0-9]*/RealMemory=$mem/" \
    <<<"$node_line")
mkdir -p /etc/slurm "$STATE" "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
conf_tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
cat >"$conf_tmp" <<EOF
$MARKER; rewritten on every start
ClusterName=bpttbench-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Keep finished jobs visible to squeue for 5 min: the Snakemake plugin polls squeue
# (no accounting) and needs MinJobAge >= 3 x its first status-check delay.
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$conf_tmp" "$CONF"
chmod 644 "$CONF"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 3. munge: a key and munged (as the munge user, as Debian runs it).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
    cp /run/munge/munged.pid "$STATE/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munge does not round-trip a credential"
fi

# 4. The daemons (as root; they daemonise and write the pid files named in slurm.conf).
# A stale daemon of ours (config changed, node down) is restarted.
for d in slurmd slurmctld; do
    if alive "$STATE/$d.pid"; then kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true; fi
done
for _ in $(seq 50); do
    alive "$STATE/slurmd.pid" || alive "$STATE/slurmctld.pid" || break
    sleep 0.1
done
# -c: start with a clean job state (this is a throw-away test cluster).
/usr/sbin/slurmctld -c || fail "slurmctld did not start; see $LOGDIR/slurmctld.log"
/usr/sbin/slurmd || fail "slurmd did not start; see $LOGDIR/slurmd.log"

# 5. Wait until the node takes jobs.
deadline=$(($(date +%s) + WAIT_S))
while ! node_ready; do
    state=$(node_state)
    case "$state" in
        down* | drain* | drng*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
        fail "node $host not idle after ${WAIT_S}s (state: ${state:-none})"
    fi
    sleep 0.5
done
say "SLURM up: $(sinfo -h -o 'partition %P, %D node, %c CPUs, %m MB, %t') ($(elapsed) s)"
