"""Fine-tune any pre-trained checkpoint on your instruction data: the model's shape and its tokenizer come
from config.init_from, so you name no model size.

    python -m instruct_jax.convert --from hf --src /ckpt/flan-t5-base --dst /ckpt/flan-t5-base-ij   # optional
    python -m instruct_jax.train --config configs/finetune.py --workdir /tmp/finetune \\
        --config.init_from=/ckpt/flan-t5-base-ij --config.data_paths.instruction_files.mine=/data/mine.jsonl
    python -m instruct_jax.generate --workdir /tmp/finetune --prompt "Name three primary colours."
    python -m instruct_jax.convert --to hf --src /tmp/finetune --dst /tmp/finetune-hf

init_from may be a converted directory, a Hugging Face directory (T5 v1.1 / Flan-T5, LLaMA, Mistral,
Llama-3, SmolLM2, Qwen2 / Qwen2.5 / Qwen3, Gemma 2 / Gemma 3), a T5X checkpoint (then also set
--config.tokenizer.path) or another run's workdir. Setting
config.model.size or a config.model.overrides field that contradicts the checkpoint is an error; runtime
settings (model.dtype, param_dtype, remat_policy, scan_layers, dropout_rate) are yours to choose (this config
scans the layers and rematerialises all but the weight matmuls' outputs: --config.model.scan_layers=False
--config.model.remat_policy=none keeps every activation instead).
Files: JSONL records {instruction, input, output} (Alpaca / Self-Instruct format); NAME=FILE is the train
split, NAME=train=A.jsonl,test=B.jsonl adds a test split that `python -m instruct_jax.evaluate --workdir
/tmp/finetune --tasks NAME --num_examples 100` scores (exact match, ROUGE-L).
Hardware: as the checkpoint needs (see configs/recipes/flan_t5.py and configs/decoder_llama.py for meshes of big
models; pass --config.mesh.fsdp=8 --config.sharding=fsdp for FSDP). Runtime: 1000 steps of 32 rows of
512 + 256 tokens, e.g. ~20 min for Flan-T5-base on one GPU (estimated, not measured by this project).
Expected result: the loss on your outputs falls; the numbers depend on your data. lr 5e-5 is Tk-Instruct's
for T5; Alpaca used 2e-5 for LLaMA-7B (--config.optim.learning_rate=2e-5).
"""
import ml_collections

from instruct_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = configs.base()
  c.total_steps = 1000
  c.log_every = 20
  c.checkpoint_every = 200
  c.model.kind, c.model.size = "", ""  # from config.init_from
  # One scanned layer, rematerialised but for its weight matmuls' outputs: a real model's step holds a fraction of
  # the activations and on CPU runs no slower (SmolLM2-135M: BENCHMARKS.md, "Fine-tuning a real checkpoint on CPU").
  c.model.scan_layers = True
  c.model.remat_policy = "dots_no_batch"
  c.data.mixture = "instructions"  # every instruction file named under data_paths.instruction_files
  c.data.inputs_length = 512
  c.data.targets_length = 256
  c.data.batch_size = 32
  c.optim.learning_rate = 5e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 30
  c.optim.end_lr_fraction = 0.1
  c.eval.num_examples = 0  # name tasks to evaluate: --config.eval.tasks="('mine',)" --config.eval.num_examples=100
  c.eval.before_training = False
  return c
