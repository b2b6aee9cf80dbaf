"""Evaluation throughput (examples/s) of the built-in evaluation on the quickstart-shaped T5.

    python benchmarks/eval_harness.py --num_examples 20

Renders the three built-in conditions (seen templates, unseen templates, held-out cluster; 18 tasks),
generates greedily with the KV cache (24 new tokens at most), scores exact match and ROUGE-L, and
rank-classifies the tasks with answer options. Random weights and a tokenizer trained on the spot;
timed on a second pass so compilation is excluded (the first pass's time is printed too).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import flax.linen as nn
import jax

from instruct_jax import predict, sampling
from instruct_jax.data import mixtures, render
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.evals import evaluators
from instruct_jax.models import build, t5


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--num_examples", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=64)
  args = p.parse_args()
  tasks, mixes = mixtures.catalogues()
  rates = mixtures.task_rates("builtin", tasks, mixes)
  with tempfile.TemporaryDirectory() as tmp:
    tok = tokenizer_lib.train(render.sample_texts(rates, tasks, render.RenderConfig(), n=5000), vocab_size=1000,
                              out_dir=tmp)
  model = build.from_config(t5.config_for("tiny", vocab_size=1024, d_model=128, d_ff=384, num_heads=4, head_dim=32,
                                          num_encoder_layers=3, num_decoder_layers=3))
  params = nn.meta.unbox(model.init(jax.random.key(0)))
  sets = evaluators.builtin_eval_sets(held_out_cluster="check", seen_templates=range(8), unseen_templates=(8, 9, 10),
                                      num_examples=args.num_examples)
  rows = evaluators.render_eval_examples(sets, tasks)
  gen = predict.make_generate_fn(model, params, tok, sampling.DecodeConfig(max_new_tokens=24),
                                 batch_size=args.batch_size, max_prompt_tokens=64)
  loglik = predict.make_loglik_fn(model, params, tok, batch_size=args.batch_size, max_prompt_tokens=64)
  for label in ("first pass (with compilation)", "second pass"):
    t0 = time.perf_counter()
    scored = evaluators.evaluate(rows, gen, loglik)
    dt = time.perf_counter() - t0
    print(f"{label}: {len(scored)} examples in {dt:.1f} s = {len(scored) / dt:.1f} examples/s")


if __name__ == "__main__":
  main()
