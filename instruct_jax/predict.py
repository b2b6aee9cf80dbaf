"""Text-level predict functions built from a model, its parameters and a tokenizer.

Evaluators and synthetic-data generators receive these functions and never import models:

    generate_fn(prompts: list[str]) -> list[str]                      decoding with the KV cache
    loglik_fn(prompts: list[str], continuations: list[str]) -> array  sum of log p(continuation + EOS)

Work is cut into fixed-size batches (the last one padded) and prompt lengths are bucketed, so a long
evaluation compiles a handful of programs rather than one per batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import losses, sampling, sharding, step
from instruct_jax.evals import evaluators

GenerateFn = Callable[[Sequence[str]], list[str]]
LoglikFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def _chunks(items: Sequence, size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def make_generate_fn(model, params, tokenizer, decode_cfg: sampling.DecodeConfig, *, batch_size: int = 32,
                     max_prompt_tokens: int = 512, mesh=None, rules=None, seed: int = 0,
                     with_ids: bool = False) -> GenerateFn:
  """Prompts -> generated texts (with_ids: (text, new token ids) pairs). Prompts are tokenized as training rows
  begin (`Model.prompt_ids`: T5 inputs end with EOS, decoder prompts start with BOS) and over-long ones are
  cut as in training; the new ids stop before end-of-text."""
  cfg = dataclasses.replace(decode_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)

  def generate_fn(prompts: Sequence[str]) -> list:
    ids = [model.prompt_ids(tokenizer, p, max_prompt_tokens) for p in prompts]
    out = []
    for n, chunk in enumerate(_chunks(ids, batch_size)):
      padded = list(chunk) + [chunk[0]] * (batch_size - len(chunk))  # one compiled shape per bucket
      new = sampling.generate(model, params, padded, cfg, rng=jax.random.key(seed + n), mesh=mesh, rules=rules)
      out.extend((tokenizer.decode(t), t) if with_ids else tokenizer.decode(t) for t in new[:len(chunk)])
    return out

  return generate_fn


def make_loglik_fn(model, params, tokenizer, *, batch_size: int = 32, max_prompt_tokens: int = 512,
                   max_continuation_tokens: int = 64, mesh=None, rules=None) -> LoglikFn:
  """(prompt, continuation) pairs -> sum of log-probabilities of the continuation and end-of-text."""
  rules_key = None if rules is None else tuple(sorted(rules.items()))

  def features(prompt: str, continuation: str):
    p = tokenizer.encode(prompt)[:max_prompt_tokens]
    c = tokenizer.encode(continuation)[:max_continuation_tokens]
    return model.example_features(p, c, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                                  max_continuation_tokens=max_continuation_tokens)

  def loglik_fn(prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    feats = [features(p, c) for p, c in zip(prompts, continuations)]
    if any(f is None for f in feats):
      raise ValueError("an empty continuation cannot be scored")
    out = []
    for chunk in _chunks(feats, batch_size):
      chunk = list(chunk) + [chunk[0]] * (batch_size - len(chunk))
      batch = {k: _pad_stack([f[k] for f in chunk]) for k in chunk[0]}
      out.append(np.asarray(_score(params, batch, model=model, mesh=mesh, rules=rules_key)))
    return np.concatenate(out)[:len(feats)]

  return loglik_fn


@functools.partial(jax.jit, static_argnames=("model", "mesh", "rules"))
def _score(params, batch, *, model, mesh, rules):
  """Sum of log p(continuation + EOS) per row; jitted once per model and shape, not per evaluation."""
  ctx = sharding.activation_sharding(mesh, dict(rules)) if mesh is not None else contextlib.nullcontext()
  with ctx:
    logits = step.forward(model, params, batch)
  _, nll = losses.cross_entropy(logits, batch["decoder_target_tokens"])
  return -jnp.sum(nll * batch["decoder_loss_weights"], axis=-1)


def _pad_stack(rows: list[np.ndarray], multiple: int = 16) -> jnp.ndarray:
  n = max(len(r) for r in rows)
  n = -(-n // multiple) * multiple
  return jnp.asarray(np.stack([np.pad(r, (0, n - len(r))) for r in rows]))


def make_sampling_generate_fn(model, params, tokenizer, *, batch_size: int = 16, max_prompt_tokens: int = 512,
                              mesh=None, rules=None):
  """`generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed)`, the shape the synthetic-data
  ModelBackend takes (`instruct_jax.synthetic.backends.ModelBackend`)."""
  cache: dict[tuple, GenerateFn] = {}

  def generate_fn(prompts: Sequence[str], *, max_new_tokens: int, temperature: float, top_p: float,
                  seed: int) -> list[str]:
    key = (max_new_tokens, temperature, top_p, seed)
    if key not in cache:
      cfg = sampling.DecodeConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
      cache[key] = make_generate_fn(model, params, tokenizer, cfg, batch_size=batch_size,
                                    max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules, seed=seed)
    return cache[key](prompts)

  return generate_fn


def evaluate(model, params, tokenizer, eval_cfg, rows: list[dict], *, max_prompt_tokens: int, mesh=None,
             rules=None) -> tuple[list[dict], dict]:
  """Generates and scores evaluation `rows` (config section `eval_cfg`); returns (scored rows, summary)."""
  decode_cfg = sampling.DecodeConfig(max_new_tokens=eval_cfg.max_new_tokens, num_beams=eval_cfg.num_beams)
  gen = make_generate_fn(model, params, tokenizer, decode_cfg, batch_size=eval_cfg.batch_size,
                         max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules)
  loglik = None
  if eval_cfg.rank_classification:
    loglik = make_loglik_fn(model, params, tokenizer, batch_size=eval_cfg.batch_size,
                            max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules)
  scored = evaluators.evaluate(rows, gen, loglik)
  return scored, evaluators.summarize(scored)
