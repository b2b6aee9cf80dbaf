#!/usr/bin/env bash
# Issue 12's GPU figures in one call on a machine with one GPU (jax with CUDA, torch and transformers; the
# benchmark imports no grain, ml_collections or TFDS), run from the repository root:
#
#     bash benchmarks/gpu_issue12.sh          # log: ${OUT:-/tmp}/issue12_gpu.log
#
# Every case has its own time limit, so one slow case cannot starve the rest; about 8 minutes in all on an
# H200. Results go into BENCHMARKS.md ("Attention kernels", "Compile time") with the device named.
set -u
export PYTHONUNBUFFERED=1  # a case cut by its time limit still leaves what it printed
LOG="${OUT:-/tmp}/issue12_gpu.log"
: > "$LOG"
run() {
  local limit=$1; shift
  echo "=== python benchmarks/train_step.py $*" | tee -a "$LOG"
  timeout -k 15 "$limit" python benchmarks/train_step.py "$@" 2>&1 | grep --line-buffered -vE '^[WI][0-9]{4} ' \
    | tee -a "$LOG"
  echo "=== exit ${PIPESTATUS[0]} (124: over its ${limit} s)" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', \
torch.__version__, 'transformers', transformers.__version__, jax.devices())" 2>&1 | tee -a "$LOG"

DEC="--model decoder --size 1b --batch 8 --inputs 1536 --targets 512 --dtype bfloat16 --steps 5"
T5L="--model t5 --size large --batch 8 --inputs 1024 --targets 256 --dtype bfloat16 --steps 5"
run 190 $DEC --attention cudnn --torch             # vs transformers eager and torch.compile, same shapes
run 70 $DEC --attention cudnn --remat dots_no_batch  # memory against PyTorch's
run 150 $T5L --attention auto --scan_layers --torch  # cuDNN with T5's bias; vs transformers eager
run 100 $T5L --attention auto --compile_only         # unrolled layers: the compile time issue 12 reports
