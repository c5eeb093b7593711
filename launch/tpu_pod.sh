#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: creates the slice (or reuses one of that name), copies this
# checkout to every worker and installs it there, runs the same `wristmir train` on all workers
# (each worker's output in $LOG_DIR/worker-<i>.log), then deletes or stops the slice.
#
#   ZONE=us-central2-b ACCELERATOR_TYPE=v5litepod-256 \
#     launch/tpu_pod.sh my-slice --config configs/vit_b16_pod.py --workdir gs://bucket/run1
#
# Worker i runs `WRISTMIR_COORDINATOR=<worker 0 ip>:PORT WRISTMIR_NUM_PROCESSES=<workers>
# WRISTMIR_PROCESS_ID=i wristmir train ARGS` (train/distributed.py -> jax.distributed); the
# workdir should be a gs:// URL that every worker can write (checkpoints via orbax).
# Environment:
#   ZONE               (required) zone of the slice
#   ACCELERATOR_TYPE   slice type for a new slice (default v5litepod-16)
#   RUNTIME_VERSION    TPU VM image for a new slice (default v2-alpha-tpuv5-lite)
#   PROJECT            gcloud project (default: gcloud's configured one)
#   SPOT=1             create a Spot slice
#   AFTER              delete | stop | keep: what to do with the slice at the end (default:
#                      delete a slice this script created, keep one it reused)
#   INSTALL_CMD        run in ~/wristmir on each worker (default: pip install '.[tpu]')
#   WORKER_PYTHON      python on the workers (default python3)
#   PORT               coordinator port on worker 0 (default 8476)
#   LOG_DIR            local folder for the per-worker logs (default ./tpu_logs/<name>)
# Exits 2 on bad usage, else with the first non-zero exit code of any worker.
set -euo pipefail

usage() {
  echo "usage: ZONE=... $0 SLICE_NAME [wristmir train arguments...]" >&2
  exit 2
}
[[ $# -ge 1 && -n "$1" && "$1" != -* ]] || usage
NAME=$1
shift
[[ -n "${ZONE:-}" ]] || { echo "$0: set ZONE (e.g. ZONE=us-central2-b)" >&2; exit 2; }
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5litepod-16}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}
WORKER_PYTHON=${WORKER_PYTHON:-python3}
PORT=${PORT:-8476}
INSTALL_CMD=${INSTALL_CMD:-$WORKER_PYTHON -m pip install -q --upgrade '.[tpu]'}
LOG_DIR=${LOG_DIR:-tpu_logs/$NAME}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project="$PROJECT")

created=0
if "${tpu[@]}" describe "$NAME" "${where[@]}" --format='value(state)' >/dev/null 2>&1; then
  echo "reusing TPU slice $NAME" >&2
else
  extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  echo "creating TPU slice $NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION)" >&2
  "${tpu[@]}" create "$NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${extra[@]}"
  created=1
fi
AFTER=${AFTER:-$([[ $created == 1 ]] && echo delete || echo keep)}

# shellcheck disable=SC2329  # run by the EXIT trap (via cleanup)
finish() {
  case "$AFTER" in
    delete) "${tpu[@]}" delete "$NAME" "${where[@]}" --quiet ;;
    stop) "${tpu[@]}" stop "$NAME" "${where[@]}" ;;
    keep) echo "keeping TPU slice $NAME" >&2 ;;
    *) echo "$0: AFTER must be delete, stop or keep (got $AFTER); slice $NAME kept" >&2 ;;
  esac
}
stage=$(mktemp -d)
# shellcheck disable=SC2329  # the EXIT trap
cleanup() {
  rm -rf "$stage"
  finish
}
trap cleanup EXIT

# Workers: one network endpoint each.
endpoints=$("${tpu[@]}" describe "$NAME" "${where[@]}" --format='value(networkEndpoints[].ipAddress)')
IFS=';' read -r -a ips <<<"$endpoints"
workers=${#ips[@]}
[[ $workers -ge 1 ]] || { echo "$0: slice $NAME reports no workers" >&2; exit 1; }
echo "slice $NAME: $workers workers" >&2

# The package: this checkout (tracked and untracked-not-ignored files), copied to every
# worker and installed there.
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -czf "$stage/wristmir.tar.gz" -T -)
"${tpu[@]}" scp "$stage/wristmir.tar.gz" "$NAME:wristmir.tar.gz" "${where[@]}" --worker=all
"${tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all --command \
  "rm -rf wristmir && mkdir wristmir && tar -xzf wristmir.tar.gz -C wristmir && cd wristmir && $INSTALL_CMD"

# The same train command on every worker, with its rank; each worker's output to a local log.
train_cmd="cd wristmir && $WORKER_PYTHON -m wristmir_jax train$(printf ' %q' "$@")"
ranks="WRISTMIR_COORDINATOR=${ips[0]}:$PORT WRISTMIR_NUM_PROCESSES=$workers"
mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < workers; i++)); do
  "${tpu[@]}" ssh "$NAME" "${where[@]}" --worker="$i" \
    --command "export $ranks WRISTMIR_PROCESS_ID=$i && $train_cmd" \
    >"$LOG_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "worker $i failed (exit $rc); log: $LOG_DIR/worker-$i.log" >&2
    [[ $status -eq 0 ]] && status=$rc
  fi
done
[[ $status -eq 0 ]] && echo "all $workers workers finished; logs: $LOG_DIR/worker-*.log" >&2
exit $status
