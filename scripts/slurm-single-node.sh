#!/usr/bin/env bash
# A real single-node Slurm, with accounting, on this machine, for tests.
#
#   scripts/slurm-single-node.sh up      install, configure, start, wait until `srun` works
#   scripts/slurm-single-node.sh down    stop the daemons, purge the packages, remove all state
#   scripts/slurm-single-node.sh status  show the daemons and the partition (exit 0 when ready)
#
# Built from Debian 12's own packages (Slurm 22.05, munge, MariaDB for slurmdbd).
# There is no init system here, so every daemon is started by this script and
# stopped through its pid file, never by name. Facts behind the choices below:
# /work/shared/notes/slurm-single-node.md.
#
# Why `down` purges everything: once `srun` is on PATH, submitit's AutoExecutor
# picks Slurm for every process on the machine; a machine left with a dead
# cluster would send later runs to it. `down` is idempotent and succeeds when
# things are already gone; it fails only if `srun` is still on PATH afterwards.
#
# Settings (environment):
#   RLRS_SLURM_PARTITION      partition name (default: debug)
#   RLRS_SLURM_CPUS           CPUs of the node (default: nproc)
#   RLRS_SLURM_READY_TIMEOUT  seconds `up` waits for `srun -t 1 true` (default: 120)
set -euo pipefail
# The daemons and runuser live in sbin, which a user's (or CI's) PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PARTITION=${RLRS_SLURM_PARTITION:-debug}
CPUS=${RLRS_SLURM_CPUS:-$(nproc)}
READY_TIMEOUT=${RLRS_SLURM_READY_TIMEOUT:-120}
CLUSTER=ci

# Refuse bad settings before any work starts.
[[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] \
  || { echo "RLRS_SLURM_PARTITION=$PARTITION: allowed are letters, digits, '_' and '-'" >&2; exit 2; }
[[ $CPUS =~ ^[1-9][0-9]*$ ]] \
  || { echo "RLRS_SLURM_CPUS=$CPUS: allowed is a positive integer (default: nproc)" >&2; exit 2; }
[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] \
  || { echo "RLRS_SLURM_READY_TIMEOUT=$READY_TIMEOUT: allowed is a positive number of seconds" >&2; exit 2; }

# Everything this script creates, so that `down` can remove exactly that.
STATE_DIR=/var/lib/rlrs-slurm            # what `up` installed (down purges it)
LOG_DIR=/var/log/slurm                   # slurm daemons' logs
SLURM_ETC=/etc/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
MYSQL_RUN=/run/mysqld
MYSQL_SOCKET=$MYSQL_RUN/mysqld.sock
MYSQL_DATADIR=/var/lib/mysql
MUNGE_RUN=/run/munge
# munged and mariadbd refuse or cannot write logs outside their own directories.
MUNGE_LOG=/var/log/munge/munged.log
MARIADB_LOG=/var/log/mysql/error.log

SLURM_PACKAGES=(slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin slurm-wlm-basic-plugins)
SUPPORT_PACKAGES=(munge mariadb-server)

# Daemons in start order: name, pid file, the process name (/proc/PID/comm)
# that the pid must belong to before we signal it (pids get reused).
DAEMONS=(
  "mariadb $MYSQL_RUN/mysqld.pid mariadbd"
  "munged $MUNGE_RUN/munged.pid munged"
  "slurmdbd /run/slurmdbd.pid slurmdbd"
  "slurmctld /run/slurmctld.pid slurmctld"
  "slurmd /run/slurmd.pid slurmd"
)

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=300)
export DEBIAN_FRONTEND=noninteractive

log() { printf '[slurm-single-node] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Phase timer: `phase NAME` ends the previous phase and prints its duration.
T0=$EPOCHREALTIME
_PHASE=""
_PHASE_T=$T0
seconds_since() { awk "BEGIN{printf \"%6.1f\", $EPOCHREALTIME - $1}"; }
phase() {
  [[ -n $_PHASE ]] && log "$(printf '%-28s' "$_PHASE") $(seconds_since "$_PHASE_T") s"
  _PHASE=$1
  _PHASE_T=$EPOCHREALTIME
}
total() { phase ""; log "$(printf '%-28s' "total $1") $(seconds_since "$T0") s"; }

# Write a file atomically: temp file in the same directory, then rename.
write_file() {  # path mode <content on stdin>
  local path=$1 mode=$2 tmp
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

is_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }
# The names apt knows (its lists or dpkg's database), installed or not:
# `apt-get purge` accepts those and skips the ones not installed. One
# apt-cache call for all (each call loads the whole cache, ~0.5 s).
known_to_apt() { apt-cache policy "$@" 2>/dev/null | sed -n 's/^\([^ ]*\):$/\1/p'; }

# A process is alive when it exists and is not a zombie: daemons are reparented
# to this machine's pid 1, which may reap them late.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }  # the state letter follows the last ")" (comm may hold spaces)
  [[ ${stat:0:1} != Z ]]
}

pid_of() {  # pidfile comm -> prints the pid if that process is alive and is `comm`
  local pidfile=$1 comm=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$(tr -dc 0-9 <"$pidfile")
  [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] && alive "$pid" || return 1
  echo "$pid"
}

log_tails() {
  local f
  for f in "$LOG_DIR"/*.log "$MUNGE_LOG" "$MARIADB_LOG"; do
    [[ -f $f ]] || continue
    printf '\n==> %s (last 20 lines) <==\n' "$f" >&2
    tail -n 20 "$f" >&2
  done
}

fail_up() { log_tails; die "$*"; }

# Poll `cmd...` every 0.2 s until it succeeds or `seconds` pass.
wait_for() {  # seconds description cmd...
  local seconds=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      fail_up "timed out after ${seconds}s waiting for $what"
    fi
    sleep 0.2
  done
}

tcp_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

require_root_and_apt() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (installs Debian packages and starts daemons)"
  command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian/Ubuntu"
}

# ---------------------------------------------------------------- up

install_packages() {
  local wanted=() missing=() p
  for p in "${SLURM_PACKAGES[@]}" "${SUPPORT_PACKAGES[@]}"; do
    is_installed "$p" || wanted+=("$p")
  done
  if ((${#wanted[@]} == 0)); then
    log "packages already installed"
    return
  fi
  # Update the package lists only when they are missing or stale.
  if [[ $(apt-cache policy slurmctld 2>/dev/null | awk '/Candidate:/{print $2}') =~ ^(|\(none\))$ ]]; then
    log "apt-get update (no candidate for slurmctld)"
    apt-get "${APT_OPTS[@]}" update >/dev/null
  fi
  # Every package this install adds, dependencies included (a simulation lists
  # them). Recorded before installing, so that `down` purges exactly these, even
  # if `up` dies half-way. `apt-get autoremove` would not do: it keeps e.g. gawk,
  # which provides the virtual `awk` that base packages depend on, and it would
  # also remove packages that others left orphaned.
  # ("Inst NAME [OLD] (NEW ...)" is an upgrade of a package we did not bring.)
  mapfile -t missing < <(apt-get -s install --no-install-recommends "${wanted[@]}" 2>/dev/null \
    | awk '$1 == "Inst" && $3 !~ /^\[/ {print $2}')
  ((${#missing[@]})) || die "apt-get cannot install ${wanted[*]} (apt-get -s install listed nothing)"
  mkdir -p "$STATE_DIR"
  { cat "$STATE_DIR/installed-packages" 2>/dev/null || true; printf '%s\n' "${missing[@]}"; } \
    | sort -u | write_file "$STATE_DIR/installed-packages" 644
  # Keep package scripts from starting services (no init system; we start them).
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | write_file /usr/sbin/policy-rc.d 755
    own_policy=1
  fi
  log "installing ${#missing[@]} packages: ${wanted[*]} and their dependencies"
  if ! apt-get "${APT_OPTS[@]}" install --no-install-recommends "${wanted[@]}" >"$STATE_DIR/apt.log" 2>&1; then
    log "install failed; apt-get update and one retry"
    apt-get "${APT_OPTS[@]}" update >/dev/null
    apt-get "${APT_OPTS[@]}" install --no-install-recommends "${wanted[@]}" >"$STATE_DIR/apt.log" 2>&1 \
      || { tail -n 30 "$STATE_DIR/apt.log" >&2; ((own_policy)) && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  fi
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

write_configs() {
  mkdir -p "$SLURM_ETC" "$SPOOL_CTLD" "$SPOOL_D" "$LOG_DIR"
  # RealMemory above what slurmd measures would drain the node: stay below it.
  local mem_mb
  mem_mb=$(awk '/^MemTotal:/{printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

  # Latency settings: batch_sched_delay=0,sched_interval=5 and cred_expire=10
  # bring a trivial job to ~1 s and a timeout-requeue cycle to ~73 s.
  # proctrack/linuxproc + task/none: no cgroups needed, no limits enforced.
  write_file "$SLURM_ETC/slurm.conf" 644 <<EOF
# Written by scripts/slurm-single-node.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5
AuthInfo=cred_expire=10
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=300
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

  # The database password lives only in slurmdbd.conf (mode 600). Reuse it when
  # the file exists, so a second `up` does not lock out a running slurmdbd.
  local pass
  pass=$(sed -n 's/^StoragePass=//p' "$SLURM_ETC/slurmdbd.conf" 2>/dev/null || true)
  [[ -n $pass ]] || pass=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  DB_PASS=$pass
  write_file "$SLURM_ETC/slurmdbd.conf" 600 <<EOF
# Written by scripts/slurm-single-node.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF

  # munge: one shared key; the packaged postinst may already have made one.
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1024 count=1 status=none | write_file /etc/munge/munge.key 400
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
}

start_mariadb() {
  if pid_of "$MYSQL_RUN/mysqld.pid" mariadbd >/dev/null; then
    log "mariadb already running"
  else
    mkdir -p "$MYSQL_RUN" "$(dirname "$MARIADB_LOG")"
    chown mysql:mysql "$MYSQL_RUN"
    chown mysql:adm "$(dirname "$MARIADB_LOG")"
    if [[ ! -d $MYSQL_DATADIR/mysql ]]; then
      mariadb-install-db --user=mysql --datadir="$MYSQL_DATADIR" --auth-root-authentication-method=socket \
        >"$MARIADB_LOG" 2>&1 || fail_up "mariadb-install-db failed"
    fi
    # Unix socket only: nothing listens on the network.
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$MYSQL_DATADIR" --socket="$MYSQL_SOCKET" \
      --pid-file="$MYSQL_RUN/mysqld.pid" --skip-networking --log-error="$MARIADB_LOG" \
      </dev/null >/dev/null 2>&1 &
    wait_for 60 "mariadb on $MYSQL_SOCKET" mariadb-admin --socket="$MYSQL_SOCKET" ping
    wait_for 10 "mariadb pid file" pid_of "$MYSQL_RUN/mysqld.pid" mariadbd
  fi
  # Root logs in through unix_socket auth; slurmdbd gets its own user.
  mariadb --socket="$MYSQL_SOCKET" <<EOF || fail_up "creating the accounting database failed"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_munged() {
  if pid_of "$MUNGE_RUN/munged.pid" munged >/dev/null; then log "munged already running"; return; fi
  mkdir -p "$MUNGE_RUN"
  chown munge:munge "$MUNGE_RUN"
  chmod 755 "$MUNGE_RUN"
  runuser -u munge -- /usr/sbin/munged --log-file="$MUNGE_LOG" </dev/null >/dev/null 2>&1 \
    || fail_up "munged did not start"
  wait_for 10 "munge to encode and decode a credential" bash -c 'munge -n | unmunge'
}

start_slurmdbd() {
  if pid_of /run/slurmdbd.pid slurmdbd >/dev/null; then log "slurmdbd already running"; return; fi
  setsid slurmdbd </dev/null >/dev/null 2>&1 || fail_up "slurmdbd did not start"
  # slurmdbd listens on 6819 only once its tables exist.
  wait_for 60 "slurmdbd on 127.0.0.1:6819" tcp_open 127.0.0.1 6819
}

register_cluster() {
  if sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then return; fi
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail_up "sacctmgr add cluster $CLUSTER failed"
}

start_slurmctld() {
  if pid_of /run/slurmctld.pid slurmctld >/dev/null; then log "slurmctld already running"; return; fi
  setsid slurmctld </dev/null >/dev/null 2>&1 || fail_up "slurmctld did not start"
  wait_for 30 "slurmctld to answer scontrol ping" bash -c 'scontrol ping | grep -q UP'
}

start_slurmd() {
  if pid_of /run/slurmd.pid slurmd >/dev/null; then log "slurmd already running"; return; fi
  # The hostname is not "localhost": tell slurmd which node it is.
  setsid slurmd -N localhost </dev/null >/dev/null 2>&1 || fail_up "slurmd did not start"
}

# A node may show "idle" before slurmd has registered; only a real job step
# proves the cluster works end to end (munge, slurmctld, slurmd, credentials).
wait_until_srun_works() {
  local deadline=$((SECONDS + READY_TIMEOUT)) out
  until out=$(timeout 30 srun -p "$PARTITION" -t 1 -N 1 -n 1 true 2>&1); do
    if ((SECONDS > deadline)); then
      log "last srun output: $out"
      sinfo -N -l >&2 2>/dev/null || true
      fail_up "srun -t 1 true did not succeed within ${READY_TIMEOUT}s"
    fi
    # A node left DOWN by an earlier unclean stop is put back into service.
    if sinfo -h -n localhost -o %t 2>/dev/null | grep -Eq '^(down|drain|drng)'; then
      scontrol update nodename=localhost state=resume 2>/dev/null || true
    fi
    sleep 0.5
  done
}

cmd_up() {
  require_root_and_apt
  phase "install packages"
  install_packages
  phase "write configuration"
  write_configs
  phase "start mariadb"
  start_mariadb
  phase "start munged"
  start_munged
  phase "start slurmdbd"
  start_slurmdbd
  register_cluster
  phase "start slurmctld"
  start_slurmctld
  phase "start slurmd"
  start_slurmd
  phase "wait for srun -t 1 true"
  wait_until_srun_works
  total up
  log "ready: cluster $CLUSTER, partition $PARTITION, $CPUS CPUs"
}

# ---------------------------------------------------------------- down

# TERM, wait up to 15 s, then KILL; only if the pid still belongs to `comm`.
stop_daemon() {  # name pidfile comm
  local name=$1 pidfile=$2 comm=$3 pid i t=$EPOCHREALTIME
  if pid=$(pid_of "$pidfile" "$comm"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "$name (pid $pid) ignored TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid) in$(seconds_since "$t") s"
  fi
  rm -f "$pidfile"
}

# Jobs still running would leave slurmstepd processes behind once slurmd is
# gone: cancel them while the controller still answers, and wait briefly.
cancel_jobs() {
  command -v scancel >/dev/null || return 0
  pid_of /run/slurmctld.pid slurmctld >/dev/null || return 0
  local jobs=() i
  mapfile -t jobs < <(timeout 10 squeue -h -o %i 2>/dev/null || true)
  ((${#jobs[@]})) || return 0
  log "cancelling jobs: ${jobs[*]}"
  timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null || true) ]] && break
    sleep 0.5
  done
}

# The packages `apt-get purge PKG...` would remove: PKG and what depends on it.
purge_cascade() { apt-get -s purge "$@" 2>/dev/null | awk '$1 == "Purg" || $1 == "Remv" {print $2}'; }

# Purge these packages, except any that something outside them has come to
# depend on since `up` (a package installed later that needs rsync, say):
# purging it would take theirs along. Slurm's own packages go regardless.
purge_safely() {
  local candidates=("$@") keep=() safe=() others=() p
  mapfile -t others < <(purge_cascade "${candidates[@]}" | grep -vxF -f <(printf '%s\n' "${candidates[@]}") || true)
  if ((${#others[@]})); then
    for p in "${candidates[@]}"; do
      # (Not `grep -q`: it exits early, and under pipefail the writer's SIGPIPE
      # would make the pipeline fail.)
      # shellcheck disable=SC2143
      if [[ " ${SLURM_PACKAGES[*]} " == *" $p "* \
        || -z $(purge_cascade "$p" | grep -vxF -f <(printf '%s\n' "${candidates[@]}")) ]]; then
        safe+=("$p")
      else
        keep+=("$p")
      fi
    done
    log "keeping ${keep[*]:-nothing}: purging would also remove ${others[*]}"
    candidates=("${safe[@]}")
  fi
  log "purging ${#candidates[@]} packages ($(dpkg-query -W -f='${db:Status-Status}\n' "${candidates[@]}" 2>/dev/null | grep -cx installed) installed)"
  apt-get "${APT_OPTS[@]}" purge "${candidates[@]}" >/dev/null 2>&1 \
    || die "apt-get purge ${candidates[*]} failed"
}

purge_packages() {
  local recorded=() candidates=()
  [[ -r $STATE_DIR/installed-packages ]] && mapfile -t recorded <"$STATE_DIR/installed-packages"
  # The slurm packages always go (they are what changes AutoExecutor); munge,
  # mariadb and every dependency only when `up` installed them. Installed or
  # not: an interrupted `up` may leave an apt-get running, which is still
  # installing them while we wait for its lock.
  mapfile -t candidates < <(known_to_apt "${SLURM_PACKAGES[@]}" "${recorded[@]}" | sort -u)
  ((${#candidates[@]})) && purge_safely "${candidates[@]}"
  # State left by the daemons (the purge removes only what the packages own).
  rm -rf "$SLURM_ETC" "$SPOOL_CTLD" "$SPOOL_D" "$LOG_DIR" /run/slurmctld.pid /run/slurmd.pid /run/slurmdbd.pid
  if [[ " ${recorded[*]} " == *" mariadb-server "* ]]; then
    rm -rf "$MYSQL_DATADIR" "$MYSQL_RUN" /etc/mysql /var/log/mysql
  fi
  if [[ " ${recorded[*]} " == *" munge "* ]]; then
    rm -rf /etc/munge /var/lib/munge /var/log/munge "$MUNGE_RUN"
  fi
  rm -rf "$STATE_DIR"
}

cmd_down() {
  require_root_and_apt
  phase "cancel jobs"
  cancel_jobs
  phase "stop daemons"
  local i entry
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    read -r -a entry <<<"${DAEMONS[$i]}"
    stop_daemon "${entry[@]}"
  done
  phase "purge packages"
  purge_packages
  hash -r
  local left
  for left in srun sbatch scontrol slurmctld slurmd; do
    if command -v "$left" >/dev/null; then die "$left is still on PATH ($(command -v "$left")) after purge"; fi
  done
  total down
  log "Slurm removed: srun is no longer on PATH"
}

# ---------------------------------------------------------------- status

cmd_status() {
  local ok=0 entry pid
  for entry in "${DAEMONS[@]}"; do
    read -r -a entry <<<"$entry"
    if pid=$(pid_of "${entry[1]}" "${entry[2]}"); then
      printf '%-10s running (pid %s)\n' "${entry[0]}" "$pid"
    else
      printf '%-10s stopped\n' "${entry[0]}"
      ok=1
    fi
  done
  if command -v srun >/dev/null; then
    printf 'srun       %s\n' "$(command -v srun)"
    timeout 10 sinfo -h -o 'partition %P: %a, %D node(s), state %t' 2>/dev/null || ok=1
  else
    printf 'srun       not on PATH\n'
    ok=1
  fi
  return $ok
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status (got '${1:-}'; allowed actions: up, down, status)" >&2
    exit 2
    ;;
esac
