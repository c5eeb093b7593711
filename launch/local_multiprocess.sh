#!/usr/bin/env bash
# Runs N `wristmir train` processes on 127.0.0.1 (one JAX process each, CPU collectives over
# gloo), e.g.:
#   launch/local_multiprocess.sh 2 --config configs/tiny.py --workdir /tmp/w
# Environment: PORT (coordinator port, default 12355), DEVICES_PER_PROCESS (simulated CPU
# devices per process, default 1), PYTHON (default .venv/bin/python or python3).
# Process i logs to WORKDIR-less files: $LOG_DIR/process_<i>.log (LOG_DIR default: current dir).
# Exits with the first non-zero exit code of any process.
set -euo pipefail
if [[ $# -lt 1 ]] || ! [[ "$1" =~ ^[0-9]+$ ]] || [[ "$1" -lt 1 ]]; then
  echo "usage: $0 N [wristmir train arguments...]" >&2
  exit 2
fi
N=$1; shift
PORT=${PORT:-12355}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
LOG_DIR=${LOG_DIR:-.}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < N; i++)); do
  WRISTMIR_COORDINATOR="127.0.0.1:$PORT" WRISTMIR_NUM_PROCESSES="$N" WRISTMIR_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
    "$PYTHON" -m wristmir_jax train "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?  # (`if ! wait` would leave $? at 0)
  [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
done
if [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); logs: $LOG_DIR/process_*.log" >&2
fi
exit $status
