"""Decoder-only, LLaMA-style language model (Flax linen).

Pre-norm blocks of RMSNorm, grouped-query attention with rotary positions, and a SwiGLU MLP; embeddings
tied or untied; optionally Mistral's sliding-window attention (in training and in the KV-cache decoder).
Rotary positions come from `decoder_positions`, which restart at 0 for every packed example. Shape
letters: see `instruct_jax.models.layers`.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from instruct_jax.models import attention, layers
from instruct_jax.models.stack import LayerStack, StackConfig
from instruct_jax.sharding import constrain

INPUT_FEATURES = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(StackConfig):
  vocab_size: int = 32000
  d_model: int = 4096
  d_ff: int = 11008
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  num_layers: int = 32
  rope_theta: float = 10000.0
  rope_scaling: layers.RopeScaling | None = None
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  dropout_rate: float = 0.0
  sliding_window: int | None = None  # Mistral: attend to the last `sliding_window` positions only (None: all)

  kind = "decoder"


SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=512, d_model=64, d_ff=176, num_heads=4, num_kv_heads=2, head_dim=16, num_layers=2,
                 tie_embeddings=True),
    # Llama-3.2-1B shapes.
    "1b": dict(vocab_size=128256, d_model=2048, d_ff=8192, num_heads=32, num_kv_heads=8, head_dim=64,
               num_layers=16, rope_theta=500000.0, rope_scaling=layers.RopeScaling(factor=32.0),
               tie_embeddings=True),
    # LLaMA-2-7B shapes.
    "7b": dict(vocab_size=32000, d_model=4096, d_ff=11008, num_heads=32, num_kv_heads=32, head_dim=128,
               num_layers=32, rope_theta=10000.0),
    # Mistral-7B-v0.1 shapes: grouped-query attention (8 kv heads), a wider MLP and a 4096-position window.
    "mistral_7b": dict(vocab_size=32000, d_model=4096, d_ff=14336, num_heads=32, num_kv_heads=8, head_dim=128,
                       num_layers=32, rope_theta=10000.0, sliding_window=4096),
}


class Block(nn.Module):
  config: DecoderConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD, mask, positions_BL):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h = layers.RMSNorm(cfg.norm_eps, name="pre_attention_norm", **kw)(x_BLD)
    h = layers.Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model, rope_theta=cfg.rope_theta,
                         rope_scaling=cfg.rope_scaling, dropout_rate=cfg.dropout_rate,
                         deterministic=self.deterministic, decode=self.decode, implementation=cfg.attention,
                         name="attention", lora=cfg.lora, **kw)(h, h, mask, None, positions_BL, positions_BL)
    x_BLD = x_BLD + drop(h)
    h = layers.RMSNorm(cfg.norm_eps, name="pre_mlp_norm", **kw)(x_BLD)
    h = layers.GatedMLP(cfg.d_model, cfg.d_ff, "silu", cfg.dropout_rate, self.deterministic, name="mlp",
                        lora=cfg.lora, **kw)(h)
    return constrain(x_BLD + drop(h), ("act_batch", "act_length", "act_embed"))


class Decoder(nn.Module):
  """`__call__` maps a batch in the T5X decoder feature schema to fp32 logits [B, L, V]."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, decoder_input_tokens, decoder_segment_ids=None, decoder_positions=None, *,
               deterministic: bool = True, decode: bool = False, mask_B1LS=None, packed: bool = True):
    """Logits for every position.

    Training and scoring pass segment ids and positions (or neither, for one unpadded example per row);
    `packed=False` promises one example per row, padded at its end (see `attention.Mask`).
    Decoding with a cache (see instruct_jax.sampling) passes decode=True, the new tokens' positions, and
    `mask_B1LS`: which cache slots each new token may attend to.
    """
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    B, L = decoder_input_tokens.shape
    positions = decoder_positions if decoder_positions is not None else jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = mask_B1LS
    if mask is None:
      segments = decoder_segment_ids if decoder_segment_ids is not None else jnp.ones((B, L), jnp.int32)
      mask = attention.Mask(segments, segments, positions, positions, causal=True, window=cfg.sliding_window,
                            packed=packed and decoder_segment_ids is not None)
    embedder = layers.Embed(cfg.vocab_size, cfg.d_model, init_scale=0.02,
                            name="token_embedder", **kw)
    x = nn.Dropout(cfg.dropout_rate)(embedder(decoder_input_tokens), deterministic=deterministic)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    stack = LayerStack(Block, cfg, cfg.num_layers, dict(deterministic=deterministic, decode=decode), name="layers")
    x = stack(x, mask, positions)
    x = layers.RMSNorm(cfg.norm_eps, name="final_norm", **kw)(x)
    if cfg.tie_embeddings:
      logits = embedder.attend(x)
    else:
      logits = layers.Dense((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "BLD,DV->BLV",
                            name="logits_dense", out_dtype=jnp.float32, **kw)(x)
    return constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))


class Stepper:
  """Incremental decoding for `instruct_jax.sampling`: next-token logits, cached or recomputed.

  Prompts of different lengths are left-padded to a common length P, so every row's next token lands in
  the same cache slot; each row's positions start at 0 at its first real token (pad_B slots in) and the
  mask hides the padding slots. `init(prompts_BP, pad_B)` -> (state, logits of the first new token);
  `step(state, tokens_B, t)` -> (state, logits) after feeding new token t (t from 0). use_cache=False
  recomputes the whole sequence every step (the reference the cache must match).
  """
  left_pad_prompts = True

  def __init__(self, module: Decoder, params, *, prompt_len: int, max_new_tokens: int, pad_id: int,
               use_cache: bool):
    del pad_id  # the mask, not the token, hides padding
    self.module, self.params, self.use_cache = module, params, use_cache
    self.P, self.T = prompt_len, prompt_len + max_new_tokens

  def _cached(self, cache, tokens_BL, start, pad_B):
    L = tokens_BL.shape[1]
    slots_BL = start + jnp.arange(L)[None, :]
    positions_BL = jnp.maximum(slots_BL - pad_B[:, None], 0)
    key_slots_S = jnp.arange(self.T)
    mask = (key_slots_S[None, None, :] <= slots_BL[:, :, None]) & (key_slots_S[None, None, :] >= pad_B[:, None, None])
    window = self.module.config.sliding_window
    if window is not None:  # slots are positions shifted by the row's padding
      mask &= slots_BL[:, :, None] - key_slots_S[None, None, :] < window
    logits, vars_ = self.module.apply({"params": self.params, "cache": cache}, tokens_BL, None, positions_BL,
                                      decode=True, mask_B1LS=mask[:, None], mutable=["cache"])
    return vars_["cache"], logits[:, -1]

  def _full(self, buf_BT, upto, pad_B):
    idx = jnp.arange(buf_BT.shape[1])[None, :]
    segments = ((idx >= pad_B[:, None]) & (idx <= upto)).astype(jnp.int32)
    positions = jnp.maximum(idx - pad_B[:, None], 0)
    logits = self.module.apply({"params": self.params}, buf_BT, segments, positions)
    return jax.lax.dynamic_index_in_dim(logits, upto, axis=1, keepdims=False)

  def init(self, prompts_BP, pad_B):
    B = prompts_BP.shape[0]
    if self.use_cache:
      shapes = jax.eval_shape(lambda: self.module.init(jax.random.key(0), jnp.zeros((B, self.T), jnp.int32),
                                                       decode=True))
      empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
      cache, logits = self._cached(empty, prompts_BP, 0, pad_B)
      return {"cache": cache, "pad": pad_B}, logits
    buf = jnp.zeros((B, self.T), jnp.int32).at[:, :self.P].set(prompts_BP)
    return {"buf": buf, "pad": pad_B}, self._full(buf, self.P - 1, pad_B)

  def step(self, state, tokens_B, t):
    state, slot = dict(state), self.P + t
    if self.use_cache:
      state["cache"], logits = self._cached(state["cache"], tokens_B[:, None], slot, state["pad"])
      return state, logits
    state["buf"] = state["buf"].at[:, slot].set(tokens_B)
    return state, self._full(state["buf"], slot, state["pad"])


def train_flops_per_row(cfg: DecoderConfig, sizes: dict[str, int], inputs_length: int, targets_length: int) -> float:
  """Model FLOPs of a train step's row of T = inputs + targets tokens (instruct_jax/flops.py): causal
  self-attention over T, every weight a matmul except an untied input embedding table (a lookup). `sizes`:
  parameters per top-level module."""
  T = inputs_length + targets_length
  p = sum(sizes.values()) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
  return float(T * (6 * p + 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * T))


def config_for(size: str, **overrides) -> DecoderConfig:
  if size not in SIZES:
    raise ValueError(f"unknown decoder size {size!r}; choose one of {sorted(SIZES)}")
  return DecoderConfig(**{**SIZES[size], **overrides})
