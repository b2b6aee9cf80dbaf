"""Do the fused attention paths give the einsum path's results on this machine's accelerator? (issue 12)

    python benchmarks/attention_check.py                # every case, the fused path `auto` picks here
    python benchmarks/attention_check.py --impl cudnn --dtype bfloat16 --length 512

The CPU tests (tests/models/test_attention.py) run cuDNN's arguments through jax's xla implementation and the
Pallas kernels in interpret mode; this runs the real kernels. For every case (packed rows, rows of one example
padded at their end, an all-padding row, causal with grouped heads, Mistral's window, T5's bias, cross-attention)
it compares outputs at non-padding queries, the loss and the gradients w.r.t. q, k, v (and the bias) with the
`xla` path at the same dtype, and exits 1 if any case is off by more than bf16 rounding explains. Imports only
jax and the project's core (no grain, ml_collections or TFDS).
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax.models import attention

# name: (causal, grouped kv heads, window, T5 bias, cross-attention with S = 2 L, row layout)
CASES = {
    "decoder_packed": (True, True, None, False, False, "packed"),
    "decoder_rows": (True, True, None, False, False, "rows"),
    "mistral_window_packed": (True, True, 64, False, False, "packed"),
    "mistral_window_rows": (True, True, 64, False, False, "rows"),
    "t5_encoder_packed": (False, False, None, True, False, "packed"),
    "t5_encoder_rows": (False, False, None, True, False, "rows"),
    "t5_decoder_rows_empty": (True, False, None, True, False, "rows_empty"),
    "cross_packed": (False, False, None, False, True, "packed"),
    "cross_rows": (False, False, None, False, True, "rows"),
}


def segments(length: int, layout: str, batch: int, rng) -> np.ndarray:
  """[batch, length] segment ids: packed (examples of random lengths, then padding) or one example per row."""
  out = np.zeros((batch, length), np.int32)
  for b in range(batch):
    if layout == "packed":
      pos, seg = 0, 1
      while pos < length - length // 8:
        n = int(rng.integers(length // 16, length // 3))
        out[b, pos:pos + n], pos, seg = seg, pos + n, seg + 1
      out[b, length - length // 8:] = 0
    elif not (layout == "rows_empty" and b == batch - 1):
      out[b, :int(rng.integers(length // 2, length))] = 1
  return out


def positions(seg: np.ndarray) -> np.ndarray:
  out = np.zeros_like(seg)
  for b in range(seg.shape[0]):
    for i in range(1, seg.shape[1]):
      out[b, i] = out[b, i - 1] + 1 if seg[b, i] == seg[b, i - 1] else 0
  return out


def check(name: str, impl: str, dtype, L: int, batch: int, heads: int, head_dim: int, seed: int = 0) -> dict:
  causal, gqa, window, bias, cross, layout = CASES[name]
  rng = np.random.default_rng(seed)
  S = 2 * L if cross else L
  N = heads // 4 if gqa else heads
  q_seg = segments(L, layout, batch, rng)
  kv_seg = segments(S, layout, batch, rng) if cross else q_seg
  mask = attention.Mask(jnp.asarray(q_seg), jnp.asarray(kv_seg), jnp.asarray(positions(q_seg)),
                        jnp.asarray(positions(kv_seg)), causal=causal, window=window, packed=layout == "packed")
  q = jnp.asarray(rng.normal(size=(batch, L, heads, head_dim)) / head_dim ** 0.5, dtype)
  k, v = (jnp.asarray(rng.normal(size=(batch, S, N, head_dim)), dtype) for _ in range(2))
  b = jnp.asarray(rng.normal(size=(1, heads, L, S)), jnp.float32) if bias else None
  c = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  valid = jnp.asarray(q_seg > 0)[:, :, None, None]

  def run(implementation):
    def f(q, k, v, b):
      out = attention.attend(q, k, v, mask, b, implementation=implementation, dtype=dtype).astype(jnp.float32)
      return jnp.sum(jnp.where(valid, out * c, 0.0)), out
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3) if bias else (0, 1, 2), has_aux=True))
    (loss, out), grads = grad(q, k, v, b)
    return float(loss), np.asarray(out)[np.asarray(q_seg > 0)], [np.asarray(g, np.float32) for g in grads]

  ref_loss, ref_out, ref_grads = run("xla")
  loss, out, grads = run(impl)
  rel = lambda a, r: float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-12))
  return {"out": rel(out, ref_out), "loss": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
          "grads": max(rel(g, r) for g, r in zip(grads, ref_grads)),
          "finite": all(np.isfinite(g).all() for g in grads) and np.isfinite(out).all()}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--impl", default="auto", choices=attention.IMPLEMENTATIONS)
  p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--tolerance", type=float, default=None,
                 help="largest relative error of outputs and gradients (default: 3e-2 in 16-bit, 1e-4 in fp32)")
  args = p.parse_args()
  backend = jax.default_backend()
  dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
  tol = args.tolerance or (1e-4 if dtype == jnp.float32 else 3e-2)
  impl = attention.resolve(args.impl, dtype=dtype, head_dim=args.head_dim, dropout_active=False, dense_mask=False)
  print(f"devices: {jax.devices()}; attention {args.impl!r} runs {impl!r} against 'xla', {dtype.name}, "
        f"L={args.length}, batch {args.batch}, {args.heads} heads of {args.head_dim}; tolerance {tol:g}")
  print(f"{'case':<24} {'outputs':>10} {'loss':>10} {'gradients':>10}  verdict")
  failed = 0
  for name in CASES:
    r = check(name, impl, dtype, args.length, args.batch, args.heads, args.head_dim)
    ok = r["finite"] and max(r["out"], r["loss"], r["grads"]) <= tol
    failed += not ok
    print(f"{name:<24} {r['out']:>10.2e} {r['loss']:>10.2e} {r['grads']:>10.2e}  "
          f"{'ok' if ok else 'DIFFERS' if r['finite'] else 'NOT FINITE'}", flush=True)
  print(f"{len(CASES) - failed} of {len(CASES)} cases agree with 'xla'")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
