"""Decoder-only, LLaMA-style language model (Flax linen).

Pre-norm blocks of RMSNorm, grouped-query attention with rotary positions, and a SwiGLU MLP; embeddings
tied or untied; optionally Mistral's sliding-window attention (in training and in the KV-cache decoder).
Rotary positions come from `decoder_positions`, which restart at 0 for every packed example. Shape
letters: see `instruct_jax.models.layers`.

The families of today's checkpoints differ only by switches of `DecoderConfig`, which this module reads and
never the family's name (`models/families/` maps each family's checkpoints onto them): biases on the query,
key and value projections (Qwen2), q/k norms (Qwen3, Gemma 3), (1 + w) norm scales, norms after attention and
the MLP, embeddings times sqrt(d_model), GeGLU, soft-capped attention and output logits and a query scale
apart from the head width (Gemma), and layers of two types, sliding-window and global, each with its own RoPE
base (Gemma 2 and 3).
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
  family: str = "llama"  # the checkpoint family (models/families) that reads and writes it; the model never asks
  qkv_bias: bool = False  # Qwen2: biases on the query, key and value projections
  qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each query and key head before RoPE
  norm_plus_one: bool = False  # Gemma: every norm scales by (1 + w), w starting at 0
  sandwich_norms: bool = False  # Gemma 2, 3: norms on the attention's and the MLP's outputs too
  embed_scale: bool = False  # Gemma: embeddings times sqrt(d_model)
  mlp_activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation: Gemma)
  attn_softcap: float | None = None  # Gemma 2: attention logits -> cap * tanh(logits / cap)
  final_softcap: float | None = None  # Gemma 2: output logits likewise
  query_scale: float | None = None  # Gemma: queries times query_scale ** -0.5 (None: head_dim ** -0.5)
  layer_types: tuple[str, ...] | None = None  # per layer "sliding" (sliding_window) or "full"; None: all alike
  local_rope_theta: float | None = None  # Gemma 3: the sliding layers' RoPE base, unscaled (None: as the others)

  kind = "decoder"

  def __post_init__(self):
    super().__post_init__()
    if self.mlp_activation not in ("silu", "gelu"):
      raise ValueError(f"mlp_activation {self.mlp_activation!r}: choose 'silu' or 'gelu'")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers or set(self.layer_types) - {"sliding", "full"}:
        raise ValueError(f"layer_types must name 'sliding' or 'full' for each of the {self.num_layers} layers, "
                         f"got {self.layer_types}")
      if "sliding" in self.layer_types and self.sliding_window is None:
        raise ValueError("layer_types has sliding layers but sliding_window is None")

  @property
  def layered(self) -> bool:
    """Whether layers differ by type (sliding or global, each with its own mask and RoPE base)."""
    return self.layer_types is not None and len(set(self.layer_types)) > 1


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


def _rope(cfg: DecoderConfig, local: bool):
  """A layer type's RoPE frequencies: the sliding layers' own base (unscaled) where the config has one."""
  if local and cfg.local_rope_theta is not None:
    return layers.rope_frequencies(cfg.head_dim, cfg.local_rope_theta, None)
  return layers.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


def _uniform_window(cfg: DecoderConfig) -> int | None:
  """The window of every layer when layers do not differ by type."""
  return None if cfg.layer_types is not None and "sliding" not in cfg.layer_types else cfg.sliding_window


def _dense(mask):
  return mask.dense() if isinstance(mask, attention.Mask) else mask


class Block(nn.Module):
  """One pre-norm layer. Called as (x, mask, positions), or with `config.layered` as (x, index, masks,
  positions): masks (global, sliding), each layer taking its type's mask and RoPE base by its index."""
  config: DecoderConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD, *args):
    cfg = self.config
    inv_freq = None
    if cfg.layered:
      index, (full, local), positions_BL = args
      if isinstance(index, int):  # unrolled: the layer's type is known when tracing
        is_local = cfg.layer_types[index] == "sliding"
        mask, inv_freq = (local if is_local else full), _rope(cfg, is_local)
      else:  # scanned: chosen per layer at run time, so the mask is dense (the einsum path)
        is_local = jnp.asarray([t == "sliding" for t in cfg.layer_types])[index]
        mask = jnp.where(is_local, _dense(local), _dense(full))
        inv_freq = jnp.where(is_local, _rope(cfg, True), _rope(cfg, False))
    else:
      mask, positions_BL = args
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, name=name, plus_one=cfg.norm_plus_one, **kw)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h = norm("pre_attention_norm")(x_BLD)
    h = layers.Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model, rope_theta=cfg.rope_theta,
                         rope_scaling=cfg.rope_scaling, dropout_rate=cfg.dropout_rate,
                         deterministic=self.deterministic, decode=self.decode, implementation=cfg.attention,
                         name="attention", lora=cfg.lora, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
                         norm_eps=cfg.norm_eps, norm_plus_one=cfg.norm_plus_one, query_scale=cfg.query_scale,
                         softcap=cfg.attn_softcap, **kw)(h, h, mask, None, positions_BL, positions_BL, inv_freq)
    if cfg.sandwich_norms:
      h = norm("post_attention_norm")(h)
    x_BLD = x_BLD + drop(h)
    h = norm("pre_mlp_norm")(x_BLD)
    h = layers.GatedMLP(cfg.d_model, cfg.d_ff, cfg.mlp_activation, cfg.dropout_rate, self.deterministic, name="mlp",
                        lora=cfg.lora, **kw)(h)
    if cfg.sandwich_norms:
      h = norm("post_mlp_norm")(h)
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
    `mask_B1LS`: which cache slots each new token may attend to (with `config.layered`, a pair: the global
    layers' mask and the sliding layers').
    """
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    B, L = decoder_input_tokens.shape
    positions = decoder_positions if decoder_positions is not None else jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = mask_B1LS
    if mask is None:
      segments = decoder_segment_ids if decoder_segment_ids is not None else jnp.ones((B, L), jnp.int32)
      make = lambda window: attention.Mask(segments, segments, positions, positions, causal=True, window=window,
                                           packed=packed and decoder_segment_ids is not None)
      mask = (make(None), make(cfg.sliding_window)) if cfg.layered else make(_uniform_window(cfg))
    embedder = layers.Embed(cfg.vocab_size, cfg.d_model, init_scale=0.02,
                            name="token_embedder", **kw)
    x = embedder(decoder_input_tokens)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model ** 0.5, x.dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    stack = LayerStack(Block, cfg, cfg.num_layers, dict(deterministic=deterministic, decode=decode), name="layers",
                       with_index=cfg.layered)
    x = stack(x, mask, positions)
    x = layers.RMSNorm(cfg.norm_eps, name="final_norm", plus_one=cfg.norm_plus_one, **kw)(x)
    if cfg.tie_embeddings:
      logits = embedder.attend(x)
    else:
      logits = layers.Dense((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "BLD,DV->BLV",
                            name="logits_dense", out_dtype=jnp.float32, **kw)(x)
    logits = logits.astype(jnp.float32)
    if cfg.final_softcap is not None:
      logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return constrain(logits, ("act_batch", "act_length", "act_vocab"))


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
    cfg = self.module.config
    # slots are positions shifted by the row's padding
    windowed = lambda w: (mask & (slots_BL[:, :, None] - key_slots_S[None, None, :] < w))[:, None]
    if cfg.layered:
      masks = (mask[:, None], windowed(cfg.sliding_window))
    else:
      window = _uniform_window(cfg)
      masks = mask[:, None] if window is None else windowed(window)
    logits, vars_ = self.module.apply({"params": self.params, "cache": cache}, tokens_BL, None, positions_BL,
                                      decode=True, mask_B1LS=masks, mutable=["cache"])
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
