"""Tokens/s of one full train step (forward, backward, AdamW update), optionally beside PyTorch.

    python benchmarks/train_step.py --model t5 --size small --batch 8 --inputs 256 --targets 64 --torch
    python benchmarks/train_step.py --model decoder --size 1b --layers 2 --batch 1 --inputs 96 --targets 32 \
        --lora_rank 16                                   # LoRA: only the adapters train (BENCHMARKS.md, LoRA)

Runs instruct_jax's jitted step on all local devices (data parallel), then, with --torch, Hugging Face
transformers' T5ForConditionalGeneration (or LlamaForCausalLM) with torch.optim.AdamW on the same shapes, fp32.
Tokens counted are batch x (inputs + targets) per step, all non-padding (random full-length rows).
Both run in this one process, so both get the same malloc setting (see --system_malloc).
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import host, optim, sharding, step
from instruct_jax.models import build, decoder, lora, t5


def _batch(model_kind: str, batch: int, inputs: int, targets: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  if model_kind == "t5":
    tgt = rng.integers(2, vocab, (batch, targets), dtype=np.int32)
    return {"encoder_input_tokens": rng.integers(2, vocab, (batch, inputs), dtype=np.int32),
            "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1),
            "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones((batch, targets), np.float32)}
  seq = rng.integers(2, vocab, (batch, inputs + targets + 1), dtype=np.int32)
  w = np.zeros((batch, inputs + targets), np.float32)
  w[:, inputs:] = 1
  return {"decoder_input_tokens": seq[:, :-1], "decoder_target_tokens": seq[:, 1:], "decoder_loss_weights": w}


def bench_jax(args) -> tuple[float, float]:
  """Median seconds per step and XLA's FLOP count for one device's share of the step."""
  kw = dict(remat_policy=args.remat, dtype=jnp.dtype(args.dtype))
  if args.layers:
    kw.update(dict(num_encoder_layers=args.layers, num_decoder_layers=args.layers) if args.model == "t5"
              else dict(num_layers=args.layers))
  if args.lora_rank:
    kw["lora"] = lora.LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                                 targets=tuple(args.lora_targets.split(",")))
  model = build.from_config((t5 if args.model == "t5" else decoder).config_for(args.size, **kw))
  mesh = sharding.make_mesh({"data": -1})
  rules = sharding.get_rules("data_parallel")
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-4, schedule="constant", grad_clip_norm=0.0)
  tx = optim.make_optimizer(ocfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  train = step.jit_train_step(model, tx, step.LossConfig(), optim.make_schedule(ocfg), mesh, rules, state_sh)
  batch = jax.device_put(_batch(args.model, args.batch, args.inputs, args.targets, model.config.vocab_size),
                         sharding.batch_sharding(mesh, rules))
  t0 = time.perf_counter()
  compiled = train.lower(state, batch, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  mem, gib = compiled.memory_analysis(), 1024 ** 3
  n_train = sum(x.size for x in jax.tree.leaves(model.trainable(state.params)))
  print(f"jax: {sum(x.size for x in jax.tree.leaves(state.params)) / 1e6:,.1f}M parameters, {n_train / 1e6:,.2f}M "
        f"trained; params {nbytes(state.params) / gib:.2f} GiB, optimizer state {nbytes(state.opt_state) / gib:.2f} "
        f"GiB; XLA temp buffers {mem.temp_size_in_bytes / gib:.2f} GiB")
  state, m = compiled(state, batch, jax.random.key(0))
  jax.block_until_ready(m)
  # cost_analysis() describes the partitioned program, i.e. one device's share of the step.
  print(f"jax: compile + first step {time.perf_counter() - t0:.1f} s; XLA counts "
        f"{cost['flops'] / 1e9:,.1f} GFLOP per device per step ({jax.device_count()} device(s))")
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  print(f"jax: peak resident memory of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} "
        "GiB")
  return float(np.median(times)), float(cost["flops"])


def bench_torch(args) -> float:
  import torch
  import transformers
  torch.manual_seed(0)
  if args.model == "t5":
    c = t5.config_for(args.size)
    cfg = transformers.T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_ff=c.d_ff, d_kv=c.head_dim,
                                num_heads=c.num_heads, num_layers=c.num_encoder_layers,
                                num_decoder_layers=c.num_decoder_layers, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(cfg)
  else:
    c = decoder.config_for(args.size)
    cfg = transformers.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                                   num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                   num_hidden_layers=c.num_layers, tie_word_embeddings=c.tie_embeddings)
    model = transformers.LlamaForCausalLM(cfg)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  b = {k: torch.from_numpy(v) for k, v in _batch(args.model, args.batch, args.inputs, args.targets,
                                                  c.vocab_size).items()}

  def one_step():
    if args.model == "t5":
      out = model(input_ids=b["encoder_input_tokens"].long(), decoder_input_ids=b["decoder_input_tokens"].long(),
                  labels=b["decoder_target_tokens"].long())
    else:
      labels = torch.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100).long()
      logits = model(input_ids=b["decoder_input_tokens"].long()).logits
      out = type("O", (), {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())})
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  one_step()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    one_step()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", choices=["t5", "decoder"], default="t5")
  p.add_argument("--size", default="small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=256)
  p.add_argument("--targets", type=int, default=64)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--remat", default="none")
  p.add_argument("--layers", type=int, default=0, help="override the size's layer count (0: the size's)")
  p.add_argument("--lora_rank", type=int, default=0, help="train LoRA adapters of this rank only (0: everything)")
  p.add_argument("--lora_targets", default="query,value", help="projections that get adapters (models/lora.py)")
  p.add_argument("--dtype", default="float32", help="compute dtype (parameters stay fp32): bfloat16 on GPU/TPU")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="peak TFLOP/s of one device (989 for an H100's dense bf16); prints MFU")
  p.add_argument("--torch", action="store_true", help="also time the PyTorch/transformers reference")
  p.add_argument("--system_malloc", action="store_true",
                 help="leave glibc malloc as it is (by default both implementations run with "
                      "instruct_jax.host.keep_freed_memory(), as the trainer does)")
  args = p.parse_args()
  if not args.system_malloc:
    host.keep_freed_memory()
  tokens = args.batch * (args.inputs + args.targets)
  print(f"devices: {jax.devices()}; {args.model}-{args.size}, batch {args.batch} x ({args.inputs} + "
        f"{args.targets}) = {tokens} tokens/step; malloc: {'system' if args.system_malloc else 'keep freed'}")
  t_jax, flops = bench_jax(args)
  print(f"instruct_jax: {t_jax:.2f} s/step, {tokens / t_jax:,.0f} tokens/s (median of {args.steps}), "
        f"{flops / t_jax / 1e9:,.1f} GFLOP/s per device")
  if args.peak_tflops:
    # With --remat none XLA's count is the model's FLOPs (every row is full length, so no padding).
    what = "MFU" if args.remat == "none" else "hardware FLOPs utilisation (remat recomputes)"
    print(f"{what}: {flops / t_jax / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:g} TFLOP/s per device")
  if args.torch:
    if args.dtype != "float32":
      print(f"note: the PyTorch reference runs in float32, instruct_jax in {args.dtype}")
    import torch
    t_torch = bench_torch(args)
    print(f"pytorch {torch.__version__} (threads {torch.get_num_threads()}): {t_torch:.2f} s/step, "
          f"{tokens / t_torch:,.0f} tokens/s (median of {args.steps})")
    print(f"speed-up: {t_torch / t_jax:.2f}x")


if __name__ == "__main__":
  main()
