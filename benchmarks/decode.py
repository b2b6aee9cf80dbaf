"""Decode throughput with and without the KV cache, and per-token cost against position.

    python benchmarks/decode.py --new_tokens 256 --batch 8 --prompt 32

Models: the quickstart shapes (T5 3+3 layers, decoder 4 layers, d_model 128, vocab 1024), random weights,
greedy decoding that never stops early (end-of-text disabled), on the local CPU device(s).
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import numpy as np

from instruct_jax import sampling
from instruct_jax.models import build, decoder, t5


def models():
  yield "t5", build.from_config(t5.config_for("tiny", vocab_size=1024, d_model=128, d_ff=384, num_heads=4,
                                              head_dim=32, num_encoder_layers=3, num_decoder_layers=3))
  yield "decoder", build.from_config(decoder.config_for("tiny", vocab_size=1024, d_model=128, d_ff=384, num_heads=4,
                                                        num_kv_heads=2, head_dim=32, num_layers=4))


def timed(model, params, prompts, new_tokens, use_cache, repeats=2):
  cfg = sampling.DecodeConfig(max_new_tokens=new_tokens, eos_id=-1)
  sampling.generate(model, params, prompts, cfg, use_cache=use_cache)  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sampling.generate(model, params, prompts, cfg, use_cache=use_cache)
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--new_tokens", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt", type=int, default=32)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 1000, args.prompt).tolist() for _ in range(args.batch)]
  print(f"devices {jax.devices()}; batch {args.batch}, prompt {args.prompt} tokens")
  for name, model in models():
    params = nn.meta.unbox(model.init(jax.random.key(0)))
    n = args.new_tokens
    cached = timed(model, params, prompts, n, True)
    full = timed(model, params, prompts, n, False, repeats=1)
    print(f"{name:8s} {n} new tokens: cache {args.batch * n / cached:9,.0f} tok/s ({cached:6.2f} s)   "
          f"no cache {args.batch * n / full:9,.0f} tok/s ({full:6.2f} s)   speed-up {full / cached:5.1f}x")
    for use_cache in (True, False):
      per = {m: timed(model, params, prompts, m, use_cache, repeats=1) / m * 1e3 for m in (64, 128, 256)}
      print(f"{name:8s} {'cache   ' if use_cache else 'no cache'} ms per step (batch {args.batch}) averaged over "
            + ", ".join(f"{m} tokens: {v:.2f}" for m, v in per.items()))


if __name__ == "__main__":
  main()
