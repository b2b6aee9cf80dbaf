"""Instruction-tune a LLaMA-style decoder. The argument picks the shapes: "1b" (Llama-3.2-1B) or "7b" (LLaMA-2-7B).

    python -m instruct_jax.convert --from hf --src /ckpt/Llama-2-7b-hf --dst /ckpt/llama2-7b-ij --scan_layers
    python -m instruct_jax.train --config configs/decoder_llama.py:7b --workdir gs://bucket/llama7b \
        --config.init_from=/ckpt/llama2-7b-ij --config.tokenizer.path=/ckpt/Llama-2-7b-hf/tokenizer.model \
        --config.data_paths.instruction_files.alpaca=/data/alpaca.jsonl --config.data.mixture=instructions

The tokenizer must be the checkpoint's own (the trainer refuses one whose special ids disagree). Llama-3.2-1B
weights need Llama-3's tokenizer.json, which this project does not read, so "1b" is for training those
shapes from scratch with a SentencePiece tokenizer, or from a 1B checkpoint that ships tokenizer.model.
Hardware: 1b on one H100 or a v4-8 (FSDP over the local devices); 7b on 8x H100 or a v4-32 (FSDP 8, bf16
compute, full remat; fp32 Adam states need ~108 GB in all, so FSDP over 8 devices or Adafactor).
Sequences of 2048 tokens (1536 instruction + 512 output budget), packed; loss on outputs and their
end-of-text token only.
Runtime (estimated, not measured by this project): 1b, 3 epochs of 52k Alpaca-size examples, ~2 h on 8x H100.
Expected result: not yet measured here; the loss on held-out instructions falls as in the quickstart, and
`python -m instruct_jax.evaluate --tasks ...` scores SuperNI tasks for comparison with published tables.
Llama-3's tokenizer.json (tiktoken-style BPE) is not loaded by this project: see instruct_jax.convert.
"""
import ml_collections

from instruct_jax import configs

_SIZES = {
    "1b": dict(mesh=dict(data=-1, fsdp=8, tensor=1), remat="dots_no_batch", batch=64),
    "7b": dict(mesh=dict(data=-1, fsdp=8, tensor=1), remat="full", batch=64),
}


def get_config(arg: str | None = "1b") -> ml_collections.ConfigDict:
  size = arg or "1b"
  if size not in _SIZES:
    raise ValueError(f"decoder size must be one of {sorted(_SIZES)}, got {size!r}")
  s = _SIZES[size]
  c = configs.sibling(__file__, "quickstart_decoder.py")
  c.total_steps = 3000
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_every = 1000
  c.model = ml_collections.ConfigDict(dict(kind="decoder", size=size, dtype="bfloat16", param_dtype="float32",
                                           remat_policy=s["remat"], scan_layers=True, overrides={}))
  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=32000, train_examples=0))
  c.data = ml_collections.ConfigDict(dict(
      mixture="builtin", inputs_length=1536, targets_length=512, batch_size=s["batch"], pack=True,
      train_on_inputs=False, render=dict(few_shot_rate=0.2, options_rate=0.5)))
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  c.sharding = "fsdp"
  c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=2e-5, schedule="cosine",
                                           warmup_steps=100, weight_decay=0.0, grad_clip_norm=1.0))
  c.eval.num_examples = 50
  c.eval.max_new_tokens = 64
  c.eval.before_training = False
  return c
