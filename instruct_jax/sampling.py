"""Decoding with a key/value cache for both model kinds: greedy, temperature, top-k, top-p and beam search.

Prompts of different lengths share one batch. How a model runs incrementally (its cache, its padding
side, its start token) is the model's own `Stepper` (`models/t5.py`, `models/decoder.py`), reached
through `build.Model.stepper`; this module holds the search: sampling loop and beam search.

The whole loop (prefill, then one token per step until every row has stopped or the budget is spent)
runs inside one jitted function. `use_cache=False` recomputes the full sequence every step instead: the
reference that the cached path must match, and the baseline of the decode benchmark.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import sharding
from instruct_jax.models import build, stack
from instruct_jax.models.layers import NEG_INF


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  max_new_tokens: int = 64
  temperature: float = 0.0  # 0 means greedy
  top_k: int = 0  # 0 keeps every token
  top_p: float = 1.0
  num_beams: int = 1  # > 1 runs beam search (temperature, top-k and top-p then do not apply)
  length_penalty: float = 0.0  # beam scores are log p / ((5 + length) / 6) ** length_penalty
  eos_id: int = 1
  pad_id: int = 0
  stop_id: int = -1  # a second token that ends a row, kept out of its output (a chat format's end of turn; -1: none)

  def __post_init__(self):
    if self.length_penalty < 0:
      raise ValueError(f"length_penalty must be >= 0 (beam search's early stop relies on it), got "
                       f"{self.length_penalty}")
    if self.max_new_tokens < 1 or self.num_beams < 1:
      raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {self.max_new_tokens}, {self.num_beams}")
    if not (self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0):  # NaN fails too
      raise ValueError(f"need temperature >= 0, top_p in (0, 1] and top_k >= 0; got {self.temperature}, "
                       f"{self.top_p}, {self.top_k}")


def _filter_logits(logits_BV, cfg: DecodeConfig):
  """Temperature, then top-k, then top-p (nucleus) filtering."""
  logits_BV = logits_BV / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits_BV, cfg.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth, NEG_INF, logits_BV)
  if cfg.top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    cutoff_idx = jnp.sum(cum_BV < cfg.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_BV, cutoff_idx, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff, NEG_INF, logits_BV)
  return logits_BV


def _choose(logits_BV, rng, cfg: DecodeConfig):
  if cfg.temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, _filter_logits(logits_BV, cfg), axis=-1).astype(jnp.int32)


def _sample_loop(stepper, prompts_BP, pad_B, rng, cfg: DecodeConfig):
  B, N = prompts_BP.shape[0], cfg.max_new_tokens
  state, logits = stepper.init(prompts_BP, pad_B)

  def cond(carry):
    t, _, _, done, _, _ = carry
    return (t < N) & ~jnp.all(done)

  def body(carry):
    t, state, logits, done, out, rng = carry
    rng, sub = jax.random.split(rng)
    tok = jnp.where(done, cfg.pad_id, _choose(logits, sub, cfg))
    out = out.at[:, t].set(tok)
    done = done | (tok == cfg.eos_id) | (tok == cfg.stop_id)
    state, logits = jax.lax.cond(t + 1 < N, lambda: stepper.step(state, tok, t), lambda: (state, logits))
    return t + 1, state, logits, done, out, rng

  carry = (jnp.array(0), state, logits, jnp.zeros((B,), bool), jnp.full((B, N), cfg.pad_id, jnp.int32), rng)
  return jax.lax.while_loop(cond, body, carry)[4]


def _beam_loop(stepper, prompts_BP, pad_B, cfg: DecodeConfig, scan_layers: bool):
  """Beam search over W beams; returns the best finished (or, failing that, alive) sequence per row."""
  B, W, N = prompts_BP.shape[0], cfg.num_beams, cfg.max_new_tokens
  rep = lambda x: jnp.repeat(x, W, axis=0)  # [B, ...] -> [B*W, ...], beams of a row adjacent
  state, logits = stepper.init(rep(prompts_BP), rep(pad_B))
  penalty = lambda length: ((5.0 + length) / 6.0) ** cfg.length_penalty
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (W - 1)), (B, 1))  # only beam 0 starts alive
  carry = dict(t=jnp.array(0), state=state, logits=logits, alive_lp=alive_lp,
               alive=jnp.full((B, W, N), cfg.pad_id, jnp.int32), fin=jnp.full((B, W, N), cfg.pad_id, jnp.int32),
               fin_score=jnp.full((B, W), NEG_INF))

  def cond(c):
    # Stop when no alive beam can beat the worst finished one (log-probs only fall as sequences grow).
    best_alive = c["alive_lp"][:, 0] / penalty(N)
    can_improve = jnp.any(best_alive > jnp.min(c["fin_score"], axis=1))
    return (c["t"] < N) & can_improve

  def body(c):
    t = c["t"]
    V = c["logits"].shape[-1]
    lp = jax.nn.log_softmax(c["logits"]).reshape(B, W, V) + c["alive_lp"][:, :, None]
    top_lp, top_idx = jax.lax.top_k(lp.reshape(B, W * V), 2 * W)
    parent, tok = top_idx // V, (top_idx % V).astype(jnp.int32)
    seqs = jnp.take_along_axis(c["alive"], parent[:, :, None], axis=1).at[:, :, t].set(tok)
    is_eos = (tok == cfg.eos_id) | (tok == cfg.stop_id)
    # Finished: merge new EOS candidates with the old finished set, keep the best W.
    new_fin_score = jnp.where(is_eos, top_lp / penalty(t + 1), NEG_INF)
    all_score = jnp.concatenate([c["fin_score"], new_fin_score], axis=1)
    all_seqs = jnp.concatenate([c["fin"], seqs], axis=1)
    fin_score, fin_idx = jax.lax.top_k(all_score, W)
    fin = jnp.take_along_axis(all_seqs, fin_idx[:, :, None], axis=1)
    # Alive: the best W candidates that did not end.
    alive_lp, alive_idx = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), W)
    alive = jnp.take_along_axis(seqs, alive_idx[:, :, None], axis=1)
    src = (jnp.arange(B)[:, None] * W + jnp.take_along_axis(parent, alive_idx, axis=1)).reshape(-1)
    state = stack.take_rows(c["state"], src, scan_layers)
    next_tok = jnp.take_along_axis(tok, alive_idx, axis=1).reshape(-1)
    state, logits = jax.lax.cond(t + 1 < N, lambda: stepper.step(state, next_tok, t), lambda: (state, c["logits"]))
    return dict(t=t + 1, state=state, logits=logits, alive_lp=alive_lp, alive=alive, fin=fin, fin_score=fin_score)

  c = jax.lax.while_loop(cond, body, carry)
  has_fin = c["fin_score"][:, 0] > NEG_INF / 2
  return jnp.where(has_fin[:, None], c["fin"][:, 0], c["alive"][:, 0])


@functools.partial(jax.jit, static_argnames=("model", "cfg", "use_cache", "mesh", "rules"))
def _generate_ids(model, params, prompts_BP, pad_B, rng, *, cfg: DecodeConfig, use_cache: bool, mesh=None,
                  rules=None):
  ctx = sharding.activation_sharding(mesh, dict(rules)) if mesh is not None else contextlib.nullcontext()
  with ctx:
    stepper = model.stepper(params, prompt_len=prompts_BP.shape[1], max_new_tokens=cfg.max_new_tokens,
                            pad_id=cfg.pad_id, use_cache=use_cache)
    if cfg.num_beams > 1:
      return _beam_loop(stepper, prompts_BP, pad_B, cfg, model.config.scan_layers)
    return _sample_loop(stepper, prompts_BP, pad_B, rng, cfg)


def _bucket(n: int, multiple: int = 16) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def generate(model: build.Model, params, prompts: Sequence[Sequence[int]], cfg: DecodeConfig, *, rng=None,
             use_cache: bool = True, mesh=None, rules=None) -> list[list[int]]:
  """New token ids for each prompt, cut after the end-of-text token (which is not returned).

  Prompts are complete token ids (`Model.prompt_ids` makes them from text, BOS or EOS included). Prompt
  lengths are rounded up to a multiple of 16 so that batches of similar lengths share one compile.
  """
  if not prompts:
    return []
  if any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  P = _bucket(max(len(p) for p in prompts))
  ids = np.full((len(prompts), P), cfg.pad_id, np.int32)
  pad = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    if model.left_pad_prompts:  # decoder-only: every row's next token lands in the same cache slot
      ids[i, P - len(p):] = p
      pad[i] = P - len(p)
    else:  # encoder input: right padding
      ids[i, :len(p)] = p
  rng = jax.random.key(0) if rng is None else rng
  out = np.asarray(_generate_ids(model, params, jnp.asarray(ids), jnp.asarray(pad), rng, cfg=cfg,
                                 use_cache=use_cache, mesh=mesh,
                                 rules=None if rules is None else tuple(sorted(rules.items()))))
  result = []
  for row in out.tolist():
    ends = [row.index(t) for t in (cfg.eos_id, cfg.stop_id) if t in row]
    result.append(row[:min(ends)] if ends else row)
  return result
