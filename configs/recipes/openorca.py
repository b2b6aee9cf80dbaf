"""Mistral-7B-OpenOrca: Mistral-7B fine-tuned on Orca-style explanation traces, in ChatML with Orca's system
messages.

    python -m instruct_jax.synthetic.orca --queries flan_queries.jsonl --out /data/orca \\
        --num-instructions 500000 --backend openai --base-url URL --model NAME
    python -m instruct_jax.convert --from hf --src /ckpt/Mistral-7B-v0.1 --dst /ckpt/mistral-7b-ij --scan_layers
    python -m instruct_jax.train --config configs/recipes/openorca.py --workdir /mnt/bucket/openorca \\
        --config.init_from=/ckpt/mistral-7b-ij --config.data_paths.instruction_files.orca=/data/orca/orca.jsonl

Each Orca record (system message, query, teacher response) becomes the conversation [system, user,
assistant]; the loss is on the teacher's response and its <|im_end|> only.
Published setup (the Open-Orca/Mistral-7B-OpenOrca model card, as we read it; check it before relying on a
number): Mistral-7B-v0.1 with full fine-tuning on a curated, filtered subset of the OpenOrca data's GPT-4
completions (OpenOrca reproduces the Orca paper's FLAN queries answered under Orca's system messages); ChatML
prompts with <|im_start|> and <|im_end|> added as tokens; examples packed into 8k-token rows; trained with
Axolotl on 8x A6000 for about 62 hours, 4 epochs. The card gives no learning rate or batch size: this recipe
uses AdamW at 2e-5 with cosine decay after 3% warmup, no weight decay, clipping at 1.0, and 32 packed rows of
8192 tokens per step (about 262K tokens). total_steps assumes about 300M tokens per epoch (500K examples of
~600 tokens; their later SlimOrca subset has about 500K GPT-4 completions): 4 epochs ~ 4,600 steps. Set it from
your data: `python -m instruct_jax.data.preview` prints its token counts.
Prompt: data.chat_format=chatml. Mistral-7B-v0.1's tokenizer lacks ChatML's markers, so the run adds them as tokens
32000 (<|im_start|>) and 32001 (<|im_end|>) and grows the embedding and output tables to 32002 rows, the new rows
starting as the mean of the old ones (data.add_chat_tokens; the published model added the same ids); the workdir's
tokenizer, checkpoints and `convert --to hf` export carry them. Training from scratch (no init_from), the trained
tokenizer keeps the markers as single pieces. Orca records without a system message get none.
Hardware: sized for 8x A100/H100 80GB or a TPU v4-32 (FSDP over 8 devices, bf16 compute, full remat); the
sliding window of 4096 positions is Mistral's own. It needs a fused attention kernel (config.model.attention
auto picks cuDNN on a GPU, Pallas on a TPU): with the einsum path XLA plans 110 GiB per device for the step,
most of it one layer's 8192 x 8192 attention logits (BENCHMARKS.md, "Compile time"; not yet run on a GPU).
Runtime: estimated 20-30 h on 8x H100 for the 4,600 steps (not measured by this project).
Expected result: the card reports that at release this model ranked first among models under 30B parameters
on the Hugging Face Open LLM Leaderboard; `python -m instruct_jax.evaluate` scores held-out tasks here.
Not reproduced here.
"""
import ml_collections

from instruct_jax import configs

EPOCHS, TOKENS_PER_EPOCH, ROWS, ROW_TOKENS = 4, 300e6, 32, 8192


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = configs.base()
  c.total_steps = round(EPOCHS * TOKENS_PER_EPOCH / (ROWS * ROW_TOKENS))  # ~4,578
  c.log_every = 20
  c.checkpoint_every = 500
  c.model.kind, c.model.size = "decoder", "mistral_7b"  # Mistral-7B-v0.1 shapes (init_from's must agree)
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "full"
  c.model.scan_layers = True
  c.tokenizer.vocab_size = 32000  # used only without init_from
  c.data.mixture = "instructions"  # Orca records; use "chat" for conversation files (data_paths.chat_files)
  c.data.chat_format = "chatml"
  c.data.inputs_length = ROW_TOKENS - 2048  # a row's instruction budget; the response gets at least 2048
  c.data.targets_length = 2048
  c.data.batch_size = ROWS
  c.data.pack = True
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1))
  c.sharding = "fsdp"
  c.optim.optimizer = "adamw"
  c.optim.learning_rate = 2e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = round(0.03 * c.total_steps)
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  c.eval.num_examples = 0  # with a test split: --config.eval.tasks="('orca',)" --config.eval.num_examples=200
  c.eval.before_training = False
  return c
