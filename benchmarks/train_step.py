"""Tokens/s, MFU, peak memory and compile time of one full train step (forward, backward, AdamW update).

    python benchmarks/train_step.py --model t5 --size small --batch 8 --inputs 256 --targets 64 --torch
    python benchmarks/train_step.py --model decoder --size 1b --layers 2 --batch 1 --inputs 96 --targets 32 \
        --lora_rank 16                                   # LoRA: only the adapters train (BENCHMARKS.md, LoRA)
    python benchmarks/train_step.py --model decoder --size 1b --batch 8 --inputs 1536 --targets 512 \
        --dtype bfloat16 --attention auto --torch

Runs instruct_jax's jitted step on all local devices (data parallel) with the attention core `--attention`
(config.model.attention), then, with --torch, Hugging Face transformers' T5ForConditionalGeneration (or
LlamaForCausalLM) on the same shapes with the settings a PyTorch user would pick: sdpa attention, and on a GPU
bf16 autocast, fused AdamW and, as a second figure, torch.compile (on CPU: fp32, plain AdamW, eager).
Tokens counted are batch x (inputs + targets) per step, all non-padding (random full-length rows, one example
each: the step runs with packed=False, so cuDNN takes per-row lengths rather than a dense mask).
Both run in this one process, so both get the same malloc setting (see --system_malloc).

MFU = analytic model FLOPs per second / the device's peak (instruct_jax/flops.py: the formula, 6 x matmul
parameters per token plus attention, and the peaks by device kind; or --peak_tflops).
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import flops, host, objectives, optim, sharding, step
from instruct_jax.models import attention, build, decoder, lora, t5


def peak_memory() -> str:
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB peak device memory (device 0)"
  return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak host RSS (no device memory stats)"


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


def bench_jax(args) -> tuple[float, float, build.Model]:
  """Median seconds per step, XLA's FLOP count for one device's share of the step, and the model."""
  kw = dict(remat_policy=args.remat, dtype=jnp.dtype(args.dtype), attention=args.attention,
            scan_layers=args.scan_layers)
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
  t0 = time.perf_counter()
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  jax.block_until_ready(state)
  t_init = time.perf_counter() - t0
  # One full-length example per row, as the PyTorch side gets: the cuDNN kernel takes row lengths, no mask.
  train = step.jit_train_step(model, tx, objectives.SFT(), optim.make_schedule(ocfg), mesh, rules, state_sh,
                              packed=False)
  batch = jax.device_put(_batch(args.model, args.batch, args.inputs, args.targets, model.config.vocab_size),
                         sharding.batch_sharding(mesh, rules))
  t0 = time.perf_counter()
  compiled = train.lower(state, batch, jax.random.key(0)).compile()
  t_compile = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  mem, gib = compiled.memory_analysis(), 1024 ** 3
  n_train = sum(x.size for x in jax.tree.leaves(model.trainable(state.params)))
  print(f"jax: {sum(x.size for x in jax.tree.leaves(state.params)) / 1e6:,.1f}M parameters, {n_train / 1e6:,.2f}M "
        f"trained; params {nbytes(state.params) / gib:.2f} GiB, optimizer state {nbytes(state.opt_state) / gib:.2f} "
        f"GiB; XLA temp buffers {mem.temp_size_in_bytes / gib:.2f} GiB")
  if args.compile_only:
    print(f"jax: state init {t_init:.1f} s (compile + run), step compile {t_compile:.1f} s (lower + compile); "
          "--compile_only: no step run")
    return float("nan"), float(cost["flops"]), model
  state, m = compiled(state, batch, jax.random.key(0))
  jax.block_until_ready(m)
  # cost_analysis() describes the partitioned program, i.e. one device's share of the step.
  print(f"jax: state init {t_init:.1f} s (compile + run), step compile {t_compile:.1f} s (lower + compile), first "
        f"step {time.perf_counter() - t0 - t_compile:.1f} s; "
        f"XLA counts {cost['flops'] / 1e9:,.1f} GFLOP per device per step ({jax.device_count()} device(s)); "
        f"attention {args.attention!r} runs {_attention_used(model, args)!r}")
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), float(cost["flops"]), model


def _attention_used(model: build.Model, args) -> str:
  del args
  cfg = model.config
  used = attention.resolve(cfg.attention, dtype=cfg.dtype, head_dim=cfg.head_dim,
                           dropout_active=cfg.dropout_rate > 0, dense_mask=False)
  if used == "cudnn" and jax.default_backend() != "gpu":
    return "cudnn's arguments through jax's xla implementation (no GPU)"
  if used == "pallas_tpu" and jax.default_backend() != "tpu":
    return "pallas_tpu in interpret mode (no TPU: slow)"
  return used


def bench_torch(args, t_jax: float) -> dict[str, float]:
  """Median seconds per step of the PyTorch reference: {"eager": s} and, on a GPU, {"compiled": s} too; each is
  printed (against instruct_jax's `t_jax` s/step) as soon as it is measured."""
  import torch
  import transformers
  torch.manual_seed(0)
  gpu = torch.cuda.is_available()
  dev = torch.device("cuda" if gpu else "cpu")
  if args.model == "t5":
    c = t5.config_for(args.size)
    cfg = transformers.T5Config(vocab_size=c.vocab_size, d_model=c.d_model, d_ff=c.d_ff, d_kv=c.head_dim,
                                num_heads=c.num_heads, num_layers=c.num_encoder_layers,
                                num_decoder_layers=c.num_decoder_layers, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, dropout_rate=0.0)
    cls = transformers.T5ForConditionalGeneration
  else:
    c = decoder.config_for(args.size)
    cfg = transformers.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                                   num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                   head_dim=c.head_dim, num_hidden_layers=c.num_layers,
                                   tie_word_embeddings=c.tie_embeddings)
    cls = transformers.LlamaForCausalLM
  attn_impl = "sdpa"  # torch.nn.functional.scaled_dot_product_attention (T5's position bias as its mask)
  b = {k: torch.from_numpy(v).to(dev) for k, v in _batch(args.model, args.batch, args.inputs, args.targets,
                                                          c.vocab_size).items()}

  def make():
    model = cls._from_config(cfg, attn_implementation=attn_impl).to(dev)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=gpu)

  def loss_of(model):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
      if args.model == "t5":
        return model(input_ids=b["encoder_input_tokens"].long(), decoder_input_ids=b["decoder_input_tokens"].long(),
                     labels=b["decoder_target_tokens"].long()).loss
      labels = torch.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100).long()
      logits = model(input_ids=b["decoder_input_tokens"].long()).logits
      return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

  def timed(model, opt, fwd):
    def one_step():
      fwd(model).backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    one_step()
    if gpu:
      torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      one_step()
      if gpu:
        torch.cuda.synchronize()
      times.append(time.perf_counter() - t0)
    return float(np.median(times)), first

  tokens = args.batch * (args.inputs + args.targets)

  def report(name: str, t: float) -> None:
    print(f"pytorch {torch.__version__} {name} (threads {torch.get_num_threads()}): {t:.3f} s/step, "
          f"{tokens / t:,.0f} tokens/s (median of {args.steps}); instruct_jax speed-up {t / t_jax:.2f}x", flush=True)

  model, opt = make()
  out = {}
  out["eager"], _ = timed(model, opt, loss_of)
  report("eager", out["eager"])
  if gpu:
    print(f"pytorch eager: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak device memory", flush=True)
    del model, opt
    torch.cuda.reset_peak_memory_stats()
    model, opt = make()
    compiled = torch.compile(model)
    out["compiled"], first = timed(compiled, opt, loss_of)
    print(f"pytorch torch.compile: first step (compiles) {first:.1f} s; "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak device memory", flush=True)
    report("torch.compile", out["compiled"])
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", choices=["t5", "decoder"], default="t5")
  p.add_argument("--size", default="small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=256)
  p.add_argument("--targets", type=int, default=64)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--remat", default="none")
  p.add_argument("--scan_layers", action="store_true",
                 help="one scanned layer per stack instead of unrolled ones (config.model.scan_layers)")
  p.add_argument("--compile_only", action="store_true", help="lower and compile the step, run nothing")
  p.add_argument("--layers", type=int, default=0, help="override the size's layer count (0: the size's)")
  p.add_argument("--lora_rank", type=int, default=0, help="train LoRA adapters of this rank only (0: everything)")
  p.add_argument("--lora_targets", default="query,value", help="projections that get adapters (models/lora.py)")
  p.add_argument("--dtype", default="float32", help="compute dtype (parameters stay fp32): bfloat16 on GPU/TPU")
  p.add_argument("--attention", default="xla", choices=attention.IMPLEMENTATIONS,
                 help="attention core (config.model.attention)")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="peak TFLOP/s of one device; default: looked up by device kind (none on CPU: no MFU)")
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
  t_jax, xla_flops, model = bench_jax(args)
  if args.compile_only:
    return
  model_flops = flops.train_step_flops(model, batch_size=args.batch, inputs_length=args.inputs,
                                       targets_length=args.targets)
  n = jax.device_count()
  print(f"instruct_jax: {t_jax:.3f} s/step, {tokens / t_jax:,.0f} tokens/s (median of {args.steps}), "
        f"{xla_flops / t_jax / 1e9:,.1f} GFLOP/s per device as XLA counts; {peak_memory()}")
  print(f"analytic model FLOPs: {model_flops / tokens / 1e9:.4f} GFLOP per token, {model_flops / 1e9:,.2f} GFLOP "
        f"per step; {model_flops / t_jax / n / 1e12:.3f} TFLOP/s per device")
  peak = args.peak_tflops or flops.peak_tflops(jax.devices()[0].device_kind)
  if peak:
    print(f"MFU: {model_flops / t_jax / n / (peak * 1e12):.1%} of {peak:g} TFLOP/s per device "
          f"({jax.devices()[0].device_kind})")
  else:
    print(f"MFU: no peak known for {jax.devices()[0].device_kind!r} (pass --peak_tflops)")
  if args.torch:
    import torch
    if not torch.cuda.is_available() and args.dtype != "float32":
      print(f"note: on CPU the PyTorch reference runs in float32, instruct_jax in {args.dtype}")
    bench_torch(args, t_jax)

if __name__ == "__main__":
  main()
