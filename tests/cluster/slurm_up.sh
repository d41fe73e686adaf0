#!/usr/bin/env bash
# Bring up a real single-node SLURM (Debian 12: slurm-wlm 22.05) cluster on this machine:
# munged, mariadbd, slurmdbd, slurmctld, slurmd. No systemd needed; must run as root.
#
# Idempotent: a daemon that is already running is detected (by process name) and left alone.
# The PIDs of the daemons THIS script started are recorded in $CAPSROUTE_SLURM_STATE
# (default /run/capsroute-slurm); tests/cluster/slurm_down.sh stops exactly those.
#
# Environment knobs:
#   CAPSROUTE_SLURM_STATE        state dir (pid files, daemon stdout logs)  [/run/capsroute-slurm]
#   CAPSROUTE_SLURM_CLUSTER      ClusterName                                 [capsroute]
#   CAPSROUTE_SLURM_PARTITION    name of the one (default) partition        [main]
#   CAPSROUTE_SLURM_MEM_MARGIN_MB memory kept back from RealMemory           [max(1024, 10% of MemTotal)]
#   CAPSROUTE_SLURM_CRED_EXPIRE  AuthInfo=cred_expire (s); also the wait before a requeued job
#                                may start again (SLURM default 120)          [15]
#   CAPSROUTE_SLURM_WAIT         seconds to wait for each daemon / the node   [60]
#
# On failure: exit 1 with one line on stderr (for a daemon: its log path and last log lines).
set -u -o pipefail

T0=$(date +%s.%N)
STATE=${CAPSROUTE_SLURM_STATE:-/run/capsroute-slurm}
CLUSTER=${CAPSROUTE_SLURM_CLUSTER:-capsroute}
PARTITION=${CAPSROUTE_SLURM_PARTITION:-main}
CRED_EXPIRE=${CAPSROUTE_SLURM_CRED_EXPIRE:-15}
WAIT=${CAPSROUTE_SLURM_WAIT:-60}
PKGS=(slurm-wlm munge slurmdbd mariadb-server)

die() { echo "slurm_up: $*" >&2; exit 1; }
say() { echo "slurm_up: $*"; }

# one line: "<log path>: <last 3 lines joined by ' | '>" of the most recently written of the given logs
log_tail() {
    local f best=""
    for f in "$@"; do
        [ -s "$f" ] || continue
        if [ -z "$best" ] || [ "$f" -nt "$best" ]; then best=$f; fi
    done
    if [ -z "$best" ]; then printf '(no log output in %s)' "$*"; return; fi
    printf '%s: %s' "$best" "$(tail -n 3 "$best" | tr '\t' ' ' | sed 's/ *$//' | paste -sd '|' | sed 's/|/ | /g' | cut -c1-600)"
}

[ "$(id -u)" = 0 ] || die "must run as root (uid is $(id -u))"
[ "$(uname -s)" = Linux ] || die "Linux only"

# ---------------------------------------------------------------- packages
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    ti=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$STATE"
    apt-get update -qq --error-on=any >"$STATE/apt.log" 2>&1 \
        || die "apt-get update failed (apt unreachable?): $(log_tail "$STATE/apt.log")"
    apt-get install -y -qq "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
        || die "apt-get install ${missing[*]} failed: $(log_tail "$STATE/apt.log")"
    say "installed in $(( $(date +%s) - ti )) s"
fi
for b in munged mariadbd mariadb slurmdbd slurmctld slurmd sacctmgr sinfo srun sacct setpriv; do
    command -v "$b" >/dev/null || die "$b not found after install"
done

mkdir -p "$STATE" || die "cannot create state dir $STATE"
HOST=$(hostname -s)
[ -n "$HOST" ] || die "hostname -s is empty"

# ---------------------------------------------------------------- daemon helpers
# running NAME -> pid of a running process called NAME (ours first), else nothing
running() {
    local name=$1 pid
    if [ -f "$STATE/$name.pid" ]; then
        pid=$(cat "$STATE/$name.pid")
        if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
            echo "$pid"; return 0
        fi
        rm -f "$STATE/$name.pid"          # stale: that process is gone
    fi
    pgrep -x "$name" | head -n 1
}

# start NAME LOGFILE CMD... : run CMD in the foreground in its own session, record its pid.
STARTED=()
start() {
    local name=$1 log=$2; shift 2
    local pid
    pid=$(running "$name")
    if [ -n "$pid" ]; then
        if [ -f "$STATE/$name.pid" ]; then say "$name already running (pid $pid, started by us earlier)"
        else say "$name already running (pid $pid, not started by us; left alone)"; fi
        return 0
    fi
    setsid "$@" >>"$STATE/$name.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$STATE/$name.pid"
    STARTED+=("$name")
    # the command execs into the daemon (setsid/setpriv exec); give it a moment and check it lives
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.2
        kill -0 "$pid" 2>/dev/null || { rm -f "$STATE/$name.pid"; die "$name exited at start; $(log_tail "$log" "$STATE/$name.out")"; }
        [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ] && break
    done
    say "started $name (pid $pid)"
}

# wait_for NAME LOGFILE DESCRIPTION CMD... : poll CMD until it succeeds
wait_for() {
    local name=$1 log=$2 what=$3; shift 3
    local end=$(( $(date +%s) + WAIT )) pid
    until "$@" >/dev/null 2>&1; do
        pid=$(running "$name")
        [ -n "$pid" ] || die "$name died before $what; $(log_tail "$log" "$STATE/$name.out")"
        [ "$(date +%s)" -lt "$end" ] || die "$name: no $what after ${WAIT}s; $(log_tail "$log" "$STATE/$name.out")"
        sleep 0.5
    done
}

# write_conf PATH MODE OWNER : stdin -> PATH only when the content changed
CHANGED=()
write_conf() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp) || die "mktemp failed"
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"
    else install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path" && rm -f "$tmp" || die "cannot write $path"
         CHANGED+=("$path"); fi
    chmod "$mode" "$path"; chown "$owner" "$path"
}

# ---------------------------------------------------------------- munge
install -d -m 0755 -o munge -g munge /run/munge
install -d -m 0700 -o munge -g munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
start munged /var/log/munge/munged.log \
    setpriv --reuid=munge --regid=munge --init-groups munged -F
wait_for munged /var/log/munge/munged.log "credential round trip" bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- mariadb
install -d -m 0755 -o mysql -g mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/mariadb-install-db.log" 2>&1 \
        || die "mariadb-install-db failed: $(log_tail "$STATE/mariadb-install-db.log")"
fi
start mariadbd "$STATE/mariadbd.out" \
    mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock
wait_for mariadbd "$STATE/mariadbd.out" "SQL answer" mariadb -uroot -e 'SELECT 1'

# slurm's DB user: keep the password of an existing slurmdbd.conf, else make one
DBPASS=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null | head -n 1)
[ -n "$DBPASS" ] || DBPASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)
mariadb -uroot >"$STATE/mariadb-setup.log" 2>&1 <<SQL || die "creating the slurm DB user failed: $(log_tail "$STATE/mariadb-setup.log")"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- slurm configs
install -d -m 0755 -o slurm -g slurm /var/log/slurm /run/slurm /var/lib/slurm \
    /var/lib/slurm/slurmctld /var/lib/slurm/slurmd

write_conf /etc/slurm/slurmdbd.conf 600 slurm:slurm <<EOF
# written by capsroute tests/cluster/slurm_up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DBPASS
EOF

# the node as slurmd itself sees it (CPUs, sockets, cores, threads), memory with a margin
NODELINE=$(slurmd -C 2>/dev/null | head -n 1)
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$NODELINE"; }
CPUS=$(field CPUs); BOARDS=$(field Boards); SPB=$(field SocketsPerBoard)
CPS=$(field CoresPerSocket); TPC=$(field ThreadsPerCore)
[ -n "$CPUS" ] || CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 ))
MARGIN=${CAPSROUTE_SLURM_MEM_MARGIN_MB:-$(( MEM_MB / 10 > 1024 ? MEM_MB / 10 : 1024 ))}
REALMEM=$(( MEM_MB - MARGIN ))
[ "$REALMEM" -gt 0 ] || die "MemTotal ${MEM_MB} MB leaves nothing after a ${MARGIN} MB margin"
TOPO="CPUs=$CPUS"
[ -n "$CPS" ] && [ -n "$TPC" ] && [ -n "$SPB" ] && \
    TOPO="$TOPO Boards=${BOARDS:-1} SocketsPerBoard=$SPB CoresPerSocket=$CPS ThreadsPerCore=$TPC"

write_conf /etc/slurm/slurm.conf 644 root:root <<EOF
# written by capsroute tests/cluster/slurm_up.sh -- single node, $HOST
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
# credential lifetime; also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SwitchType=switch/none
SchedulerType=sched/backfill
# an eligible pending job (e.g. a requeued one once its BeginTime passes) waits at most ~5 s for a
# scheduling pass instead of up to 60 s (sched_interval) / 30 s (bf_interval)
SchedulerParameters=sched_interval=5,bf_interval=5
# reject at submission a job that cannot fit the partition (e.g. more CPUs than the node has),
# instead of leaving it PENDING (Reason=PartitionConfig) forever
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets this much per CPU (not the whole node)
DefMemPerCPU=1024
# completed job records stay in slurmctld (squeue/scontrol) this long; sacct keeps them forever
MinJobAge=300
# SIGTERM -> SIGKILL grace at time limit / scancel (default 30 s)
KillWait=10
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST $TOPO RealMemory=$REALMEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- slurmdbd, cluster
start slurmdbd /var/log/slurm/slurmdbd.log slurmdbd -D
wait_for slurmdbd /var/log/slurm/slurmdbd.log "answer to sacctmgr" sacctmgr -n -P show cluster
if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >"$STATE/sacctmgr.log" 2>&1 \
        || die "sacctmgr add cluster $CLUSTER failed: $(log_tail "$STATE/sacctmgr.log")"
    say "registered cluster $CLUSTER in slurmdbd"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if [ ${#CHANGED[@]} -gt 0 ] && [ -n "$(running slurmctld)$(running slurmd)" ]; then
    say "warning: ${CHANGED[*]} changed while slurm daemons run; run slurm_down.sh then slurm_up.sh to apply"
fi
start slurmctld /var/log/slurm/slurmctld.log slurmctld -D
wait_for slurmctld /var/log/slurm/slurmctld.log "answer to scontrol ping" \
    bash -c 'scontrol ping | grep -q "is UP"'
start slurmd /var/log/slurm/slurmd.log slurmd -D

# node idle (a node left DOWN/DRAIN by an earlier run is resumed once)
end=$(( $(date +%s) + WAIT )); resumed=0
while :; do
    st=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n 1)
    case "$st" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*|fail*)
            if [ $resumed = 0 ] && [ -n "$(running slurmd)" ]; then
                scontrol update nodename="$HOST" state=resume >/dev/null 2>&1; resumed=1
            fi ;;
    esac
    [ -n "$(running slurmd)" ] || die "slurmd died before the node came up; $(log_tail /var/log/slurm/slurmd.log "$STATE/slurmd.out")"
    if [ "$(date +%s)" -ge "$end" ]; then
        reason=$(sinfo -h -n "$HOST" -o '%E' 2>/dev/null | head -n 1)
        die "node $HOST is '${st:-unknown}' (reason: ${reason:-none}) after ${WAIT}s; $(log_tail /var/log/slurm/slurmctld.log)"
    fi
    sleep 0.5
done

# ---------------------------------------------------------------- smoke: srun + sacct
out=$(timeout "$WAIT" srun -N1 -n1 -t 1 --mem=64 -J capsroute-smoke \
        bash -c 'echo "$SLURM_JOB_ID $(hostname -s)"' 2>"$STATE/srun.err") \
    || die "srun hostname failed: $(log_tail "$STATE/srun.err" /var/log/slurm/slurmctld.log)"
jid=${out%% *}; node=${out#* }
[ "$node" = "$HOST" ] || die "srun ran on '$node', expected '$HOST' (srun printed '$out')"
# the job's record reaches slurmdbd asynchronously; give it a few seconds
end=$(( $(date +%s) + 20 ))
until [ "$(sacct -n -X -P -o State -j "$jid" 2>/dev/null | head -n 1)" = COMPLETED ]; do
    [ "$(date +%s)" -lt "$end" ] || die "sacct does not show smoke job $jid COMPLETED 20 s after srun; $(log_tail /var/log/slurm/slurmdbd.log /var/log/slurm/slurmctld.log)"
    sleep 0.5
done
say "smoke job $jid: srun ran on $node, sacct says COMPLETED"

T1=$(date +%s.%N)
say "node $HOST: $(sinfo -h -n "$HOST" -o 'partition=%R cpus=%c mem=%mMB state=%T')"
say "daemons started now: ${STARTED[*]:-none}; state in $STATE; stop with tests/cluster/slurm_down.sh"
awk -v a="$T0" -v b="$T1" 'BEGIN{printf "slurm_up: bring-up took %.1f s\n", b-a}'
