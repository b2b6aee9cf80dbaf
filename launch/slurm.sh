#!/usr/bin/env bash
#SBATCH --job-name=instruct_jax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#
# Runs the trainer on a SLURM GPU cluster: one process per GPU on every node, all running the same
# command. Submit it from the repository root, with the Python environment that has instruct_jax
# installed active (srun passes the environment on to every node):
#
#   sbatch --nodes=4 launch/slurm.sh configs/recipes/flan_t5.py:xl /shared/runs/flan_t5_xl -- --config.total_steps=20000
#
# Arguments: CONFIG WORKDIR [-- TRAINER_ARGS...]; everything after `--` goes to the trainer unchanged.
# The #SBATCH lines above are defaults (1 node, 8 GPUs, 8 CPUs per GPU, 24 h); anything given to sbatch
# on the command line wins. Keep --ntasks-per-node equal to --gpus-per-node: when SLURM starts more
# than one process, the trainer calls jax.distributed.initialize(), which gives each process the
# GPU numbered by its SLURM_LOCALID. The workdir must be on storage every node can reach; resubmitting
# with the same workdir resumes. Environment: PYTHON (interpreter, default python3), INSTRUCT_JAX_ROOT
# (the checkout, default the directory sbatch was called from).
set -euo pipefail

usage() {
  sed -n '/^# Runs/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
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

cd "${INSTRUCT_JAX_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
srun --kill-on-bad-exit=1 "${PYTHON:-python3}" -m instruct_jax.train --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@"
