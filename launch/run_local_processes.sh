#!/usr/bin/env bash
# N processes of one job on this machine (CPU devices talk over gloo), e.g. to test multi-host
# behaviour without a cluster:
#   launch/run_local_processes.sh 2 --config=configs/pretrain.py:tiny --workdir=runs/mh \
#       --config.data.data_dir=runs/demo/data
# DEVICES_PER_PROCESS (default 2) forces that many CPU devices per process. Every process's
# output goes to WORKDIR-independent logs in ${LOG_DIR:-/tmp}/scaled_ql_process_<i>.log; process
# 0's is also shown. Stops all processes if one fails.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES [launch.pretrain flags...]}; shift
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${DEVICES_PER_PROCESS:-2}
log_dir=${LOG_DIR:-/tmp}
module=${MODULE:-launch.pretrain}
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < n; i++)); do
  : >"${log_dir}/scaled_ql_process_${i}.log"  # Exists before tail opens it (no race).
done
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    "$python" -m "$module" --coordinator_address="localhost:${port}" --num_processes="$n" \
    --process_id="$i" "$@" >"${log_dir}/scaled_ql_process_${i}.log" 2>&1 &
  pids+=($!)
done
tail -f "${log_dir}/scaled_ql_process_0.log" --pid="${pids[0]}" &
tail_pid=$!
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
wait "$tail_pid" || true  # Its last lines are shown before the script returns.
exit "$status"
