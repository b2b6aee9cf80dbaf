"""The attention core behind `layers.Attention`: q, k, v, a mask and an optional bias -> the attended values.

    out_BLHK = attention.attend(q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS, implementation="auto", dtype=...)

`mask` is either a `Mask` (segment ids, positions, causal, window: what training and scoring pass, and what
the fused kernels read) or a dense boolean [B, 1, L, S] array (the key/value-cache decode steps), which
always runs the einsum path. The query arrives scaled (the caller folds in 1/sqrt(K) or T5's unscaled
logits), so every path uses scale 1. Implementations (config.model.attention):

    xla         the einsum reference: materialises [B, H, L, S] logits; any mask, bias, dropout; every backend
    cudnn       jax.nn.dot_product_attention(implementation="cudnn") on GPU (bf16/fp16, head width a
                multiple of 8 and at most 256, 128 before Hopper); packing through a dense mask (exact; see `cudnn_call`), rows
                of one example each (`Mask.packed` False: data.pack=False) through per-row lengths; on CPU
                its arguments run through jax's xla implementation (tests)
    pallas_tpu  TPU Pallas kernels from jax: splash attention (segment ids, causal/local/full masks,
                grouped heads natively) where there is no bias, the Pallas flash attention (additive bias with
                gradient, segment ids) for T5's self-attention; on CPU they run in interpret mode (tests)
    auto        the fastest exact one for the backend and the call: cpu -> xla; gpu -> cudnn when its dtype
                and head width fit; tpu -> pallas_tpu; xla wherever attention dropout is active

Fused paths take causality (and Mistral's window) from index order within a segment; that equals the
position order because packed examples are contiguous and their positions count up from 0. Outputs at
padding queries (segment 0) are unspecified and differ between paths (no loss reads them); every other
output, the loss and all gradients agree with `xla`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from instruct_jax import errors, sharding

IMPLEMENTATIONS = ("xla", "cudnn", "pallas_tpu", "auto")
NEG_INF = -1e10  # large negative logit for masked attention; finite so fully masked rows stay NaN-free
_TPU_BLOCK = 128  # the Pallas TPU kernels tile lengths by multiples of 128: shorter or ragged ones are padded


class AttentionError(errors.UserError, ValueError):
  """An attention kernel that cannot run as asked (unknown, on this backend, with these settings)."""


def check_implementation(name: str, key: str = "config.model.attention") -> None:
  if name not in IMPLEMENTATIONS:
    raise AttentionError(f"{key}={name!r}: choose one of {list(IMPLEMENTATIONS)}")


@flax.struct.dataclass
class Mask:
  """Who may attend to whom, as segment ids: same non-padding segment (> 0), key not after query if causal.

  `window` (causal only; Mistral): a query also sees only the `window` most recent positions, itself included.
  `packed=False` promises one example per row: segment ids > 0 on a prefix of the row and 0 after it (padding
  at the end), for queries and keys alike. The cuDNN path then hands the kernel per-row lengths instead of a
  dense mask; every path gives the same results either way at non-padding queries (the trainer checks each
  such batch: `packing.check_one_example_rows`).
  """
  q_segments_BL: jax.Array
  kv_segments_BS: jax.Array
  q_positions_BL: jax.Array | None = None
  kv_positions_BS: jax.Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  window: int | None = flax.struct.field(pytree_node=False, default=None)
  packed: bool = flax.struct.field(pytree_node=False, default=True)

  def dense(self) -> jax.Array:
    """Boolean [B, 1, L, S] (the einsum path's mask)."""
    return segment_mask(self.q_segments_BL, self.kv_segments_BS, causal=self.causal,
                        q_positions_BL=self.q_positions_BL, kv_positions_BS=self.kv_positions_BS,
                        window=self.window)


def segment_mask(q_segments_BL, kv_segments_BS, *, causal: bool, q_positions_BL=None, kv_positions_BS=None,
                 window: int | None = None):
  """Boolean [B, 1, L, S]: same non-padding segment, and key not after query when causal.

  `window` (causal only; Mistral's sliding window): a query also sees only the `window` most recent
  positions, itself included (q_position - kv_position < window).
  """
  mask = (q_segments_BL[:, :, None] == kv_segments_BS[:, None, :]) & (q_segments_BL[:, :, None] > 0)
  if causal:
    mask &= q_positions_BL[:, :, None] >= kv_positions_BS[:, None, :]
    if window is not None:
      mask &= q_positions_BL[:, :, None] - kv_positions_BS[:, None, :] < window
  return mask[:, None]


@jax.custom_vjp
def add_shared_bias(logits_BHLS, bias_1HLS):
  """logits + bias, the bias shared by every example (T5's relative position bias).

  Same value as the broadcasting add; only the bias gradient is computed differently: the sum over the
  batch is one [1, B] x [B, H*L*S] matmul. XLA's CPU backend lowers the equivalent `sum(axis=0)` to a
  single-threaded reduction (its cost: BENCHMARKS.md, "Train step").
  """
  return logits_BHLS + bias_1HLS


def _add_shared_bias_fwd(logits_BHLS, bias_1HLS):
  return logits_BHLS + bias_1HLS, None


def _add_shared_bias_bwd(_, g_BHLS):
  B = g_BHLS.shape[0]
  ones_1B = jnp.ones((1, B), g_BHLS.dtype)
  g_bias = jnp.matmul(ones_1B, g_BHLS.reshape(B, -1), precision=jax.lax.Precision.HIGHEST)
  return g_BHLS, g_bias.reshape((1,) + g_BHLS.shape[1:])


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def resolve(implementation: str, *, dtype: Any, head_dim: int, dropout_active: bool, dense_mask: bool,
            backend: str | None = None, softcap: bool = False) -> str:
  """The implementation one call runs: `auto` chosen, and the cases no fused kernel takes sent to xla.

  `dense_mask`: a key/value-cache decode step (one or a few queries against the cache), or the per-layer
  windows of a scanned stack; `softcap`: soft-capped logits (Gemma 2), which no fused kernel here computes.
  """
  check_implementation(implementation)
  backend = backend or jax.default_backend()
  if dense_mask:
    return "xla"
  if softcap and implementation not in ("xla", "auto"):
    raise AttentionError(f"config.model.attention={implementation!r} cannot soft-cap attention logits (the "
                         "checkpoint's attn_softcap): choose 'auto' (the einsum for those layers) or 'xla'")
  if implementation == "auto":
    if dropout_active or backend == "cpu" or softcap:
      return "xla"
    if backend == "gpu":
      return "cudnn" if cudnn_supports(dtype, head_dim) else "xla"
    return "pallas_tpu" if backend == "tpu" else "xla"
  wrong = {"cudnn": "tpu", "pallas_tpu": "gpu"}.get(implementation)
  if backend == wrong:
    raise AttentionError(f"config.model.attention={implementation!r} does not run on {backend}: choose 'auto' or 'xla'")
  if implementation != "xla" and dropout_active:
    raise AttentionError(f"config.model.attention={implementation!r} has no dropout of attention probabilities: "
                     "set config.model.dropout_rate=0, or attention 'auto' or 'xla'")
  if implementation == "cudnn" and backend == "gpu" and not cudnn_supports(dtype, head_dim):
    raise AttentionError(f"config.model.attention='cudnn' needs config.model.dtype bfloat16 or float16 and a head "
                     f"width that is a multiple of 8 and at most 256 (128 before Hopper) (got {jnp.dtype(dtype).name}, "
                     f"{head_dim})")
  return implementation


def cudnn_supports(dtype, head_dim: int, capability: str | None = None) -> bool:
  """Whether cuDNN's fused attention takes this dtype and head width: 16-bit, a multiple of 8, at most 256 on
  Hopper and later (compute capability 9.0+) and 128 before (`capability`: the GPU's; default the first's)."""
  if capability is None:
    capability = getattr(jax.devices()[0], "compute_capability", "9.0") if jax.default_backend() == "gpu" else "9.0"
  widest = 256 if float(capability) >= 9.0 else 128
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= widest


def attend(q_BLHK, k_BSNK, v_BSNK, mask: "Mask | jax.Array", bias_1HLS=None, *, implementation: str = "xla",
           dtype: Any = jnp.float32, dropout: Callable | None = None, dropout_active: bool = False,
           softcap: float | None = None):
  """Attention of scaled queries: softmax(q k^T + bias, masked) v, as [B, L, H, K] in `dtype`.

  H query heads read N key/value heads in groups (query head n * G + g reads key/value head n). `dropout`
  (xla only) is applied to the probabilities; `dropout_active` says whether it does anything. `softcap`
  (xla only): logits become softcap * tanh(logits / softcap) before the bias and the mask.
  """
  impl = resolve(implementation, dtype=dtype, head_dim=q_BLHK.shape[-1], dropout_active=dropout_active,
                 dense_mask=not isinstance(mask, Mask), softcap=softcap is not None)
  if impl == "xla":
    dense = mask.dense() if isinstance(mask, Mask) else mask
    return _xla(q_BLHK, k_BSNK, v_BSNK, dense, bias_1HLS, dtype, dropout, softcap)
  if impl == "pallas_tpu":
    return _per_shard(pallas_tpu, q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS, dtype)
  # cuDNN (jax's own op partitions itself); off GPU its arguments run through jax's xla implementation.
  return cudnn_call(q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS, dtype,
                    "cudnn" if jax.default_backend() == "gpu" else "xla")


def _xla(q_BLHK, k_BSNK, v_BSNK, mask_B1LS, bias_1HLS, dtype, dropout, softcap=None):
  H, N = q_BLHK.shape[2], k_BSNK.shape[2]
  if H != N:  # grouped-query attention: query head n * G + g reads key/value head n
    k_BSHK, v_BSHK = jnp.repeat(k_BSNK, H // N, axis=2), jnp.repeat(v_BSNK, H // N, axis=2)
  else:
    k_BSHK, v_BSHK = k_BSNK, v_BSNK
  logits_BHLS = jnp.einsum("BLHK,BSHK->BHLS", q_BLHK, k_BSHK, preferred_element_type=jnp.float32)
  if softcap is not None:
    logits_BHLS = softcap * jnp.tanh(logits_BHLS / softcap)
  if bias_1HLS is not None:
    logits_BHLS = add_shared_bias(logits_BHLS, bias_1HLS.astype(jnp.float32))
  logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, NEG_INF)
  probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(dtype)
  if dropout is not None:
    probs_BHLS = dropout(probs_BHLS)
  return jnp.einsum("BHLS,BSHK->BLHK", probs_BHLS, v_BSHK.astype(dtype))


def cudnn_call(q_BLHK, k_BSNK, v_BSNK, mask: Mask, bias_1HLS, dtype, implementation: str):
  """jax.nn.dot_product_attention with the arguments the cuDNN kernel is given.

  The public API's lengths describe one valid prefix per row, not packed segments. Rows of one example each
  (`mask.packed` False) go in as those lengths: the kernel's own padding mask, nothing materialised. Packed
  rows go in as a boolean [B, 1, L, S] same-segment mask, which jax turns into a dense additive bias (with
  T5's bias: [B, H, L, S]): exact for every packing, at the cost of materialising that bias; jax's private
  segment-offset API (Hopper only) would avoid it. Causality and the window go in as the kernel's own flags
  so it can skip blocks; grouped key/value heads as they are (the kernel broadcasts them).
  """
  window = None if mask.window is None else (mask.window - 1, 0)
  bias = None if bias_1HLS is None else bias_1HLS.astype(dtype)
  if mask.packed:
    masks = dict(mask=segment_mask(mask.q_segments_BL, mask.kv_segments_BS, causal=False))
  else:  # an all-padding row keeps one key so that nothing is 0/0 (its outputs are read by no loss)
    length = lambda segments: jnp.maximum(jnp.sum(segments > 0, axis=1), 1).astype(jnp.int32)
    masks = dict(query_seq_lengths=length(mask.q_segments_BL), key_value_seq_lengths=length(mask.kv_segments_BS))
  return jax.nn.dot_product_attention(q_BLHK.astype(dtype), k_BSNK.astype(dtype), v_BSNK.astype(dtype), bias=bias,
                                      scale=1.0, is_causal=mask.causal, local_window_size=window,
                                      implementation=implementation, **masks)


# ---------------------------------------------------------------- TPU (Pallas)

def _per_shard(fn, q_BLHK, k_BSNK, v_BSNK, mask: Mask, bias_1HLS, dtype):
  """fn on each device's block under shard_map (XLA cannot partition a Pallas call itself).

  Examples split as act_batch says; heads as act_heads says when both H and N divide over it (query head
  n * G + g then lands beside key/value head n), else every device keeps all heads of its examples.
  """
  active = sharding.active()
  if active is None or active[0].size == 1:
    return fn(q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS, dtype)
  mesh, rules = active
  batch, heads = rules.get("act_batch"), rules.get("act_heads")
  n_heads = 1 if heads is None else math.prod(mesh.shape[a] for a in ((heads,) if isinstance(heads, str) else heads))
  if q_BLHK.shape[2] % n_heads or k_BSNK.shape[2] % n_heads:
    heads = None
  row, bhk = P(batch, None), P(batch, None, heads, None)
  has_pos = mask.q_positions_BL is not None
  specs = (bhk, bhk, bhk, Mask(row, row, row if has_pos else None, row if has_pos else None, mask.causal,
                               mask.window, mask.packed), None if bias_1HLS is None else P(None, heads, None, None))
  body = lambda q, k, v, m, b: fn(q, k, v, m, b, dtype)
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=bhk, check_vma=False)(
      q_BLHK, k_BSNK, v_BSNK, mask, bias_1HLS)


def _pad_to(x, axis: int, length: int, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _block(length: int) -> int:
  return next(b for b in (512, 256, 128) if length % b == 0)


def pallas_tpu(q_BLHK, k_BSNK, v_BSNK, mask: Mask, bias_1HLS, dtype):
  """Splash attention (no bias) or Pallas flash attention (bias), lengths padded to multiples of 128.

  Padding keys get segment id -1, which no query has, so they are never attended; padded queries are cut.
  On CPU the kernels run in Pallas interpret mode.
  """
  B, L, H, K = q_BLHK.shape
  S = k_BSNK.shape[1]
  Lp, Sp = -(-L // _TPU_BLOCK) * _TPU_BLOCK, -(-S // _TPU_BLOCK) * _TPU_BLOCK
  q_seg = _pad_to(mask.q_segments_BL.astype(jnp.int32), 1, Lp)
  kv_seg = _pad_to(mask.kv_segments_BS.astype(jnp.int32), 1, Sp, value=-1)
  q = _pad_to(q_BLHK.astype(dtype), 1, Lp)
  k, v = _pad_to(k_BSNK.astype(dtype), 1, Sp), _pad_to(v_BSNK.astype(dtype), 1, Sp)
  if bias_1HLS is None:
    out = _splash(q, k, v, q_seg, kv_seg, mask)
  elif jax.default_backend() != "tpu":  # the flash kernel has no interpret flag of its own
    flash = functools.partial(_flash, mask=mask, S=S)
    out = _in_context(flash, _plain_interpret)(q, k, v, q_seg, kv_seg, bias_1HLS)
  else:
    out = _flash(q, k, v, q_seg, kv_seg, bias_1HLS, mask=mask, S=S)
  return out[:, :L].astype(dtype)


@contextlib.contextmanager
def _plain_interpret():
  """Pallas's plain interpreter for every pallas_call traced inside (what `interpret=True` picks).

  Unlike `pltpu.force_tpu_interpret_mode()`, whose TPU interpreter runs through host callbacks that
  jax.checkpoint (remat) refuses, this one is pure jax. The flag is jax-internal; CPU tests only.
  """
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
  flag = jax_config.pallas_tpu_interpret_mode_context_manager
  prev = flag.swap_local(True)
  try:
    yield
  finally:
    flag.set_local(prev)


def _in_context(fn, context):
  """fn whose forward and backward are both traced inside `context()` (jax traces a backward later)."""
  @jax.custom_vjp
  def wrapped(*args):
    with context():
      return fn(*args)

  def fwd(*args):
    with context():
      return jax.vjp(fn, *args)  # (output, the backward as a pytree of residuals)

  def bwd(vjp_fn, g):
    with context():
      return vjp_fn(g)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def _splash(q_BLHK, k_BSNK, v_BSNK, q_seg_BL, kv_seg_BS, mask: Mask):
  """Splash attention's multi-query kernel per (example, key/value head): grouped heads without copies."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  B, Lp, H, K = q_BLHK.shape
  Sp, N = k_BSNK.shape[1], k_BSNK.shape[2]
  kernel = _splash_kernel(Lp, Sp, H // N, mask.causal, mask.window, jax.default_backend() != "tpu")
  q_BNGLK = q_BLHK.reshape(B, Lp, N, H // N, K).transpose(0, 2, 3, 1, 4)
  k_BNSK, v_BNSK = k_BSNK.transpose(0, 2, 1, 3), v_BSNK.transpose(0, 2, 1, 3)

  def one_example(q_NGLK, k_NSK, v_NSK, q_seg_L, kv_seg_S):
    seg = sk.SegmentIds(q=q_seg_L, kv=kv_seg_S)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=seg))(q_NGLK, k_NSK, v_NSK)

  out_BNGLK = jax.vmap(one_example)(q_BNGLK, k_BNSK, v_BNSK, q_seg_BL, kv_seg_BS)
  return out_BNGLK.transpose(0, 3, 1, 2, 4).reshape(B, Lp, H, K)


@functools.lru_cache(maxsize=64)
def _splash_kernel(Lp: int, Sp: int, G: int, causal: bool, window: int | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  if window is not None:
    one = sm.LocalMask((Lp, Sp), window_size=(window - 1, 0), offset=0)
  elif causal:
    one = sm.CausalMask((Lp, Sp))
  else:
    one = sm.FullMask((Lp, Sp))
  bq, bk = _block(Lp), _block(Sp)
  blocks = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                         block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  with jax.ensure_compile_time_eval():  # concrete mask tables, so the cached kernel holds no tracers
    return sk.make_splash_mqa(sm.MultiHeadMask([one] * G), block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _flash(q_BLHK, k_BSNK, v_BSNK, q_seg_BL, kv_seg_BS, bias_1HLS, *, mask: Mask, S: int):
  """Pallas flash attention with an additive bias (its gradient from the kernel) and segment ids."""
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  if mask.window is not None:
    raise ValueError("config.model.attention='pallas_tpu': the bias kernel has no sliding window")
  B, Lp, H, K = q_BLHK.shape
  Sp, N = k_BSNK.shape[1], k_BSNK.shape[2]
  if H != N:
    k_BSNK, v_BSNK = jnp.repeat(k_BSNK, H // N, axis=2), jnp.repeat(v_BSNK, H // N, axis=2)
  L = bias_1HLS.shape[2]
  bias = jnp.pad(bias_1HLS.astype(jnp.float32), ((0, 0), (0, 0), (0, Lp - L), (0, Sp - S)))
  bias_BHLS = jnp.broadcast_to(bias, (B, H, Lp, Sp))
  bq, bk = _block(Lp), _block(Sp)
  blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                         block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk, block_k_dq=bk,
                         block_q_dq=bq)
  to_heads = lambda x: x.transpose(0, 2, 1, 3)
  out_BHLK = fa.flash_attention(to_heads(q_BLHK), to_heads(k_BSNK), to_heads(v_BSNK), bias_BHLS,
                                fa.SegmentIds(q=q_seg_BL, kv=kv_seg_BS), causal=mask.causal, sm_scale=1.0,
                                block_sizes=blocks)
  return to_heads(out_BHLK)
