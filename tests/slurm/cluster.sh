#!/usr/bin/env bash
# Start and stop a real single-node SLURM (slurmctld + slurmd + munged, and by default slurmdbd +
# a private MariaDB for accounting/sacct) for tests and CI.
#
#   cluster.sh install             apt-get install slurmctld slurmd slurm-client munge, and slurmdbd
#                                  mariadb-server unless SLURM_TEST_ACCOUNTING=none (only if missing)
#   cluster.sh start  STATE_DIR    write STATE_DIR/etc/{slurm,cgroup,slurmdbd}.conf, start the daemons
#                                  (MariaDB, slurmdbd, slurmctld, slurmd; each only if not running), wait
#                                  for the node to be idle; the only stdout line is `export SLURM_CONF=...`
#   cluster.sh restart-ctld STATE_DIR
#                                  rewrite slurm.conf from the current knobs and restart only slurmctld
#                                  (job state kept; e.g. switch SLURM_TEST_ACCOUNTING/MIN_JOB_AGE of a
#                                  running cluster; unset knobs take their defaults, except CPUs and
#                                  ports, which keep the running cluster's values and may not change);
#                                  starts MariaDB + slurmdbd if switching to slurmdbd; waits until
#                                  slurmd has registered with the new controller
#   cluster.sh stop   STATE_DIR    stop slurmd + slurmctld, then slurmdbd, then MariaDB (+ munged if this
#                                  script started it) by their pid files, wait until gone, remove the
#                                  empty cgroups slurmd created
#   cluster.sh status STATE_DIR    exit 0 if the controller answers `scontrol ping`
#
# Needs root, Debian 12 (slurm-wlm 22.05), a cgroup v1 memory controller under /sys/fs/cgroup/memory.
# Everything SLURM writes goes under STATE_DIR; nothing in /etc/slurm is created or read. The client
# tools (sbatch, squeue, scontrol, sinfo, scancel, srun, sacct) need SLURM_CONF=STATE_DIR/etc/slurm.conf
# in their environment: without it (and with no /etc/slurm/slurm.conf) they try a DNS SRV lookup and
# exit 1 with "fatal: Could not establish a configuration source". The file must be readable by the
# user running them (for `runuser -u nobody -- sbatch`), so `start` makes STATE_DIR and etc/ 0755.
# Inside a job, slurmstepd sets SLURM_CONF itself (even with --export=NONE).
# slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF (STATE_DIR/etc, mode 600: it holds the
# database password). MariaDB lives in STATE_DIR/db (0700: datadir, socket, pid file; initialised once),
# listens on 127.0.0.1:SLURM_TEST_DB_PORT, root logs in by unix socket only (as OS root), slurmdbd as
# user `slurm` with a random password kept in STATE_DIR/db/slurm.pass.
# Only stdout line: the final `export SLURM_CONF=...` of `start`; all diagnostics go to stderr.
#
# Environment knobs (all optional):
#   SLURM_TEST_CTLD_PORT (6817) SLURM_TEST_SLURMD_PORT (6818)  ports (one cluster per host: the node
#                                  name and the cgroup dirs /sys/fs/cgroup/*/slurm_<host> are shared)
#   SLURM_TEST_DBD_PORT (6819)     slurmdbd's DbdPort (= AccountingStoragePort in slurm.conf)
#   SLURM_TEST_DB_PORT (3307)      port of the private MariaDB (bound to 127.0.0.1 only)
#   SLURM_TEST_ACCOUNTING (slurmdbd)  slurmdbd: AccountingStorageType=accounting_storage/slurmdbd with
#                                  slurmdbd + MariaDB (sacct works); none: accounting_storage/none, no
#                                  slurmdbd/MariaDB started (sacct says "Slurm accounting storage is
#                                  disabled"). restart-ctld can switch a running cluster either way.
#   SLURM_TEST_MIN_JOB_AGE (300)   MinJobAge: seconds a finished job stays visible to scontrol/squeue
#   SLURM_TEST_CPUS (nproc)        CPUs of the node; more than the machine has is allowed (slurm.conf
#                                  then gets SlurmdParameters=config_overrides): N 1-CPU jobs run at once.
#                                  slurmd reads it at its start: change it with stop + start;
#                                  restart-ctld keeps it (and refuses another value)
#   SLURM_TEST_START_TIMEOUT (30)  seconds to wait for the node to become idle (and for each of MariaDB,
#                                  slurmdbd to come up)
#   SLURM_TEST_SLURMD_TIMEOUT (10) SlurmdTimeout: a dead slurmd makes its jobs NODE_FAIL after about this
set -euo pipefail

PROG=$(basename "$0")
PACKAGES=(slurmctld slurmd slurm-client munge)
ACCT_PACKAGES=(slurmdbd mariadb-server)
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_TEST_DBD_PORT:-6819}
DB_PORT=${SLURM_TEST_DB_PORT:-3307}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-slurmdbd}
MIN_JOB_AGE=${SLURM_TEST_MIN_JOB_AGE:-300}
NODE_CPUS=${SLURM_TEST_CPUS:-$(nproc)}
START_TIMEOUT=${SLURM_TEST_START_TIMEOUT:-30}
SLURMD_TIMEOUT=${SLURM_TEST_SLURMD_TIMEOUT:-10}
CGROUP_ROOT=/sys/fs/cgroup

log() { echo "$PROG: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

check_knobs() {
    [[ $ACCOUNTING == slurmdbd || $ACCOUNTING == none ]] \
        || die "SLURM_TEST_ACCOUNTING must be slurmdbd or none, not '$ACCOUNTING'"
    local k v
    for k in CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT MIN_JOB_AGE CPUS START_TIMEOUT SLURMD_TIMEOUT; do
        v=$k; [[ $k == CPUS ]] && v=NODE_CPUS
        [[ ${!v} =~ ^[0-9]+$ ]] || die "SLURM_TEST_$k must be a number, not '${!v}'"
    done
    (( NODE_CPUS >= 1 )) || die "SLURM_TEST_CPUS must be >= 1"
}

state_dir() {  # absolute path of STATE_DIR; `start` creates it, the others need it to exist
    [[ -n ${1:-} ]] || die "usage: $PROG ${CMD} STATE_DIR"
    if [[ $CMD == start ]]; then mkdir -p "$1"; fi
    [[ -d $1 ]] || die "no such state dir: $1"
    (cd "$1" && pwd -P)
}

# alive = exists and is not a zombie (a daemon whose parent is gone waits for PID 1 to reap it)
pid_alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) != Z ]]
}

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
    check_knobs
    local missing=() p pkgs=("${PACKAGES[@]}")
    [[ $ACCOUNTING == none ]] || pkgs+=("${ACCT_PACKAGES[@]}")
    for p in "${pkgs[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "already installed: ${pkgs[*]}"
    else
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        local out
        out=$(mktemp)
        # On a machine without systemd as PID 1, apt says "policy-rc.d denied execution of start":
        # nothing starts by itself. With systemd, the slurm units do not start without
        # /etc/slurm/slurm.conf (ConditionPathExists), slurmdbd not without /etc/slurm/slurmdbd.conf;
        # munge and the system MariaDB (port 3306, /run/mysqld) may start, which is fine: ours is
        # separate.
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

write_config() {  # $1 = state dir; writes slurm.conf and cgroup.conf from the knobs
    local s=$1 host mem extra="" acct task=task/cgroup,task/affinity
    host=$(hostname -s)
    # slurmd -C prints e.g. "NodeName=vm CPUs=2 ... RealMemory=24048"; needs no config file
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]\+\).*/\1/p' | head -1)
    [[ -n $mem ]] || die "could not read RealMemory from 'slurmd -C'"
    # more CPUs than the machine has: slurmd would register its real count and slurmctld would set
    # the node INVAL+DRAIN ("Low socket*core*thread count, Low CPUs"); config_overrides makes slurmd
    # report the configured count instead.
    # task/affinity would try to bind jobs to CPUs that do not exist (slurmd.log: "error: job N
    # allocated no CPUs", the job then runs unbound): leave it out, all jobs share the real CPUs.
    if (( NODE_CPUS > $(nproc) )); then extra="SlurmdParameters=config_overrides"; task=task/cgroup; fi
    if [[ $ACCOUNTING == slurmdbd ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    # written to a temp file and renamed: clients may read it while restart-ctld rewrites it
    cat >"$s/etc/slurm.conf.tmp" <<EOF
# written by $PROG $CMD $s (SLURM_TEST_ACCOUNTING=$ACCOUNTING)
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
# restart-ctld gives slurmctld a new slurm.conf while slurmd keeps the old one: without this each
# registration logs "error: Node ... appears to have a different slurm.conf than the slurmctld"
DebugFlags=NO_CONF_HASH
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/cgroup
TaskPlugin=$task
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=1
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$s/log/jobcomp.txt
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0
MinJobAge=$MIN_JOB_AGE
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=$SLURMD_TIMEOUT
SlurmctldTimeout=10
MessageTimeout=5
DefMemPerCPU=500
$extra
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$s/etc/slurm.conf.tmp"
    mv -f "$s/etc/slurm.conf.tmp" "$s/etc/slurm.conf"
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

# ---- accounting: a private MariaDB in STATE_DIR/db and slurmdbd, both started before slurmctld

db_sock() { echo "$1/db/mysqld.sock"; }

db_ping() {  # $1 = state dir; as OS root through the socket (root@localhost uses unix_socket auth)
    mariadb-admin --no-defaults --socket="$(db_sock "$1")" -uroot --connect-timeout=2 ping >/dev/null 2>&1
}

start_mariadb() {  # $1 = state dir
    local s=$1 d=$1/db sock out pid i pw
    sock=$(db_sock "$s")
    (( ${#sock} <= 107 )) || die "socket path too long for a unix socket (${#sock} > 107): $sock"
    install -d -m 700 "$d"
    if [[ ! -s $d/slurm.pass ]]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc A-Za-z0-9 | head -c 24 >"$d/slurm.pass")
    fi
    pw=$(<"$d/slurm.pass")
    pid_of "$d/mariadbd.pid" mariadbd >/dev/null && return
    if [[ ! -d $d/data/mysql ]]; then  # initialise the datadir once
        rm -rf "$d/data"
        out=$(mktemp)
        if ! mariadb-install-db --no-defaults --datadir="$d/data" --user=root \
                --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
                --innodb-log-file-size=8M >"$out" 2>&1; then
            cat "$out" >&2
            rm -rf "$out" "$d/data"
            die "mariadb-install-db failed"
        fi
        rm -f "$out"
        log "MariaDB datadir initialised in $d/data"
    fi
    # mariadbd does not daemonize: detach it (own session, no stdio of ours) and let it write its
    # pid file; it listens on 127.0.0.1 only (slurmdbd can only use TCP: StorageHost=localhost would
    # mean the default socket /run/mysqld/mysqld.sock)
    setsid mariadbd --no-defaults --datadir="$d/data" --socket="$sock" --pid-file="$d/mariadbd.pid" \
        --port="$DB_PORT" --skip-networking=0 --bind-address=127.0.0.1 --skip-name-resolve \
        --user=root --log-error="$s/log/mariadb.log" --innodb-log-file-size=8M \
        --innodb-buffer-pool-size=32M --skip-log-bin </dev/null >>"$s/log/mariadb.log" 2>&1 &
    pid=$!
    for i in $(seq $((START_TIMEOUT * 10))); do
        db_ping "$s" && break
        pid_alive "$pid" || pid_of "$d/mariadbd.pid" mariadbd >/dev/null || break  # died
        sleep 0.1
    done
    if ! db_ping "$s"; then
        tail -n 20 "$s/log/mariadb.log" >&2
        die "MariaDB did not come up on 127.0.0.1:$DB_PORT (see $s/log/mariadb.log)"
    fi
    # the account slurmdbd uses (idempotent; ALTER keeps the password in step with slurm.pass)
    mariadb --no-defaults --socket="$sock" -uroot <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    log "MariaDB up on 127.0.0.1:$DB_PORT (pid $(tr -dc 0-9 <"$d/mariadbd.pid"))"
}

write_dbd_config() {  # $1 = state dir; mode 600, owned by SlurmUser (root): slurmdbd insists
    local s=$1
    (umask 077 && cat >"$s/etc/slurmdbd.conf.tmp" <<EOF
# written by $PROG $CMD $s
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$s/log/slurmdbd.log
PidFile=$s/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$s/db/slurm.pass")
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$s/etc/slurmdbd.conf.tmp"
    mv -f "$s/etc/slurmdbd.conf.tmp" "$s/etc/slurmdbd.conf"
}

dbd_answers() { timeout 5 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {  # $1 = state dir; needs SLURM_CONF exported (slurmdbd.conf is read from its dir)
    local s=$1
    write_dbd_config "$s"
    if ! pid_of "$s/slurmdbd.pid" slurmdbd >/dev/null; then
        slurmdbd || { logs_tail "$s"; die "slurmdbd failed to start"; }
    fi
    # ready = sacctmgr gets an answer (the first start also creates the tables)
    local t1=$SECONDS
    while (( SECONDS - t1 < START_TIMEOUT )); do
        dbd_answers && break
        # died (bad config, port in use)? it writes its pid file right after daemonizing
        if (( SECONDS - t1 >= 2 )) && ! pid_of "$s/slurmdbd.pid" slurmdbd >/dev/null; then break; fi
        sleep 0.2
    done
    dbd_answers || { logs_tail "$s"; die "slurmdbd does not answer on port $DBD_PORT"; }
    log "slurmdbd up on port $DBD_PORT (pid $(tr -dc 0-9 <"$s/slurmdbd.pid"))"
}

start_accounting() {  # $1 = state dir
    [[ $ACCOUNTING == slurmdbd ]] || return 0
    local c
    for c in slurmdbd mariadbd mariadb-install-db; do
        command -v "$c" >/dev/null || die "$c not installed: run '$PROG install' first"
    done
    start_mariadb "$1"
    start_slurmdbd "$1"
}

logs_tail() {  # $1 = state dir
    local f
    for f in "$1"/log/slurmdbd.log "$1"/log/slurmctld.log "$1"/log/slurmd.log; do
        [[ -f $f ]] || continue
        echo "----- tail $f" >&2
        grep -vE 'pmix|MPI: Cannot create context' "$f" | tail -n 25 >&2
    done
}

# slurm-owned cgroup dirs (top level, one per controller): /sys/fs/cgroup/<ctrl>/slurm*
slurm_cgroups() { compgen -G "$CGROUP_ROOT/*/slurm*" || true; }

# every daemon `start` would start is running
all_running() {  # $1 = state dir
    pid_of "$1/slurmctld.pid" slurmctld >/dev/null && pid_of "$1/slurmd.pid" slurmd >/dev/null || return 1
    [[ $ACCOUNTING == none ]] && return 0
    pid_of "$1/slurmdbd.pid" slurmdbd >/dev/null && pid_of "$1/db/mariadbd.pid" mariadbd >/dev/null
}

# Wait until the node responds and takes jobs: `idle` on a fresh cluster; `mix`/`alloc`/`comp` when
# jobs are running or were recovered from STATE_DIR (a `*` suffix = not responding). Fails (after
# stopping the cluster) if it does not get there within START_TIMEOUT or a daemon died.
wait_node() {  # $1 = state dir, $2 = start time ($SECONDS)
    local s=$1 t0=$2 st="" died="" t1
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
        die "$CMD failed"
    fi
    log "node $(hostname -s) $st after $(( ($(date +%s%N) - T_START) / 1000000 )) ms; state in $s"
}

cmd_start() {
    need_root
    check_knobs
    local s
    s=$(state_dir "${1:-}")
    export SLURM_CONF=$s/etc/slurm.conf
    # a start that fails half-way stops what it started (MariaDB, slurmdbd, munged): no port stays taken
    START_STATE=$s
    trap 'rc=$?; if (( rc != 0 )); then cmd_stop "$START_STATE" >/dev/null 2>&1 || true; fi' EXIT
    command -v slurmctld >/dev/null || die "slurmctld not installed: run '$PROG install' first"
    if all_running "$s"; then
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
    local t0=$SECONDS
    if pid_of "$s/slurmctld.pid" slurmctld >/dev/null && [[ -f $SLURM_CONF ]]; then
        # keep slurm.conf as the running controller read it (restart-ctld applies new knobs)
        log "slurmctld already running: slurm.conf left as it is (use restart-ctld to change it)"
    else
        write_config "$s"
    fi
    start_munged "$s"
    # MariaDB and slurmdbd before slurmctld: without slurmdbd a first start (no state files) ends in
    # "fatal: You are running with a database but for some reason we have no TRES from it."
    # slurmctld registers the cluster in the database itself (no sacctmgr add cluster needed).
    start_accounting "$s"
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
    wait_node "$s" "$t0"
    echo "export SLURM_CONF=$SLURM_CONF"
}

# keep_node_knob VAR ENVNAME VALUE_IN_RUNNING_CONF: for restart-ctld. What slurmd was started with
# (node CPUs, ports) must not change under it: a slurmctld with another CPUs= for the node aborts
# and requeues every running job ("Aborting JobId=N due to change in socket/core configuration of
# allocated nodes"). Unset knob: take the running value; set to another value: refuse.
keep_node_knob() {
    [[ -n $3 ]] || return 0
    if [[ -z ${!2:-} ]]; then
        printf -v "$1" '%s' "$3"
    elif [[ ${!2} != "$3" ]]; then
        die "$2=${!2} but the running cluster has $3 (its daemons keep their config): use stop + start"
    fi
}

cmd_restart_ctld() {
    need_root
    local s
    s=$(state_dir "${1:-}")
    export SLURM_CONF=$s/etc/slurm.conf
    [[ -f $SLURM_CONF ]] || die "no $SLURM_CONF: run '$PROG start $s' first"
    keep_node_knob NODE_CPUS SLURM_TEST_CPUS "$(sed -n 's/^NodeName=.* CPUs=\([0-9]\+\) .*/\1/p' "$SLURM_CONF")"
    keep_node_knob CTLD_PORT SLURM_TEST_CTLD_PORT "$(sed -n 's/^SlurmctldPort=//p' "$SLURM_CONF")"
    keep_node_knob SLURMD_PORT SLURM_TEST_SLURMD_PORT "$(sed -n 's/^SlurmdPort=//p' "$SLURM_CONF")"
    if [[ -f $s/etc/slurmdbd.conf ]]; then  # a running slurmdbd/MariaDB keeps its ports too
        keep_node_knob DBD_PORT SLURM_TEST_DBD_PORT "$(sed -n 's/^DbdPort=//p' "$s/etc/slurmdbd.conf")"
        keep_node_knob DB_PORT SLURM_TEST_DB_PORT "$(sed -n 's/^StoragePort=//p' "$s/etc/slurmdbd.conf")"
    fi
    check_knobs
    local t0=$SECONDS
    write_config "$s"
    start_accounting "$s"  # switching to slurmdbd on a cluster started without it
    if pid_of "$s/slurmctld.pid" slurmctld >/dev/null; then
        stop_pids "$s/slurmctld.pid:slurmctld"
    else
        log "slurmctld was not running"
    fi
    # no -i: recover the saved job and node state (running jobs go on, ids continue)
    slurmctld || { logs_tail "$s"; die "slurmctld failed to start"; }
    if ! pid_of "$s/slurmd.pid" slurmd >/dev/null; then
        log "warning: slurmd is not running (use '$PROG start $s')"
    else
        # The node state comes back from the state file, so sinfo says idle/mix at once, before
        # slurmd has talked to the new controller. Wait for that: the new slurmctld's RPC counters
        # start at zero, and slurmd's registration (seen 4.3-4.8 s after the start) is counted as
        # MESSAGE_NODE_REGISTRATION_STATUS.
        local reg="" t1=$SECONDS
        while (( SECONDS - t0 < START_TIMEOUT )); do
            reg=$(timeout 5 sdiag 2>/dev/null | grep -c MESSAGE_NODE_REGISTRATION_STATUS || true)
            [[ $reg == 0 || -z $reg ]] || break
            # died? (its pid file appears only after it daemonized)
            if (( SECONDS - t1 >= 2 )) && ! pid_of "$s/slurmctld.pid" slurmctld >/dev/null; then break; fi
            sleep 0.2
        done
        if [[ $reg == 0 || -z $reg ]]; then
            logs_tail "$s"
            die "slurmd did not register with the new slurmctld within ${START_TIMEOUT}s"
        fi
    fi
    wait_node "$s" "$t0"
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
    # slurmdbd after slurmctld (which sends it its last records on the way out), MariaDB after that
    stop_pids "$s/slurmdbd.pid:slurmdbd"
    stop_pids "$s/db/mariadbd.pid:mariadbd"
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
T_START=$(date +%s%N)
case $CMD in
    install) cmd_install ;;
    start) cmd_start "$@" ;;
    restart-ctld) cmd_restart_ctld "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) echo "usage: $PROG install | start STATE_DIR | restart-ctld STATE_DIR | stop STATE_DIR | status STATE_DIR" >&2; exit 2 ;;
esac
