"""Instruction-tune a LLaMA-style decoder. The argument names the shapes: "1b" (Llama-3.2-1B) or "7b"
(LLaMA-2-7B); they must match config.init_from's checkpoint (a contradiction is an error).

    python -m instruct_jax.convert --from hf --src /ckpt/Llama-2-7b-hf --dst /ckpt/llama2-7b-ij --scan_layers
    python -m instruct_jax.train --config configs/decoder_llama.py:7b --workdir /mnt/bucket/llama7b \\
        --config.init_from=/ckpt/llama2-7b-ij \\
        --config.data_paths.instruction_files.alpaca=/data/alpaca.jsonl --config.data.mixture=instructions

The tokenizer is the checkpoint's own: tokenizer.model (SentencePiece: LLaMA-2, Mistral) or tokenizer.json
(byte-level BPE: Llama-3, read with the `tokenizers` package).
Hardware: 1b and 7b on 8x H100 or a v4-16 (8 chips; FSDP 8, bf16 compute; XLA plans 35 GiB per device for either
step, 1b with dots_no_batch remat and 7b with full remat: BENCHMARKS.md, "Compile time"); fp32 Adam states of 7b
need ~108 GB in all, so FSDP over 8 devices or Adafactor. On fewer devices set --config.mesh.fsdp.
Sequences of 2048 tokens (1536 instruction + 512 output budget), packed; loss on outputs and their
end-of-text token only.
Runtime (estimated, not measured by this project): 1b from Llama-3.2-1B, 3,000 steps of 64 packed 2048-token
rows (393M tokens, 3.1e18 model FLOPs: `--dry_run` prints them): ~16 min on 8x H100 at 40% MFU. Set total_steps from your data's
tokens: `python -m instruct_jax.data.preview` prints them.
Expected result: not yet measured here; the loss on held-out instructions falls as in the quickstart, and
`python -m instruct_jax.evaluate --tasks ...` scores SuperNI tasks for comparison with published tables.
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
  c = configs.base()
  c.total_steps = 3000
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval_every = 1000
  c.model.kind, c.model.size = "decoder", size
  c.model.dtype = "bfloat16"
  c.model.remat_policy = s["remat"]
  c.model.scan_layers = True
  c.tokenizer.vocab_size = 32000
  c.data.mixture = "builtin"
  c.data.inputs_length = 1536
  c.data.targets_length = 512
  c.data.batch_size = s["batch"]
  c.data.render.few_shot_rate = 0.2
  c.data.render.options_rate = 0.5
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  c.sharding = "fsdp"
  c.optim.learning_rate = 2e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.eval.num_examples = 50
  c.eval.max_new_tokens = 64
  c.eval.before_training = False
  return c
