#!/usr/bin/env bash
# Start and stop a real single-node SLURM (slurmctld + slurmd + munged) for tests and CI.
#
#   cluster.sh install             apt-get install slurmctld slurmd slurm-client munge (only if missing)
#   cluster.sh start  STATE_DIR    write STATE_DIR/etc/{slurm,cgroup}.conf, start the daemons, wait for
#                                  the node to be idle; the last line on stdout is `export SLURM_CONF=...`
#   cluster.sh stop   STATE_DIR    stop slurmd + slurmctld (+ munged if this script started it) by their
#                                  pid files, wait until gone, remove the empty cgroups slurmd created
#   cluster.sh status STATE_DIR    exit 0 if the controller answers `scontrol ping`
#
# Needs root, Debian 12 (slurm-wlm 22.05), a cgroup v1 memory controller under /sys/fs/cgroup/memory.
# Everything SLURM writes goes under STATE_DIR; nothing in /etc/slurm is created or read. The client
# tools (sbatch, squeue, scontrol, sinfo, scancel, srun, sacct) need SLURM_CONF=STATE_DIR/etc/slurm.conf
# in their environment: without it (and with no /etc/slurm/slurm.conf) they try a DNS SRV lookup and
# exit 1 with "fatal: Could not establish a configuration source". The file must be readable by the
# user running them (for `runuser -u nobody -- sbatch`), so `start` makes STATE_DIR and etc/ 0755.
# Inside a job, slurmstepd sets SLURM_CONF itself (even with --export=NONE).
# Only stdout line: the final `export SLURM_CONF=...` of `start`; all diagnostics go to stderr.
#
# Environment knobs (all optional):
#   SLURM_TEST_CTLD_PORT (6817) SLURM_TEST_SLURMD_PORT (6818)  ports (one cluster per host: the node
#                                  name and the cgroup dirs /sys/fs/cgroup/*/slurm_<host> are shared)
#   SLURM_TEST_START_TIMEOUT (30)  seconds to wait for the node to become idle
#   SLURM_TEST_SLURMD_TIMEOUT (10) SlurmdTimeout: a dead slurmd makes its jobs NODE_FAIL after about this
set -euo pipefail

PROG=$(basename "$0")
PACKAGES=(slurmctld slurmd slurm-client munge)
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6818}
START_TIMEOUT=${SLURM_TEST_START_TIMEOUT:-30}
SLURMD_TIMEOUT=${SLURM_TEST_SLURMD_TIMEOUT:-10}
CGROUP_ROOT=/sys/fs/cgroup

log() { echo "$PROG: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

state_dir() {  # absolute path of STATE_DIR; `start` creates it, the others need it to exist
    [[ -n ${1:-} ]] || die "usage: $PROG ${CMD} STATE_DIR"
    if [[ $CMD == start ]]; then mkdir -p "$1"; fi
    [[ -d $1 ]] || die "no such state dir: $1"
    (cd "$1" && pwd -P)
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# pid from a pid file, only if that process is alive and is the named program
pid_of() {  # pid_of FILE NAME
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    pid_alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    echo "$pid"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

cmd_install() {
    need_root
    local missing=() p
    for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "already installed: ${PACKAGES[*]}"
    else
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        local out
        out=$(mktemp)
        # On a machine without systemd as PID 1, apt says "policy-rc.d denied execution of start":
        # nothing starts by itself. With systemd, the slurm units do not start without
        # /etc/slurm/slurm.conf (ConditionPathExists); munge may start, which is fine.
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
                >"$out" 2>&1; then
            cat "$out" >&2
            rm -f "$out"
            die "apt-get install ${missing[*]} failed"
        fi
        rm -f "$out"
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {  # $1 = state dir
    if munge_works; then
        # keep the marker if the running munged is the one an earlier `start` of this dir started
        if ! pid_of "$1/munged.started-by-cluster-sh" munged >/dev/null; then
            log "munged already running (not started by us); leaving it alone"
            rm -f "$1/munged.started-by-cluster-sh"
        fi
        return
    fi
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    local i
    for i in $(seq 50); do munge_works && break; sleep 0.1; done
    munge_works || die "munged did not come up"
    # remember it was us, so that `stop` stops it (and nothing else)
    cat /run/munge/munged.pid >"$1/munged.started-by-cluster-sh"
}

write_config() {  # $1 = state dir
    local s=$1 host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd -C prints e.g. "NodeName=vm CPUs=2 ... RealMemory=24048"; needs no config file
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]\+\).*/\1/p' | head -1)
    [[ -n $mem ]] || die "could not read RealMemory from 'slurmd -C'"
    cat >"$s/etc/slurm.conf" <<EOF
# written by $PROG start $s
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$s/ctld
SlurmdSpoolDir=$s/d
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
SlurmctldLogFile=$s/log/slurmctld.log
SlurmdLogFile=$s/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$s/log/jobcomp.txt
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=$SLURMD_TIMEOUT
SlurmctldTimeout=10
MessageTimeout=5
DefMemPerCPU=500
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$s/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=$CGROUP_ROOT
CgroupAutomount=yes
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
}

logs_tail() {  # $1 = state dir
    local f
    for f in "$1"/log/slurmctld.log "$1"/log/slurmd.log; do
        [[ -f $f ]] || continue
        echo "----- tail $f" >&2
        grep -vE 'pmix|MPI: Cannot create context' "$f" | tail -n 25 >&2
    done
}

# slurm-owned cgroup dirs (top level, one per controller): /sys/fs/cgroup/<ctrl>/slurm*
slurm_cgroups() { compgen -G "$CGROUP_ROOT/*/slurm*" || true; }

cmd_start() {
    need_root
    local s
    s=$(state_dir "${1:-}")
    export SLURM_CONF=$s/etc/slurm.conf
    command -v slurmctld >/dev/null || die "slurmctld not installed: run '$PROG install' first"
    if pid_of "$s/slurmctld.pid" slurmctld >/dev/null && pid_of "$s/slurmd.pid" slurmd >/dev/null; then
        log "already running for $s"
        echo "export SLURM_CONF=$SLURM_CONF"
        return
    fi
    [[ -w $CGROUP_ROOT/memory ]] || die "$CGROUP_ROOT/memory (cgroup v1 memory controller) is not writable"
    # The job user (e.g. nobody) executes its batch script from SlurmdSpoolDir: the path must be
    # traversable by others, so no 0700 dirs (mktemp -d makes 0700) on the way.
    chmod 755 "$s"
    mkdir -p "$s/etc" "$s/ctld" "$s/d" "$s/log"
    chmod 755 "$s/etc" "$s/d"
    # remember which slurm cgroup dirs existed before, so that `stop` removes only ours
    if [[ ! -e $s/cgroups.before ]]; then slurm_cgroups >"$s/cgroups.before"; fi
    write_config "$s"
    start_munged "$s"
    local t0=$SECONDS
    # Each daemon is started only if it is not running already (e.g. `start` again after a test
    # killed slurmd restarts just slurmd). A controller started on a STATE_DIR used before recovers
    # the jobs saved there (and job ids go on from there); use a fresh STATE_DIR for a clean
    # cluster. -i: carry on if that saved state is missing or unreadable.
    if ! pid_of "$s/slurmctld.pid" slurmctld >/dev/null; then
        slurmctld -i || { logs_tail "$s"; die "slurmctld failed to start"; }
    fi
    if ! pid_of "$s/slurmd.pid" slurmd >/dev/null; then
        slurmd || { logs_tail "$s"; cmd_stop "$s" >/dev/null 2>&1 || true; die "slurmd failed to start"; }
    fi
    # Ready = the node responds and takes jobs: `idle` on a fresh cluster; `mix`/`alloc`/`comp`
    # when jobs saved in STATE_DIR by an earlier run were recovered (a `*` suffix = not responding).
    local st="" died="" t1
    t1=$(date +%s%N)
    while (( SECONDS - t0 < START_TIMEOUT )); do
        st=$(timeout 5 sinfo -h -n "$(hostname -s)" -o %t 2>/dev/null || true)
        [[ $st =~ ^(idle|mix|alloc|comp)$ ]] && break
        # a daemon that died (bad config, port in use) will not come back: fail now
        if (( $(date +%s%N) - t1 > 1000000000 )); then
            pid_of "$s/slurmctld.pid" slurmctld >/dev/null || died="slurmctld"
            pid_of "$s/slurmd.pid" slurmd >/dev/null || died="$died slurmd"
            [[ -z $died ]] || { log "daemon(s) died: $died"; break; }
        fi
        sleep 0.1
    done
    if [[ ! $st =~ ^(idle|mix|alloc|comp)$ ]]; then
        log "node not idle after ${START_TIMEOUT}s (state: '${st:-no answer}')"
        logs_tail "$s"
        cmd_stop "$s" >/dev/null 2>&1 || true
        die "start failed"
    fi
    log "node $(hostname -s) $st after $((SECONDS - t0))s; state in $s"
    echo "export SLURM_CONF=$SLURM_CONF"
}

# stop_pids PIDFILE:NAME ...: SIGTERM to all at once (each takes ~2 s to exit, on its 1 s loop),
# wait up to 10 s, then SIGKILL what is left
stop_pids() {
    local spec pid i alive
    local -a pids=() names=() files=()
    for spec in "$@"; do
        if pid=$(pid_of "${spec%%:*}" "${spec##*:}"); then
            pids+=("$pid"); names+=("${spec##*:}"); files+=("${spec%%:*}")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for i in $(seq 100); do
        alive=0
        for pid in "${pids[@]}"; do pid_alive "$pid" && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if pid_alive "${pids[$i]}"; then
            log "${names[$i]} (pid ${pids[$i]}) still alive after 10s: SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            sleep 0.5
            pid_alive "${pids[$i]}" && die "${names[$i]} (pid ${pids[$i]}) would not die"
        fi
        rm -f "${files[$i]}"
        log "stopped ${names[$i]} (pid ${pids[$i]})"
    done
}

# slurmstepd processes started by this cluster's slurmd (they inherit SLURM_CONF)
our_stepds() {  # $1 = conf path
    local p
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null) == slurmstepd ]] || continue
        if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$1"; then
            echo "${p#/proc/}"
        fi
    done
}

remove_empty_cgroups() {  # $1 = state dir
    local d
    for d in $(slurm_cgroups); do
        grep -qxF "$d" "$1/cgroups.before" 2>/dev/null && continue
        # depth first; rmdir fails (and we leave the dir) if the cgroup still has tasks or children
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        if [[ -d $d ]]; then log "left in place (not empty): $d"; fi
    done
}

cmd_stop() {
    need_root
    local s pids
    s=$(state_dir "${1:-}")
    export SLURM_CONF=$s/etc/slurm.conf
    if [[ -f $SLURM_CONF ]] && pid_of "$s/slurmctld.pid" slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o '%i %T' 2>/dev/null || true)
        [[ -z $jobs ]] || log "warning: jobs still in the queue (not cancelled): $(tr "\n" " " <<<"$jobs")"
    fi
    stop_pids "$s/slurmd.pid:slurmd" "$s/slurmctld.pid:slurmctld"
    pids=$(our_stepds "$SLURM_CONF")
    [[ -z $pids ]] || log "warning: slurmstepd of running jobs still alive (not killed): $(tr "\n" " " <<<"$pids")"
    if [[ -s $s/munged.started-by-cluster-sh ]]; then
        local mp
        mp=$(tr -dc 0-9 <"$s/munged.started-by-cluster-sh")
        if [[ $(cat "/proc/$mp/comm" 2>/dev/null) == munged ]]; then
            echo "$mp" >"$s/munged.pid.tmp"
            stop_pids "$s/munged.pid.tmp:munged"
        fi
        rm -f "$s/munged.started-by-cluster-sh" "$s/munged.pid.tmp"
    fi
    remove_empty_cgroups "$s"
}

cmd_status() {
    local s
    s=$(state_dir "${1:-}")
    export SLURM_CONF=$s/etc/slurm.conf
    [[ -f $SLURM_CONF ]] || { log "no $SLURM_CONF"; exit 1; }
    scontrol ping 2>/dev/null | grep -q 'is UP' || { log "controller does not answer"; exit 1; }
    echo "up" >&2
}

CMD=${1:-}
shift || true
case $CMD in
    install) cmd_install ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) echo "usage: $PROG install | start STATE_DIR | stop STATE_DIR | status STATE_DIR" >&2; exit 2 ;;
esac
