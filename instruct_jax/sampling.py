"""Decoding with a key/value cache for both model kinds: greedy, temperature, top-k, top-p and beam search.

Prompts of different lengths share one batch. Decoder-only prompts are left-padded to a common length P,
so every row's next token lands in the same cache slot; each row's positions start at 0 at its first
real token, and the cache mask hides the padding slots. T5 runs its encoder once; its decoder starts
from the start token 0 in every row.

The whole loop (prefill, then one token per step until every row has stopped or the budget is spent)
runs inside one jitted function. `use_cache=False` recomputes the full sequence every step instead: the
reference that the cached path must match, and the baseline of the decode benchmark.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import sharding
from instruct_jax.models import decoder, t5
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
  bos_id: int | None = None  # decoder-only: prepended to every prompt when set

  def __post_init__(self):
    if self.length_penalty < 0:
      raise ValueError(f"length_penalty must be >= 0 (beam search's early stop relies on it), got "
                       f"{self.length_penalty}")
    if self.max_new_tokens < 1 or self.num_beams < 1:
      raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {self.max_new_tokens}, {self.num_beams}")


def _is_t5(model) -> bool:
  return isinstance(model, t5.T5)


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


class _Stepper:
  """Next-token logits for one model kind, cached or recomputed, behind one interface.

  init(prompts) -> (state, logits of the first new token); step(state, tokens_B, t) -> (state, logits),
  where t counts new tokens already emitted. `state` is a pytree (cache or token buffer) whose leading
  axis is the batch, so beam search can reorder it.
  """

  def __init__(self, model, params, cfg: DecodeConfig, prompt_len: int, use_cache: bool):
    self.model, self.params, self.cfg, self.use_cache = model, params, cfg, use_cache
    self.P = prompt_len
    self.T = cfg.max_new_tokens if _is_t5(model) else prompt_len + cfg.max_new_tokens

  # Decoder-only ---------------------------------------------------------------------------------------
  def _dec_logits(self, cache, tokens_BL, start, pad_B):
    B, L = tokens_BL.shape
    slots_BL = start + jnp.arange(L)[None, :]
    positions_BL = jnp.maximum(slots_BL - pad_B[:, None], 0)
    key_slots = jnp.arange(self.T)
    mask = (key_slots[None, None, :] <= slots_BL[:, :, None]) & (key_slots[None, None, :] >= pad_B[:, None, None])
    logits, vars_ = self.model.apply({"params": self.params, "cache": cache}, tokens_BL, None, positions_BL,
                                     decode=True, mask_B1LS=mask[:, None], mutable=["cache"])
    return vars_["cache"], logits[:, -1]

  def _dec_full(self, buf_BT, upto, pad_B):
    B, T = buf_BT.shape
    idx = jnp.arange(T)[None, :]
    segments = ((idx >= pad_B[:, None]) & (idx <= upto)).astype(jnp.int32)
    positions = jnp.maximum(idx - pad_B[:, None], 0)
    logits = self.model.apply({"params": self.params}, buf_BT, segments, positions)
    return jax.lax.dynamic_index_in_dim(logits, upto, axis=1, keepdims=False)

  # T5 -------------------------------------------------------------------------------------------------
  def _t5_logits(self, cache, encoded, enc_mask, tokens_B, t):
    logits, vars_ = self.model.apply({"params": self.params, "cache": cache}, encoded, enc_mask, tokens_B[:, None],
                                     t, self.T, method=t5.T5.decode_step, mutable=["cache"])
    return vars_["cache"], logits[:, -1]

  def _t5_full(self, encoded, enc_mask, buf_BT, t):
    enc_seg = enc_mask.astype(jnp.int32)
    logits = self.model.apply({"params": self.params}, encoded, buf_BT, enc_seg, method=t5.T5.decode)
    return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

  def _empty_cache(self, B):
    if _is_t5(self.model):
      S = 1
      shapes = jax.eval_shape(
          lambda: self.model.init(jax.random.key(0), jnp.zeros((B, S, self.model.config.d_model)),
                                  jnp.ones((B, S), bool), jnp.zeros((B, self.T), jnp.int32), 0, self.T,
                                  method=t5.T5.decode_step))
    else:
      shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), jnp.zeros((B, self.T), jnp.int32),
                                                      decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  def init(self, prompts_BP, pad_B):
    B = prompts_BP.shape[0]
    if _is_t5(self.model):
      enc_mask = prompts_BP != self.cfg.pad_id
      encoded = self.model.apply({"params": self.params}, prompts_BP, enc_mask.astype(jnp.int32),
                                 method=t5.T5.encode)
      start = jnp.zeros((B,), jnp.int32)
      if self.use_cache:
        cache, logits = self._t5_logits(self._empty_cache(B), encoded, enc_mask, start, 0)
        return {"cache": cache, "encoded": encoded, "enc_mask": enc_mask}, logits
      buf = jnp.zeros((B, self.T), jnp.int32)
      return {"buf": buf, "encoded": encoded, "enc_mask": enc_mask}, self._t5_full(encoded, enc_mask, buf, 0)
    if self.use_cache:
      cache, logits = self._dec_logits(self._empty_cache(B), prompts_BP, 0, pad_B)
      return {"cache": cache, "pad": pad_B}, logits
    buf = jnp.zeros((B, self.T), jnp.int32).at[:, :self.P].set(prompts_BP)
    return {"buf": buf, "pad": pad_B}, self._dec_full(buf, self.P - 1, pad_B)

  def reorder(self, state, src_B):
    """Takes rows `src_B` of every per-row array in `state` (beam search's parent pointers)."""
    cache_axis = 1 if self.model.config.scan_layers else 0  # scanned caches lead with the layer axis
    out = {k: v[src_B] for k, v in state.items() if k != "cache"}
    if "cache" in state:
      out["cache"] = jax.tree.map(lambda x: jnp.take(x, src_B, axis=cache_axis) if x.ndim > cache_axis else x,
                                  state["cache"])
    return out

  def step(self, state, tokens_B, t):
    """Feeds the t-th new token (t from 0); returns logits for the next one."""
    state = dict(state)
    if _is_t5(self.model):  # decoder input t + 1 is new token t
      if self.use_cache:
        state["cache"], logits = self._t5_logits(state["cache"], state["encoded"], state["enc_mask"], tokens_B, t + 1)
        return state, logits
      state["buf"] = state["buf"].at[:, t + 1].set(tokens_B)
      return state, self._t5_full(state["encoded"], state["enc_mask"], state["buf"], t + 1)
    slot = self.P + t
    if self.use_cache:
      state["cache"], logits = self._dec_logits(state["cache"], tokens_B[:, None], slot, state["pad"])
      return state, logits
    state["buf"] = state["buf"].at[:, slot].set(tokens_B)
    return state, self._dec_full(state["buf"], slot, state["pad"])


def _sample_loop(stepper: _Stepper, prompts_BP, pad_B, rng, cfg: DecodeConfig):
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
    done = done | (tok == cfg.eos_id)
    state, logits = jax.lax.cond(t + 1 < N, lambda: stepper.step(state, tok, t), lambda: (state, logits))
    return t + 1, state, logits, done, out, rng

  carry = (jnp.array(0), state, logits, jnp.zeros((B,), bool), jnp.full((B, N), cfg.pad_id, jnp.int32), rng)
  return jax.lax.while_loop(cond, body, carry)[4]


def _beam_loop(stepper: _Stepper, prompts_BP, pad_B, cfg: DecodeConfig):
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
    is_eos = tok == cfg.eos_id
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
    state = stepper.reorder(c["state"], src)
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
    stepper = _Stepper(model, params, cfg, prompts_BP.shape[1], use_cache)
    if cfg.num_beams > 1:
      return _beam_loop(stepper, prompts_BP, pad_B, cfg)
    return _sample_loop(stepper, prompts_BP, pad_B, rng, cfg)


def _bucket(n: int, multiple: int = 16) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def generate(model: nn.Module, params, prompts: Sequence[Sequence[int]], cfg: DecodeConfig, *, rng=None,
             use_cache: bool = True, mesh=None, rules=None) -> list[list[int]]:
  """New token ids for each prompt, cut after the end-of-text token (which is not returned).

  Prompt lengths are rounded up to a multiple of 16 so that batches of similar lengths share one compile.
  """
  if not prompts:
    return []
  if isinstance(model, decoder.Decoder) and cfg.bos_id is not None:
    prompts = [[cfg.bos_id, *p] for p in prompts]
  if any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  P = _bucket(max(len(p) for p in prompts))
  ids = np.full((len(prompts), P), cfg.pad_id, np.int32)
  pad = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    if _is_t5(model):
      ids[i, :len(p)] = p  # encoder input: right padding
    else:
      ids[i, P - len(p):] = p  # decoder-only prompt: left padding
      pad[i] = P - len(p)
  rng = jax.random.key(0) if rng is None else rng
  out = np.asarray(_generate_ids(model, params, jnp.asarray(ids), jnp.asarray(pad), rng, cfg=cfg,
                                 use_cache=use_cache, mesh=mesh,
                                 rules=None if rules is None else tuple(sorted(rules.items()))))
  result = []
  for row in out.tolist():
    result.append(row[:row.index(cfg.eos_id)] if cfg.eos_id in row else row)
  return result
