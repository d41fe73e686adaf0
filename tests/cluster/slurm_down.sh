#!/usr/bin/env bash
# Stop the SLURM daemons that tests/cluster/slurm_up.sh started (and only those), by the PIDs it
# recorded in $CAPSROUTE_SLURM_STATE (default /run/capsroute-slurm). Daemons it found already
# running, or started by anyone else, are left alone. Order: slurmd, slurmctld, slurmdbd, mariadbd,
# munged. SIGTERM, then SIGKILL after $CAPSROUTE_SLURM_STOP_WAIT seconds (default 20).
set -u -o pipefail
T0=$(date +%s.%N)
STATE=${CAPSROUTE_SLURM_STATE:-/run/capsroute-slurm}
STOP_WAIT=${CAPSROUTE_SLURM_STOP_WAIT:-20}

die() { echo "slurm_down: $*" >&2; exit 1; }
say() { echo "slurm_down: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (uid is $(id -u))"
if [ ! -d "$STATE" ]; then say "no state dir $STATE: nothing to stop"; exit 0; fi

rc=0
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    f="$STATE/$name.pid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # the pid must still be that daemon (a recycled pid is not ours to kill)
    if [ -z "$pid" ] || [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != "$name" ]; then
        say "$name (pid ${pid:-?}) is not running any more"; rm -f "$f"; continue
    fi
    kill -TERM "$pid" 2>/dev/null
    end=$(( $(date +%s) + STOP_WAIT ))
    while [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ] && [ "$(date +%s)" -lt "$end" ]; do
        sleep 0.2
    done
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
        kill -KILL "$pid" 2>/dev/null; sleep 0.5
        say "$name (pid $pid) ignored SIGTERM for ${STOP_WAIT}s; sent SIGKILL"
    else
        say "stopped $name (pid $pid)"
    fi
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
        echo "slurm_down: $name (pid $pid) still running after SIGKILL" >&2; rc=1
    else
        rm -f "$f"
    fi
done
awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "slurm_down: took %.1f s\n", b-a}'
exit $rc
