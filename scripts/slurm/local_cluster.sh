#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the `slurm` tests (tests/test_slurm.py) and for
# trying scripts/slurm/fit.sbatch by hand. Root only; meant for a dev or CI machine, not a shared server.
#
#   scripts/slurm/local_cluster.sh start    # install Slurm + MUNGE if missing, start munged, slurmctld, 2 slurmd
#   scripts/slurm/local_cluster.sh status   # the daemons it started, sinfo, squeue
#   scripts/slurm/local_cluster.sh stop     # cancel the jobs, stop exactly those daemons, undo /etc changes
#
# Two slurmd daemons (`slurmd -N node1`, `-N node2`, one port each) make the host look like two nodes of
# half its CPUs. Their names must resolve (srun, and Lightning's MASTER_ADDR is the first node of
# SLURM_NODELIST), so start maps them to 127.0.0.1 in /etc/hosts. No systemd, no cgroups, no accounting.
#
# Settings a test run depends on (see docs/scaling.md):
# - AuthInfo=cred_expire=N (HFTRAIN_SLURM_REQUEUE_HOLD, default 5, Slurm's minimum; Slurm's default is 120):
#   a requeued job is held `cred_expire` seconds (Reason=BeginTime) before it may start again.
# - SchedulerParameters=sched_interval=1: the main scheduler looks at pending jobs every second (default 60),
#   so a requeued job starts as soon as its hold ends.
# - KillWait=30 (Slurm's default): the time between SIGTERM and SIGKILL when a job ends, is requeued or
#   cancelled; the tests check that training processes exit well before it.
#
# Exit status 3 means "Slurm cannot run here" (not root, no package manager reachable, or this machine has
# its own Slurm configuration, which is left alone); the tests skip with the message. Other failures exit 1.
set -euo pipefail

STATE=${HFTRAIN_SLURM_STATE:-/var/lib/hftrain-slurm}  # pid files, spool dirs, logs
CONF=/etc/slurm/slurm.conf  # the default path: sinfo, sbatch, srun and scontrol need no SLURM_CONF
MARK="# hftrain local_cluster.sh"
NODES=(node1 node2)
REQUEUE_HOLD=${HFTRAIN_SLURM_REQUEUE_HOLD:-5}

log() { echo "[local_cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "Slurm unavailable: $*"; exit 3; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [[ $(id -u) == 0 ]] || unavailable "slurm-wlm and munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || unavailable "slurm-wlm and munge are not installed and there is no apt-get"
  log "installing slurm-wlm and munge"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } ||
    unavailable "apt-get could not install slurm-wlm and munge (no package mirror reachable?)"
}

write_config() {
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    unavailable "$CONF exists and was not written by this script: this machine has its own Slurm set-up"
  fi
  local cpus mem_mb node port=6818 nodes_conf=""
  cpus=$(($(nproc) / ${#NODES[@]}))
  ((cpus >= 1)) || cpus=1
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / ${#NODES[@]} * 9 / 10))
  for node in "${NODES[@]}"; do
    nodes_conf+="NodeName=$node NodeHostname=$node NodeAddr=127.0.0.1 Port=$((port++)) CPUs=$cpus"
    nodes_conf+=" RealMemory=$mem_mb State=UNKNOWN"$'\n'
  done
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/log"
  for node in "${NODES[@]}"; do mkdir -p "$STATE/$node"; done
  cat >"$CONF" <<EOF
$MARK: rewritten on every start, removed on stop
ClusterName=hftrain-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$REQUEUE_HOLD
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldPort=6817
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$STATE/slurmctld.pidfile
SlurmdPidFile=$STATE/slurmd-%n.pidfile
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
$nodes_conf
PartitionName=local Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
}

add_hosts() {
  local node address
  for node in "${NODES[@]}"; do
    address=$(getent hosts "$node" | awk '{print $1}') || true
    if [[ -z $address ]]; then
      echo "127.0.0.1 $node  $MARK" >>/etc/hosts
    elif [[ $address != 127.0.0.1 ]]; then
      unavailable "the name $node already means $address on this machine"
    fi
  done
}

# alive NAME: the daemon whose pid start recorded in $STATE/NAME.pid still runs (and is still that program)
alive() {
  local pid
  [[ -f $STATE/$1.pid ]] || return 1
  pid=$(<"$STATE/$1.pid")
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(<"$STATE/$1.exe")" ]]
}

# launch NAME PROGRAM COMMAND...: start COMMAND (which is or execs PROGRAM) detached, in a session of its own,
# and record its pid and the program it must be running for `alive`
launch() {
  local name=$1 program i
  program=$(readlink -f "$(command -v "$2")")
  shift 2
  if alive "$name"; then return; fi
  setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
  echo $! >"$STATE/$name.pid"
  echo "$program" >"$STATE/$name.exe"
  for i in $(seq 30); do alive "$name" && break; sleep 0.1; done
  alive "$name" || { tail -5 "$STATE/log/$name.out" >&2; die "$name did not start (see $STATE/log/$name.out)"; }
  log "started $name (pid $(<"$STATE/$name.pid"))"
}

wait_until_idle() {
  local i
  for i in $(seq 60); do
    (($(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) == ${#NODES[@]})) && return 0
    sleep 0.5
  done
  sinfo -N -l >&2 || true
  die "the nodes did not come up idle within 30 s; see $STATE/log/"
}

start() {
  install_packages
  [[ $(id -u) == 0 ]] || unavailable "starting the Slurm and MUNGE daemons needs root"
  mkdir -p "$STATE/log"
  write_config
  add_hosts
  install -d -o munge -g munge -m 0755 /run/munge
  launch munged munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
  local i
  for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged does not answer"
  launch slurmctld slurmctld slurmctld -D -c  # -c: no jobs from an earlier session
  for node in "${NODES[@]}"; do launch "slurmd-$node" slurmd slurmd -D -N "$node"; done
  wait_until_idle
  sinfo
}

stop_daemon() {
  local name=$1 pid i
  if alive "$name"; then
    pid=$(<"$STATE/$name.pid")
    kill -TERM "$pid"
    for i in $(seq 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    if [[ -e /proc/$pid ]]; then kill -KILL "$pid"; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE/$name.pid" "$STATE/$name.exe"
}

stop() {
  local jobs i node
  if alive slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      log "cancelling jobs:" $jobs
      scancel $jobs || true
      for i in $(seq 60); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 1; done
    fi
  fi
  for node in "${NODES[@]}"; do stop_daemon "slurmd-$node"; done
  stop_daemon slurmctld
  stop_daemon munged
  if [[ -f $CONF ]] && grep -qF "$MARK" "$CONF"; then rm -f "$CONF"; fi
  if grep -qF "$MARK" /etc/hosts; then
    # /etc/hosts may be a bind mount (containers): rewrite it in place instead of replacing the file
    local kept
    kept=$(grep -vF "$MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

status() {
  local name rc=0
  for name in munged slurmctld "${NODES[@]/#/slurmd-}"; do
    if alive "$name"; then echo "$name: running (pid $(<"$STATE/$name.pid"))"; else echo "$name: not running"; rc=1; fi
  done
  if alive slurmctld; then sinfo && squeue; fi
  return $rc
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
