"""Layers shared by the T5 and decoder-only models (Flax linen).

Shape letters used in einsum strings and names throughout `instruct_jax.models`:

    B batch        L query length     S key/value length   D model width (embed)
    H query heads  N key/value heads  G query heads per key/value head (H = N * G)
    K head width   F MLP hidden width V vocabulary

Every parameter is created with logical axis names (see `instruct_jax.sharding`), so it is born sharded.
Parameters live in `param_dtype`; matmuls run in `dtype`; norms, softmax and logits are computed in fp32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from instruct_jax.models.lora import LoraConfig
from instruct_jax.models import attention
from instruct_jax.models.attention import NEG_INF, add_shared_bias, segment_mask  # noqa: F401 (used elsewhere)
from instruct_jax.sharding import constrain

Dtype = Any


def param_with_axes(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...],
                    axes: tuple[str | None, ...], dtype: Dtype) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm over the last axis with a learned scale and no bias or mean subtraction (T5, LLaMA).

  `plus_one` (Gemma): the scale is 1 + w, w starting at 0. `axis` names the normalised axis (a query or key
  head's `head_dim` for Qwen3's and Gemma 3's q/k norms).
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  plus_one: bool = False
  axis: str = "embed"

  @nn.compact
  def __call__(self, x_BLD):
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale_D = param_with_axes(self, "scale", init, (x.shape[-1],), (self.axis,), self.param_dtype)
    scale_D = scale_D.astype(jnp.float32) + (1.0 if self.plus_one else 0.0)
    return (x * scale_D).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [V, D]; `attend` reuses it as the output layer when embeddings are tied."""
  vocab_size: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_scale: float = 1.0

  def setup(self):
    self.embedding = param_with_axes(self, "embedding", nn.initializers.normal(self.init_scale),
                                     (self.vocab_size, self.features), ("vocab", "embed"), self.param_dtype)

  def __call__(self, tokens_BL):
    return jnp.take(self.embedding, tokens_BL, axis=0).astype(self.dtype)

  def attend(self, x_BLD):
    return jnp.einsum("BLD,VD->BLV", x_BLD, self.embedding.astype(self.dtype), preferred_element_type=jnp.float32)


class Dense(nn.Module):
  """Matmul with a named kernel, no bias: x [..., in] -> [..., out] through `einsum_str`.

  The kernel starts normal with std init_scale / sqrt(fan_in), fan_in being the contracted dimensions.
  With `lora` naming this module's name among its targets, a low-rank adapter is added (see models/lora.py).
  `use_bias` adds a bias over the output dimensions (Qwen2's query, key and value projections).
  """
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  einsum_str: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_scale: float = 1.0
  out_dtype: Dtype | None = None  # e.g. fp32 logits from bf16 inputs (accumulated in fp32)
  lora: LoraConfig | None = None
  deterministic: bool = True  # no LoRA dropout
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    x_spec, k_spec = self.einsum_str.split("->")[0].split(",")
    fan_in = math.prod(n for letter, n in zip(k_spec, self.shape) if letter in x_spec)
    init = nn.initializers.normal(self.init_scale * fan_in ** -0.5)
    kernel = param_with_axes(self, "kernel", init, self.shape, self.axes, self.param_dtype)
    y = _matmul(self.einsum_str, x.astype(self.dtype), kernel.astype(self.dtype), self.out_dtype)
    if self.use_bias:
      out = [i for i, letter in enumerate(k_spec) if letter not in x_spec]
      bias = param_with_axes(self, "bias", nn.initializers.zeros, tuple(self.shape[i] for i in out),
                             tuple(self.axes[i] for i in out), self.param_dtype)
      y = y + bias.astype(y.dtype)
    if self.lora is not None and self.name in self.lora.targets:
      y = y + self._adapter(x, x_spec, k_spec).astype(y.dtype)
    return y

  def _adapter(self, x, x_spec: str, k_spec: str):
    """alpha/rank * dropout(x) A B; A [in..., R] uniform with bound 1/sqrt(fan_in) (PEFT's default), B zero."""
    out_spec = self.einsum_str.split("->")[1]
    n = len(set(x_spec) & set(k_spec))
    lead, contracted, rest = x_spec[:len(x_spec) - n], k_spec[:n], k_spec[n:]
    if x_spec[len(x_spec) - n:] != contracted or out_spec != lead + rest or "R" in self.einsum_str:
      raise ValueError(f"{self.name}: LoRA needs a projection of the form (lead + in), (in + out) -> (lead + out), "
                       f"not {self.einsum_str}")
    r = self.lora.rank
    init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(n)), out_axis=-1)
    a = param_with_axes(self, "lora_a", init_a, self.shape[:n] + (r,), tuple(self.axes[:n]) + ("lora_rank",),
                        self.param_dtype)
    b = param_with_axes(self, "lora_b", nn.initializers.zeros, (r,) + self.shape[n:],
                        ("lora_rank",) + tuple(self.axes[n:]), self.param_dtype)
    h = nn.Dropout(self.lora.dropout)(x, deterministic=self.deterministic).astype(self.dtype)
    h = _matmul(f"{x_spec},{contracted}R->{lead}R", h, a.astype(self.dtype), None)
    return _matmul(f"{lead}R,R{rest}->{out_spec}", h * jnp.asarray(self.lora.scale, h.dtype), b.astype(self.dtype),
                   self.out_dtype)


def _matmul(einsum_str: str, x, kernel, out_dtype):
  """einsum of the form (lead + contracted), (contracted + rest) -> (lead + rest) as ONE 2-D matmul.

  XLA's CPU backend runs the weight gradient of a 3-D einsum such as "BLD,DF->BLF" (a contraction over
  both B and L) off its fast matmul path; flattened, forward and backward are plain 2-D matmuls (what that
  saves: BENCHMARKS.md, "Train step"). Other shapes fall back to einsum.
  """
  x_spec, k_spec = einsum_str.split("->")[0].split(",")
  out_spec = einsum_str.split("->")[1]
  n = len(set(x_spec) & set(k_spec))
  lead, contracted, rest = x_spec[:len(x_spec) - n], x_spec[len(x_spec) - n:], k_spec[n:]
  if k_spec[:n] != contracted or out_spec != lead + rest:
    return jnp.einsum(einsum_str, x, kernel, preferred_element_type=out_dtype)
  lead_shape, rest_shape = x.shape[:len(lead)], kernel.shape[n:]
  x2, k2 = x.reshape(math.prod(lead_shape), -1), kernel.reshape(-1, math.prod(rest_shape))
  if jax.default_backend() == "cpu":
    y = checkpoint_name(_dot_cpu(x2, k2, out_dtype), MATMUL_NAME)
  else:
    y = jnp.dot(x2, k2, preferred_element_type=out_dtype)
  return y.reshape(*lead_shape, *rest_shape)


MATMUL_NAME = "weight_matmul"  # names _dot_cpu's outputs so remat policies can keep them (stack.py)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_cpu(x_ND, k_DF, out_dtype):
  """x @ k whose weight gradient reads a transposed copy of x.

  Same values as `jnp.dot`; only the backward differs. XLA's CPU backend folds the transpose of
  x^T @ g into a "contract dimension 0" matmul that runs ~10-20% slower than a plain one; materialising
  x^T first (the barrier keeps XLA from folding it back) is cheaper than the difference.
  """
  return jnp.dot(x_ND, k_DF, preferred_element_type=out_dtype)


def _dot_cpu_fwd(x_ND, k_DF, out_dtype):
  return _dot_cpu(x_ND, k_DF, out_dtype), (x_ND, k_DF)


def _dot_cpu_bwd(out_dtype, res, g_NF):
  x_ND, k_DF = res
  x_DN = jax.lax.optimization_barrier(x_ND.T)
  g_x = jnp.dot(g_NF, k_DF.T, preferred_element_type=jnp.float32).astype(x_ND.dtype)
  g_k = jnp.dot(x_DN, g_NF, preferred_element_type=jnp.float32).astype(k_DF.dtype)
  return g_x, g_k


_dot_cpu.defvjp(_dot_cpu_fwd, _dot_cpu_bwd)


class GatedMLP(nn.Module):
  """act(x W0) * (x W1) W_out: gated-GELU for T5 v1.1, SwiGLU for LLaMA."""
  d_model: int
  d_ff: int
  activation: str  # "gelu" (tanh approximation, as T5 v1.1) or "silu"
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BLD):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, lora=self.lora, deterministic=self.deterministic)
    act = {"gelu": lambda z: nn.gelu(z, approximate=True), "silu": nn.silu}[self.activation]
    gate_BLF = Dense((self.d_model, self.d_ff), ("embed", "mlp"), "BLD,DF->BLF", name="wi_0", **kw)(x_BLD)
    up_BLF = Dense((self.d_model, self.d_ff), ("embed", "mlp"), "BLD,DF->BLF", name="wi_1", **kw)(x_BLD)
    h_BLF = constrain(act(gate_BLF) * up_BLF, ("act_batch", "act_length", "act_mlp"))
    h_BLF = nn.Dropout(self.dropout_rate)(h_BLF, deterministic=self.deterministic)
    return Dense((self.d_ff, self.d_model), ("mlp", "embed"), "BLF,FD->BLD", name="wo", **kw)(h_BLF)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling: Llama-3's ("llama3": long wavelengths divided by `factor`, short ones kept, a
  smooth blend between) or linear ("linear": every frequency divided by `factor`; Gemma 3's global layers)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192
  kind: str = "llama3"

  def __post_init__(self):
    if self.kind not in ("llama3", "linear"):
      raise ValueError(f"rope scaling kind {self.kind!r}: choose 'llama3' or 'linear'")


def rope_frequencies(head_dim: int, theta, scaling: RopeScaling | None) -> jax.Array:
  """Inverse frequencies [K/2] (`theta` may be traced: a scanned stack's per-layer base)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  if scaling.kind == "linear":
    return inv_freq / scaling.factor
  wavelen = 2 * jnp.pi / inv_freq
  low_wavelen = scaling.original_max_position / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position / scaling.high_freq_factor
  smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  return jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor,
                   jnp.where(wavelen < high_wavelen, inv_freq, blended))


def apply_rope(x_BLHK, positions_BL, inv_freq_K2):
  """Rotary embedding in the split-halves layout (the Hugging Face LLaMA weight layout)."""
  angles = positions_BL[..., None].astype(jnp.float32) * inv_freq_K2  # [B, L, K/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x = x_BLHK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BLHK.dtype)


class Attention(nn.Module):
  """Multi-head attention with grouped key/value heads, optional RoPE and an optional additive bias.

  T5 passes its relative position bias and `scale_logits=False` (T5 folds 1/sqrt(K) into the init);
  LLaMA passes RoPE settings. With `decode=True` keys and values are kept in a "cache" collection.
  `mask` is an `attention.Mask` (segment ids) or a dense [B, 1, L, S] boolean array (decode steps, and the
  per-layer windows of a scanned stack); `implementation` picks the attention core (config.model.attention;
  see `instruct_jax.models.attention`). Family switches: `qkv_bias` (Qwen2), `qk_norm` (an RMSNorm over each
  query and key head before RoPE: Qwen3, Gemma 3; `norm_plus_one` for Gemma's (1 + w) scale), `query_scale`
  (queries times query_scale ** -0.5 instead of head_dim ** -0.5: Gemma), `softcap` (logits -> cap *
  tanh(logits / cap): Gemma 2). `inv_freq_K2` (a call argument) overrides the RoPE frequencies (per-layer
  RoPE bases).
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_model: int
  scale_logits: bool = True
  rope_theta: float | None = None
  rope_scaling: RopeScaling | None = None
  dropout_rate: float = 0.0
  deterministic: bool = True
  decode: bool = False
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lora: LoraConfig | None = None
  qkv_bias: bool = False
  qk_norm: bool = False
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  query_scale: float | None = None
  softcap: float | None = None

  @nn.compact
  def __call__(self, x_BLD, kv_BSD, mask, bias_1HLS=None, q_positions_BL=None, kv_positions_BS=None,
               inv_freq_K2=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, lora=self.lora, deterministic=self.deterministic)
    H, N, K, D = self.num_heads, self.num_kv_heads, self.head_dim, self.d_model
    q_scale = 1.0 if self.scale_logits else K ** -0.5  # unscaled logits: fold 1/sqrt(K) into the init
    q_BLHK = Dense((D, H, K), ("embed", "heads", "head_dim"), "BLD,DHK->BLHK", name="query", init_scale=q_scale,
                   use_bias=self.qkv_bias, **kw)(x_BLD)
    k_BSNK = Dense((D, N, K), ("embed", "kv_heads", "head_dim"), "BSD,DNK->BSNK", name="key",
                   use_bias=self.qkv_bias, **kw)(kv_BSD)
    v_BSNK = Dense((D, N, K), ("embed", "kv_heads", "head_dim"), "BSD,DNK->BSNK", name="value",
                   use_bias=self.qkv_bias, **kw)(kv_BSD)
    if self.qk_norm:
      norm = dict(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, plus_one=self.norm_plus_one,
                  axis="head_dim")
      q_BLHK = RMSNorm(name="query_norm", **norm)(q_BLHK)
      k_BSNK = RMSNorm(name="key_norm", **norm)(k_BSNK)
    if inv_freq_K2 is None and self.rope_theta is not None:
      inv_freq_K2 = rope_frequencies(K, self.rope_theta, self.rope_scaling)
    if inv_freq_K2 is not None:
      q_BLHK = apply_rope(q_BLHK, q_positions_BL, inv_freq_K2)
      k_BSNK = apply_rope(k_BSNK, kv_positions_BS, inv_freq_K2)
    if self.decode:
      k_BSNK, v_BSNK, mask = self._update_cache(k_BSNK, v_BSNK, mask)
    q_BLHK = constrain(q_BLHK, ("act_batch", "act_length", "act_heads", None))
    if self.scale_logits:
      q_BLHK = q_BLHK * ((self.query_scale or K) ** -0.5)
    dropout_active = self.dropout_rate > 0 and not self.deterministic
    dropout = lambda p: nn.Dropout(self.dropout_rate)(p, deterministic=self.deterministic)
    # Decode steps (a few queries against the key/value cache) keep the einsum path.
    implementation = "xla" if self.decode else self.implementation
    out_BLHK = attention.attend(q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS, implementation=implementation,
                                dtype=self.dtype, dropout=dropout, dropout_active=dropout_active,
                                softcap=self.softcap)
    out_BLHK = constrain(out_BLHK, ("act_batch", "act_length", "act_heads", None))
    return Dense((H, K, D), ("heads", "head_dim", "embed"), "BLHK,HKD->BLD", name="out", **kw)(out_BLHK)

  def _update_cache(self, k_BSNK, v_BSNK, mask):
    """Writes this step's keys/values at the cache index; returns the whole cache and its mask.

    The cache is created by `init` on a full-length dummy input (its length is the decode budget); each
    decode call passes one (or a prompt's worth of) new position(s).
    """
    is_init = not self.has_variable("cache", "cached_key")
    key = self.variable("cache", "cached_key", jnp.zeros, k_BSNK.shape, k_BSNK.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, v_BSNK.shape, v_BSNK.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if is_init:
      return k_BSNK, v_BSNK, mask
    step = k_BSNK.shape[1]
    idx = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BSNK.astype(key.value.dtype), (0, idx, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BSNK.astype(value.value.dtype), (0, idx, 0, 0))
    index.value = idx + step
    return key.value, value.value, mask
