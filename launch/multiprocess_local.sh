#!/usr/bin/env bash
# Runs NUM_PROCESSES JAX processes on this machine, on the CPU, each with DEVICES_PER_PROCESS
# (forced) devices, joined by jax.distributed on 127.0.0.1: a multi-host run in miniature, for
# testing the multi-process code paths without a pod or a cluster.
#   bash launch/multiprocess_local.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR \
#       [--mode=sample] [KEY=VALUE ...] [--any.other=flag]
# KEY=VALUE pairs become config overrides (train.batch_size=64 -> --config.train.batch_size=64).
# Process 0 prints to the terminal; process I>0 logs to $LOG_DIR/process_I.log (LOG_DIR defaults
# to WORKDIR/logs). PORT picks the coordinator port (default: a free one). SIGTERM/SIGINT to this
# script are passed on to every process (they agree on a step, checkpoint and exit 0); if one
# process fails the others are stopped. The exit status is the first failing process's, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh
usage="bash launch/multiprocess_local.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [KEY=VALUE ...]"
case "${1:-}" in -h|--help) echo "usage: $usage"; exit 0 ;; esac
[ $# -ge 4 ] || usage_error launch/multiprocess_local.sh "$usage" \
  "expected NUM_PROCESSES, DEVICES_PER_PROCESS, CONFIG and WORKDIR"
check_count launch/multiprocess_local.sh "$usage" NUM_PROCESSES "$1"
check_count launch/multiprocess_local.sh "$usage" DEVICES_PER_PROCESS "$2"
check_args launch/multiprocess_local.sh "$usage" "$3" "$4"
nproc=$1 ndev=$2 config=$3 workdir=$4
shift 4
args=()
add_overrides launch/multiprocess_local.sh "$@"
port=${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-$workdir/logs}
mkdir -p "$log_dir"

pids=()
for ((i = 0; i < nproc; i++)); do
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$ndev ${XLA_FLAGS:-}"
       "$PY" -m ddpm_jax.main --config="$config" --workdir="$workdir"
       --coordinator_address="127.0.0.1:$port" --num_processes="$nproc" --process_id="$i"
       "${args[@]}")
  if [ "$i" -eq 0 ]; then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

forward() {  # Sends signal $1 to the processes still running.
  local p
  for p in "${pids[@]}"; do [ -n "$p" ] && kill -"$1" "$p" 2>/dev/null; done
  return 0
}
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
killer=""
while :; do
  alive=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [ -z "$pid" ] && continue
    if kill -0 "$pid" 2>/dev/null; then alive=1; continue; fi
    wait "$pid"; rc=$?
    pids[$i]=""
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      echo "launch/multiprocess_local.sh: process $i exited with status $rc; stopping the others" \
           "(logs in $log_dir)." >&2
      forward TERM
      ( sleep 30; forward KILL ) &  # Processes blocked in a collective never see the flag.
      killer=$!
    fi
  done
  [ "$alive" -eq 0 ] && break
  sleep 0.5
done
[ -n "$killer" ] && kill "$killer" 2>/dev/null
exit "$status"
