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
from instruct_jax.data import transforms
from instruct_jax.models import t5

GenerateFn = Callable[[Sequence[str]], list[str]]
LoglikFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def _chunks(items: Sequence, size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def make_generate_fn(model, params, tokenizer, decode_cfg: sampling.DecodeConfig, *, batch_size: int = 32,
                     max_prompt_tokens: int = 512, mesh=None, rules=None, seed: int = 0) -> GenerateFn:
  """Prompts -> generated texts. Over-long prompts are cut as in training (their beginning stays)."""
  is_t5 = isinstance(model, t5.T5)
  cfg = dataclasses.replace(decode_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            bos_id=None if is_t5 else (tokenizer.bos_id if tokenizer.bos_id >= 0 else None))

  def generate_fn(prompts: Sequence[str]) -> list[str]:
    ids = [_prompt_ids(tokenizer, p, max_prompt_tokens, is_t5) for p in prompts]
    out: list[str] = []
    for n, chunk in enumerate(_chunks(ids, batch_size)):
      padded = list(chunk) + [chunk[0]] * (batch_size - len(chunk))  # one compiled shape per bucket
      new = sampling.generate(model, params, padded, cfg, rng=jax.random.key(seed + n), mesh=mesh, rules=rules)
      out.extend(tokenizer.decode(t) for t in new[:len(chunk)])
    return out

  return generate_fn


def make_loglik_fn(model, params, tokenizer, *, batch_size: int = 32, max_prompt_tokens: int = 512,
                   max_continuation_tokens: int = 64, mesh=None, rules=None) -> LoglikFn:
  """(prompt, continuation) pairs -> sum of log-probabilities of the continuation and end-of-text."""
  is_t5 = isinstance(model, t5.T5)
  bos = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.pad_id

  rules_key = None if rules is None else tuple(sorted(rules.items()))

  def features(prompt: str, continuation: str):
    p = tokenizer.encode(prompt)[:max_prompt_tokens]
    c = tokenizer.encode(continuation)[:max_continuation_tokens]
    if is_t5:
      return transforms.seq2seq_features(p, c, eos_id=tokenizer.eos_id, max_input_len=max_prompt_tokens,
                                         max_target_len=max_continuation_tokens + 1)
    return transforms.decoder_features(p, c, bos_id=bos, eos_id=tokenizer.eos_id,
                                       max_len=max_prompt_tokens + max_continuation_tokens + 1)

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


def _prompt_ids(tokenizer, prompt: str, max_tokens: int, is_t5: bool) -> list[int]:
  ids = tokenizer.encode(prompt)
  if is_t5:  # the encoder saw inputs + end-of-text in training
    return transforms.encoder_inputs(ids, eos_id=tokenizer.eos_id, max_input_len=max_tokens).tolist()
  return ids[:max_tokens].tolist() or [tokenizer.eos_id]


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
