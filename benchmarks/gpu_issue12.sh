#!/usr/bin/env bash
# Issue 12's GPU figures in one call on a machine with one GPU (jax with CUDA, torch and transformers; the
# benchmark imports no grain, ml_collections or TFDS), run from the repository root:
#
#     bash benchmarks/gpu_issue12.sh          # log: ${OUT:-/tmp}/issue12_gpu.log
#
# Every case has its own time limit, so one slow case cannot starve the rest; about 9 minutes in all on an
# H200. Results go into BENCHMARKS.md ("Attention kernels", "Compile time") with the device named.
set -u
export PYTHONUNBUFFERED=1  # a case cut by its time limit still leaves what it printed
# The device machine runs a copy of the working tree with nothing installed: import the project from it.
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-/tmp}/issue12_gpu.log"
: > "$LOG"
run() {  # run LIMIT SCRIPT ARGS...: one case, cut at LIMIT seconds
  local limit=$1 script=$2; shift 2
  echo "=== python benchmarks/$script $*" | tee -a "$LOG"
  timeout -k 15 "$limit" python "benchmarks/$script" "$@" 2>&1 | grep --line-buffered -vE '^[WI][0-9]{4} ' \
    | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== exit $rc$( [ "$rc" = 124 ] && echo " (over its ${limit} s)")" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', \
torch.__version__, 'transformers', transformers.__version__, jax.devices())" 2>&1 | tee -a "$LOG"

DEC="--model decoder --size 1b --batch 8 --inputs 1536 --targets 512 --dtype bfloat16 --steps 5"
T5L="--model t5 --size large --batch 8 --inputs 1024 --targets 256 --dtype bfloat16 --steps 5"
CUDNN=cudnn
if [ "${ISSUE12_SMOKE:-0}" = 1 ]; then  # the same cases at tiny shapes on a CPU (tests/test_benchmarks.py)
  DEC="--model decoder --size tiny --batch 2 --inputs 48 --targets 16 --steps 2"
  T5L="--model t5 --size tiny --batch 2 --inputs 32 --targets 16 --steps 2"
  CUDNN=auto
fi
CHECK="--impl cudnn"  # on a CPU its arguments run through jax's xla implementation
[ "${ISSUE12_SMOKE:-0}" = 1 ] && CHECK="$CHECK --length 64"
run 60 attention_check.py $CHECK                                  # the real kernel equals the einsum path
run 190 train_step.py $DEC --attention $CUDNN --torch             # vs transformers eager and torch.compile
run 70 train_step.py $DEC --attention $CUDNN --remat dots_no_batch  # memory against PyTorch's
run 150 train_step.py $T5L --attention auto --scan_layers --torch  # cuDNN with T5's bias; vs transformers eager
run 100 train_step.py $T5L --attention auto --compile_only         # unrolled layers: issue 12's compile time
