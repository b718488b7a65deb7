#!/usr/bin/env bash
# Stop the SLURM daemons (and munged) that .ci/slurm-up.sh started; leave anything else alone.
# Idempotent: with nothing of ours running it says so and exits 0. Jobs still queued or
# running on the test cluster are cancelled first so that no job outlives its daemons.
# Then the slurm.conf that slurm-up.sh wrote is removed: with a config naming a controller
# that is down, every `scontrol` call waits ~9 s, and the Snakemake SLURM plugin calls it
# each time snakemake starts (even for local runs); with no config it fails at once.
set -uo pipefail

MARKER="# written by bpttbench .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
STATE=/run/bpttbench-slurm
t0=$(date +%s.%N)
say() { echo "slurm-down: $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
remove_our_conf() {
    if [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF" && ! pgrep -x slurmctld >/dev/null; then
        rm -f "$CONF" && say "removed $CONF (written by slurm-up.sh)"
    fi
}

if ! alive "$STATE/slurmctld.pid" && ! alive "$STATE/slurmd.pid" && ! alive "$STATE/munged.pid"; then
    say "no daemon of .ci/slurm-up.sh is running; nothing to stop"
    rm -f "$STATE"/*.pid 2>/dev/null
    remove_our_conf
    exit 0
fi

if alive "$STATE/slurmctld.pid"; then
    scancel --user="$(id -un)" 2>/dev/null || true
fi
# slurmd before slurmctld, munged last (the others authenticate through it).
for d in slurmd slurmctld munged; do
    f="$STATE/$d.pid"
    if alive "$f"; then
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$d (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null
        fi
        say "stopped $d (pid $pid)"
    fi
    rm -f "$f"
done
remove_our_conf
say "done ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"
