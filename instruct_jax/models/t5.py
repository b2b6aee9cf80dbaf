"""T5 v1.1 / Flan-T5 encoder-decoder (Flax linen).

T5 v1.1 differs from the original T5 in the ways the pre-trained checkpoints need: gated-GELU MLP, RMS
norm without bias, no biases anywhere, an untied output layer, and no 1/sqrt(K) scaling of attention
logits. Each stack learns one relative position bias (32 buckets, max distance 128) shared by its layers.

Under packing the relative position of two tokens is their index difference, which equals their
in-example position difference because examples are contiguous and attention never crosses segments.
Shape letters: see `instruct_jax.models.layers`.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from instruct_jax.models import attention, layers
from instruct_jax.models.stack import LayerStack, StackConfig
from instruct_jax.sharding import constrain

INPUT_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids", "decoder_segment_ids",
                  "encoder_positions", "decoder_positions")


@dataclasses.dataclass(frozen=True)
class T5Config(StackConfig):
  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 1024
  num_heads: int = 6
  head_dim: int = 64
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  tie_embeddings: bool = False  # T5 v1.1 and Flan-T5 untie; original T5 ties and rescales by d_model**-0.5
  family: str = "t5"  # the checkpoint family (models/families) that reads and writes it: t5 or mt5

  kind = "encoder_decoder"


SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=512, d_model=64, d_ff=128, num_heads=4, head_dim=16, num_encoder_layers=2,
                 num_decoder_layers=2),
    "small": dict(d_model=512, d_ff=1024, num_heads=6, num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(d_model=768, d_ff=2048, num_heads=12, num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(d_model=1024, d_ff=2816, num_heads=16, num_encoder_layers=24, num_decoder_layers=24),
    "xl": dict(d_model=2048, d_ff=5120, num_heads=32, num_encoder_layers=24, num_decoder_layers=24),
    "xxl": dict(d_model=4096, d_ff=10240, num_heads=64, num_encoder_layers=24, num_decoder_layers=24),
}


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int, max_distance: int):
  """T5's bucketing of key_position - query_position: exact for small distances, log-spaced after."""
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket += (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
  large = jnp.minimum(exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32), num_buckets - 1)
  return bucket + jnp.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_offset=0):
    cfg = self.config
    table_TH = layers.param_with_axes(self, "rel_embedding", nn.initializers.normal(1.0),
                                      (cfg.relpos_buckets, cfg.num_heads), ("relpos_buckets", "heads"),
                                      cfg.param_dtype)
    rel_LS = jnp.arange(k_len)[None, :] - (jnp.arange(q_len) + q_offset)[:, None]
    buckets_LS = relative_position_bucket(rel_LS, bidirectional=self.bidirectional,
                                          num_buckets=cfg.relpos_buckets, max_distance=cfg.relpos_max_distance)
    return jnp.take(table_TH, buckets_LS, axis=0).transpose(2, 0, 1)[None].astype(jnp.float32)  # [1,H,L,S]


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, mask, bias_1HLS):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h = layers.RMSNorm(cfg.norm_eps, name="pre_attention_norm", **kw)(x_BLD)
    h = layers.Attention(cfg.num_heads, cfg.num_heads, cfg.head_dim, cfg.d_model, scale_logits=False,
                         dropout_rate=cfg.dropout_rate, deterministic=self.deterministic,
                         implementation=cfg.attention, name="attention", lora=cfg.lora, **kw)(h, h, mask, bias_1HLS)
    x_BLD = x_BLD + drop(h)
    h = layers.RMSNorm(cfg.norm_eps, name="pre_mlp_norm", **kw)(x_BLD)
    h = layers.GatedMLP(cfg.d_model, cfg.d_ff, "gelu", cfg.dropout_rate, self.deterministic, name="mlp",
                        lora=cfg.lora, **kw)(h)
    return constrain(x_BLD + drop(h), ("act_batch", "act_length", "act_embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, y_BLD, encoded_BSD, self_mask, cross_mask, bias_1HLL):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    drop = lambda z: nn.Dropout(cfg.dropout_rate)(z, deterministic=self.deterministic)
    attn = lambda name, decode: layers.Attention(
        cfg.num_heads, cfg.num_heads, cfg.head_dim, cfg.d_model, scale_logits=False, decode=decode,
        dropout_rate=cfg.dropout_rate, deterministic=self.deterministic, implementation=cfg.attention, name=name,
        lora=cfg.lora, **kw)
    h = layers.RMSNorm(cfg.norm_eps, name="pre_self_attention_norm", **kw)(y_BLD)
    y_BLD = y_BLD + drop(attn("self_attention", self.decode)(h, h, self_mask, bias_1HLL))
    h = layers.RMSNorm(cfg.norm_eps, name="pre_cross_attention_norm", **kw)(y_BLD)
    y_BLD = y_BLD + drop(attn("cross_attention", False)(h, encoded_BSD, cross_mask))
    h = layers.RMSNorm(cfg.norm_eps, name="pre_mlp_norm", **kw)(y_BLD)
    h = layers.GatedMLP(cfg.d_model, cfg.d_ff, "gelu", cfg.dropout_rate, self.deterministic, name="mlp",
                        lora=cfg.lora, **kw)(h)
    return constrain(y_BLD + drop(h), ("act_batch", "act_length", "act_embed"))


class Encoder(nn.Module):
  config: T5Config
  embedder: layers.Embed

  @nn.compact
  def __call__(self, tokens_BS, segments_BS, *, deterministic: bool = True, packed: bool = True):
    cfg = self.config
    mask = attention.Mask(segments_BS, segments_BS, packed=packed)
    S = tokens_BS.shape[1]
    bias_1HSS = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(S, S)
    x = nn.Dropout(cfg.dropout_rate)(self.embedder(tokens_BS), deterministic=deterministic)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    x = LayerStack(EncoderLayer, cfg, cfg.num_encoder_layers, dict(deterministic=deterministic),
                   name="stack")(x, mask, bias_1HSS)
    x = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  embedder: layers.Embed

  @nn.compact
  def __call__(self, encoded_BSD, tokens_BL, self_mask, cross_mask, *, q_offset=0,
               deterministic: bool = True, decode: bool = False):
    """Logits [B, L, V]; keys span T positions (T = L when training, the cache length when decoding).

    The masks are `attention.Mask`s (training, scoring) or dense [B, 1, L, T] / [B, 1, L, S] arrays (decode).
    """
    cfg = self.config
    L = tokens_BL.shape[1]
    T = self_mask.kv_segments_BS.shape[1] if isinstance(self_mask, attention.Mask) else self_mask.shape[-1]
    bias_1HLT = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(L, T, q_offset)
    y = nn.Dropout(cfg.dropout_rate)(self.embedder(tokens_BL), deterministic=deterministic)
    y = constrain(y, ("act_batch", "act_length", "act_embed"))
    y = LayerStack(DecoderLayer, cfg, cfg.num_decoder_layers, dict(deterministic=deterministic, decode=decode),
                   name="stack")(y, encoded_BSD, self_mask, cross_mask, bias_1HLT)
    y = layers.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    if cfg.tie_embeddings:
      logits = self.embedder.attend(y * cfg.d_model ** -0.5)
    else:
      logits = layers.Dense((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "BLD,DV->BLV", dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, out_dtype=jnp.float32, name="logits_dense")(y)
    return constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))


class T5(nn.Module):
  """Encoder-decoder; `__call__` maps a batch in the T5X feature schema to fp32 logits [B, L, V]."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, cfg.dtype, cfg.param_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic: bool = True,
             packed: bool = True):
    """`packed=False` (also for `decode` and the whole call) promises one example per row, its padding at the
    end (see `attention.Mask`)."""
    segments = _segments_or_nonpad(encoder_segment_ids, encoder_input_tokens)
    return self.encoder(encoder_input_tokens, segments, deterministic=deterministic, packed=packed)

  def decode(self, encoded_BSD, decoder_input_tokens, encoder_segment_ids, decoder_segment_ids=None,
             decoder_positions=None, *, deterministic: bool = True, packed: bool = True):
    """Teacher-forced decoder logits for a whole target sequence (training and scoring)."""
    B, L = decoder_input_tokens.shape
    dec_seg = decoder_segment_ids if decoder_segment_ids is not None else jnp.ones((B, L), jnp.int32)
    dec_pos = decoder_positions if decoder_positions is not None else jnp.broadcast_to(jnp.arange(L), (B, L))
    self_mask = attention.Mask(dec_seg, dec_seg, dec_pos, dec_pos, causal=True,
                               packed=packed and decoder_segment_ids is not None)
    cross_mask = attention.Mask(dec_seg, encoder_segment_ids, packed=packed)
    return self.decoder(encoded_BSD, decoder_input_tokens, self_mask, cross_mask, deterministic=deterministic)

  def decode_step(self, encoded_BSD, encoder_mask_BS, tokens_BL, cache_index, cache_length: int):
    """Decoder logits for new tokens at positions cache_index.. against a key/value cache."""
    B, L = tokens_BL.shape
    q_pos_BL = cache_index + jnp.arange(L)[None, :]
    self_mask = (jnp.arange(cache_length)[None, None, :] <= q_pos_BL[:, :, None])[:, None]
    cross_mask = jnp.broadcast_to(encoder_mask_BS[:, None, None, :], (B, 1, L, encoder_mask_BS.shape[1]))
    return self.decoder(encoded_BSD, tokens_BL, self_mask, cross_mask, q_offset=cache_index, decode=True)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
               deterministic: bool = True, packed: bool = True):
    del encoder_positions  # relative positions come from indices (see module docstring)
    enc_seg = _segments_or_nonpad(encoder_segment_ids, encoder_input_tokens)
    encoded = self.encoder(encoder_input_tokens, enc_seg, deterministic=deterministic, packed=packed)
    return self.decode(encoded, decoder_input_tokens, enc_seg, decoder_segment_ids, decoder_positions,
                       deterministic=deterministic, packed=packed)


class Stepper:
  """Incremental decoding for `instruct_jax.sampling`: next-token logits, cached or recomputed.

  Prompts are right-padded encoder inputs; the encoder runs once and the decoder starts from id 0 in every
  row. `init(prompts_BP, pad_B)` -> (state, logits of the first new token); `step(state, tokens_B, t)` ->
  (state, logits) after feeding new token t (t from 0). With use_cache=False the decoder recomputes the
  whole prefix every step (the reference the cache must match). `state` rows can be reordered with
  `stack.take_rows` (beam search).
  """
  left_pad_prompts = False

  def __init__(self, module: "T5", params, *, prompt_len: int, max_new_tokens: int, pad_id: int, use_cache: bool):
    self.module, self.params, self.use_cache, self.pad_id = module, params, use_cache, pad_id
    self.T = max_new_tokens  # decoder positions: the start token, then all but the last new token

  def _cached(self, cache, encoded, enc_mask, tokens_B, t):
    logits, vars_ = self.module.apply({"params": self.params, "cache": cache}, encoded, enc_mask, tokens_B[:, None],
                                      t, self.T, method=T5.decode_step, mutable=["cache"])
    return vars_["cache"], logits[:, -1]

  def _full(self, encoded, enc_mask, buf_BT, t):
    logits = self.module.apply({"params": self.params}, encoded, buf_BT, enc_mask.astype(jnp.int32),
                               method=T5.decode)
    return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

  def _empty_cache(self, B):
    shapes = jax.eval_shape(lambda: self.module.init(
        jax.random.key(0), jnp.zeros((B, 1, self.module.config.d_model)), jnp.ones((B, 1), bool),
        jnp.zeros((B, self.T), jnp.int32), 0, self.T, method=T5.decode_step))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  def init(self, prompts_BP, pad_B):
    del pad_B  # right padding: the encoder mask hides it
    B = prompts_BP.shape[0]
    enc_mask = prompts_BP != self.pad_id
    encoded = self.module.apply({"params": self.params}, prompts_BP, enc_mask.astype(jnp.int32), method=T5.encode)
    start = jnp.zeros((B,), jnp.int32)
    if self.use_cache:
      cache, logits = self._cached(self._empty_cache(B), encoded, enc_mask, start, 0)
      return {"cache": cache, "encoded": encoded, "enc_mask": enc_mask}, logits
    buf = jnp.zeros((B, self.T), jnp.int32)
    return {"buf": buf, "encoded": encoded, "enc_mask": enc_mask}, self._full(encoded, enc_mask, buf, 0)

  def step(self, state, tokens_B, t):
    state = dict(state)  # decoder input t + 1 is new token t
    if self.use_cache:
      state["cache"], logits = self._cached(state["cache"], state["encoded"], state["enc_mask"], tokens_B, t + 1)
      return state, logits
    state["buf"] = state["buf"].at[:, t + 1].set(tokens_B)
    return state, self._full(state["encoded"], state["enc_mask"], state["buf"], t + 1)


def train_flops_per_row(cfg: T5Config, sizes: dict[str, int], inputs_length: int, targets_length: int) -> float:
  """Model FLOPs of a train step's row (instruct_jax/flops.py): the encoder's I tokens (bidirectional), the
  decoder's O (causal self-attention, cross-attention over I); the output layer counts with the decoder and the
  input embedding table, a lookup, only where it is tied (as that output layer). `sizes`: parameters per
  top-level module."""
  I, O = inputs_length, targets_length
  d_attn = cfg.num_heads * cfg.head_dim
  p_enc = sizes["encoder"]
  p_dec = sizes["decoder"] + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
  enc = I * (6 * p_enc + 12 * cfg.num_encoder_layers * d_attn * I)
  dec = O * (6 * p_dec + 6 * cfg.num_decoder_layers * d_attn * O + 12 * cfg.num_decoder_layers * d_attn * I)
  return float(enc + dec)


def _segments_or_nonpad(segment_ids, tokens):
  """Segment ids if given (packed data), else 1 on non-padding tokens and 0 on padding (id 0)."""
  return segment_ids if segment_ids is not None else (tokens != 0).astype(jnp.int32)


def config_for(size: str, **overrides) -> T5Config:
  if size not in SIZES:
    raise ValueError(f"unknown T5 size {size!r}; choose one of {sorted(SIZES)}")
  return T5Config(**{**SIZES[size], **overrides})
