#!/usr/bin/env bash
# Runs the trainer on every worker of a Cloud TPU VM pod: create the pod (or reuse it), copy this
# checkout to every worker, install it, and start the same command on all of them at once.
#
#   TPU_NAME=my-pod ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     launch/tpu_pod.sh configs/recipes/flan_t5.py:base /mnt/my-bucket/runs/flan_t5_base -- --config.total_steps=20000
#
# Every setting comes from the environment (defaults in brackets):
#   TPU_NAME          pod name                                        [instruct-jax]
#   ZONE              zone                                            [us-central2-b]
#   ACCELERATOR_TYPE  slice type, e.g. v4-32, v5litepod-16            [v4-8]
#   VERSION           TPU VM software version (runtime image)         [tpu-ubuntu2204-base]
#   PROJECT           gcloud project (empty: gcloud's default)        []
#   SPOT              1: create a Spot (preemptible) pod              [0]
#   REMOTE_DIR        where the code goes on every worker (relative   [instruct_jax]
#                     paths are under the worker's home directory)
#   JAX_EXTRA         pip extra for JAX on the workers                [tpu]  (installs "jax[tpu]")
# Arguments: CONFIG WORKDIR [-- TRAINER_ARGS...]; everything after `--` goes to the trainer unchanged.
# The workdir must be a path every worker sees as a local filesystem (e.g. a GCS bucket mounted with gcsfuse
# at the same place on every worker). Workers find each other themselves
# (the trainer calls jax.distributed.initialize() on a pod). Rerunning with the same workdir resumes.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -lt 2 ]]; then
  echo "error: need CONFIG and WORKDIR (see --help)" >&2
  exit 2
fi
CONFIG="$1"
WORKDIR="$2"
shift 2
if [[ $# -gt 0 ]]; then
  if [[ "$1" != "--" ]]; then
    echo "error: trainer arguments go after '--', got '$1' (see --help)" >&2
    exit 2
  fi
  shift
fi

TPU_NAME="${TPU_NAME:-instruct-jax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-instruct_jax}"
JAX_EXTRA="${JAX_EXTRA:-tpu}"
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  WHERE+=(--project="$PROJECT")
fi

# 1. Create the pod unless it exists.
if "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" > /dev/null 2>&1; then
  echo "reusing TPU VM $TPU_NAME in $ZONE"
else
  CREATE=(--accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
  if [[ "${SPOT:-0}" == "1" ]]; then
    CREATE+=(--spot)
  fi
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $VERSION) in $ZONE"
  "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" "${CREATE[@]}"
fi

# 2. Copy the checkout (without git history or caches) to every worker.
ARCHIVE="$(mktemp -t instruct_jax_XXXXXX.tar.gz)"
trap 'rm -f "$ARCHIVE"' EXIT
tar -czf "$ARCHIVE" -C "$REPO_ROOT" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' .
"${GCLOUD[@]}" scp "$ARCHIVE" "$TPU_NAME":/tmp/instruct_jax.tar.gz --worker=all "${WHERE[@]}"

# 3. Unpack and install on every worker.
DIR_Q="$(printf '%q' "$REMOTE_DIR")"
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all "${WHERE[@]}" --command="set -e
  mkdir -p $DIR_Q && tar -xzf /tmp/instruct_jax.tar.gz -C $DIR_Q && cd $DIR_Q
  python3 -m pip install -q -e . $(printf '%q' "jax[$JAX_EXTRA]")"

# 4. The same trainer command on every worker; the arguments after `--` arrive as they were given.
TRAIN=(python3 -m instruct_jax.train --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@")
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all "${WHERE[@]}" --command="cd $DIR_Q && $(printf '%q ' "${TRAIN[@]}")"
