#!/usr/bin/env bash
# A real one-node SLURM cluster for the test suite (Debian's slurm-wlm, munge, slurmdbd + MariaDB for the
# accounting that submitit needs to see a failed job). Everything lives in one state folder; only the daemons
# started here are stopped here (their PIDs are kept in $STATE/pids).
#   tests/slurm_cluster.sh install          apt-get the packages (root; skipped when already installed)
#   tests/slurm_cluster.sh start  [STATE]   start munged, MariaDB, slurmdbd, slurmctld, slurmd; print SLURM_CONF
#   tests/slurm_cluster.sh stop   [STATE]   stop the daemons this script started (TERM, wait, KILL)
set -euo pipefail
STATE=${2:-${EMBEDTUNE_SLURM_STATE:-/tmp/embedtune-slurm}}
PACKAGES="slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

log() { echo "slurm_cluster: $*" >&2; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "not root or no apt-get: SLURM not installed (its tests will skip)"; return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq $PACKAGES >/dev/null 2>&1 \
    || log "apt-get install failed: SLURM tests will skip"
}

daemon() {  # daemon NAME CMD...: start in the foreground mode under setsid, remember its PID
  local name=$1; shift
  setsid "$@" >"$STATE/log/$name.out" 2>&1 < /dev/null &
  echo "$! $name" >> "$STATE/pids"
}

wait_for() {  # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.3
  done
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root (munged, slurmd)"; exit 3; }
  command -v slurmctld >/dev/null || { log "SLURM is not installed"; exit 3; }
  if [ -f "$STATE/pids" ]; then stop; fi
  mkdir -p "$STATE"/{log,spool/ctld,spool/d,run,munge,mysql,mysqlrun}
  chmod 755 "$STATE"  # mktemp -d makes it 0700: munge and mysql must reach their folders inside
  : > "$STATE/pids"
  local host mem
  host=$(hostname -s)
  mem=$(( $(free -m | awk '/^Mem:/ {print $2}') - 512 ))

  # munge at its default socket (SLURM's clients look there); an already running munged is used as it is
  local sock=/run/munge/munge.socket.2
  if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge; chown munge:munge /run/munge "$STATE/munge"; chmod 700 "$STATE/munge"
    [ -f "$STATE/munge/munge.key" ] || dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" 2>/dev/null
    chown munge:munge "$STATE/munge/munge.key"; chmod 400 "$STATE/munge/munge.key"
    daemon munged setpriv --reuid=munge --regid=munge --init-groups munged -F --key-file "$STATE/munge/munge.key" \
      --socket "$sock" --pid-file "$STATE/munge/munged.pid" --seed-file "$STATE/munge/seed" \
      --log-file "$STATE/log/munged.log" --num-threads=10 --force
    wait_for 10 munge -n || { log "munged did not start"; exit 1; }
  fi

  # MariaDB on 127.0.0.1 only, for slurmdbd
  chown -R mysql:mysql "$STATE/mysql" "$STATE/mysqlrun"
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket >/dev/null 2>&1
  fi
  daemon mariadb mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --bind-address=127.0.0.1 \
    --port=3306 --socket="$STATE/mysqlrun/mysqld.sock" --pid-file="$STATE/mysqlrun/mysqld.pid" \
    --log-error="$STATE/log/mariadb.log" --skip-name-resolve
  wait_for 30 mariadb --no-defaults -S "$STATE/mysqlrun/mysqld.sock" -e "select 1" || { log "MariaDB did not start"; exit 1; }
  mariadb --no-defaults -S "$STATE/mysqlrun/mysqld.sock" -e \
    "create user if not exists 'slurm'@'127.0.0.1' identified by 'slurmdb';
     grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1'; flush privileges;"

  cat > "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmdb
StoragePort=3306
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
EOF
  chmod 600 "$STATE/slurmdbd.conf"
  cat > "$STATE/slurm.conf" <<EOF
ClusterName=embedtune
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=4
KillWait=30
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$STATE/slurm.conf"
  daemon slurmdbd slurmdbd -D  # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/6819" || { log "slurmdbd did not start"; exit 1; }
  daemon slurmctld slurmctld -D -i -f "$SLURM_CONF"
  wait_for 30 scontrol ping || { log "slurmctld did not start"; exit 1; }
  sacctmgr -i add cluster embedtune >/dev/null 2>&1 || true
  daemon slurmd slurmd -D -f "$SLURM_CONF"
  wait_for 30 bash -c "sinfo -h -o %T | grep -qx idle" || { log "slurmd did not register"; exit 1; }
  echo "$SLURM_CONF"
}

stop() {
  [ -f "$STATE/pids" ] || return 0
  local pids
  pids=$(tac "$STATE/pids" | awk '{print $1}')  # reverse start order: slurmd first, munged last
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$STATE/pids"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop [STATE]" >&2; exit 2 ;;
esac
