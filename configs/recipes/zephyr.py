"""Zephyr-7B-beta's preference step: DPO on UltraFeedback-binarized pairs, from an SFT checkpoint.

    python -m instruct_jax.convert --from hf --src /ckpt/mistral-7b-sft-beta --dst /ckpt/zephyr-sft-ij --scan_layers
    python -m instruct_jax.train --config configs/recipes/zephyr.py --workdir /mnt/bucket/zephyr-dpo \\
        --config.init_from=/ckpt/zephyr-sft-ij --config.data_paths.preference_files.ultrafeedback=/data/uf.jsonl

The pairs file is UltraFeedback-binarized's train_prefs split as JSONL ({"prompt", "chosen", "rejected"} with the
responses as message lists: instruct_jax/data/preferences.py reads it as it is). Each pair is rendered in Zephyr's
chat format (<|user|> / <|assistant|> turns ended by </s>; data.chat_format=zephyr), the prompt once, and only the
responses are scored, their </s> included.
Published setup (Tunstall et al. 2023, "Zephyr: Direct Distillation of LM Alignment", and the zephyr-7b-beta model
card, as we read them; check them before relying on a number): Mistral-7B-v0.1 fine-tuned on UltraChat (the SFT
checkpoint), then DPO on UltraFeedback-binarized (about 61K pairs) with beta 0.1, learning rate 5e-7 with linear
decay after 10% warmup, global batch 32 pairs, 3 epochs, responses cut at 1024 tokens with prompts at 512.
Here: the same settings; total_steps = 3 epochs x 61,135 pairs / 32 ~ 5,731. The reference model is a frozen copy
of the SFT weights held in the train state (one more copy of the parameters, in param_dtype float32: 29 GB in
all, 3.4 GiB per device over 8; `--dry_run` prints it).
Hardware: sized for 8x A100/H100 80GB or a TPU v4-32 (FSDP over 8 devices, bf16 compute, full remat); each step
runs the policy and the reference over 64 rows of 1024 tokens. `--dry_run` prints the memory plan.
Runtime: estimated 8-12 h on 8x H100 (not measured by this project).
Expected result: the paper reports MT-Bench 7.34 and AlpacaEval 90.6% win rate for zephyr-7b-beta; here the run
logs train/rewards/accuracies (rising from 0 as the chosen responses pull ahead) and train/rewards/margins.
Not reproduced here.
"""
import ml_collections

from instruct_jax import configs

EPOCHS, PAIRS, BATCH = 3, 61_135, 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = configs.base()
  c.objective = "dpo"
  c.preference.beta = 0.1
  c.total_steps = round(EPOCHS * PAIRS / BATCH)  # ~5,731
  c.log_every = 10
  c.checkpoint_every = 500
  c.model.kind, c.model.size = "decoder", "mistral_7b"  # Mistral-7B-v0.1 shapes (init_from's must agree)
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "full"
  c.model.scan_layers = True
  c.tokenizer.vocab_size = 32000  # used only without init_from
  c.data.mixture = "preferences"
  c.data.chat_format = "zephyr"
  c.data.inputs_length = 512  # the prompt's budget
  c.data.targets_length = 512  # the response's: a row is at most 1024 tokens
  c.data.batch_size = BATCH  # pairs: 64 rows per step
  c.data.pack = False
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1))
  c.sharding = "fsdp"
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = 5e-7
  c.optim.schedule = "linear"
  c.optim.warmup_steps = round(0.1 * c.total_steps)
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  c.eval.num_examples = 0  # generation-based evaluation: python -m instruct_jax.evaluate / the judge on the workdir
  c.eval.before_training = False
  return c
