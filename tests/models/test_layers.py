"""The CPU-speed formulations compute the same values and gradients as the plain ones they replace.

`layers._matmul` (2-D matmul whose weight gradient reads a transposed copy of x on CPU) and `add_shared_bias`
(bias gradient as a matmul) exist only to make the CPU train step faster; these tests pin that they change
nothing else (values, gradients, dtypes, what remat policies keep). `host.keep_freed_memory` is tested by
its effect on page faults.
"""
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax.models import layers


@pytest.mark.parametrize("einsum_str,x_shape,k_shape", [
    ("BLD,DF->BLF", (2, 5, 8), (8, 12)),
    ("BLD,DHK->BLHK", (3, 4, 8), (8, 2, 3)),
    ("BLHK,HKD->BLD", (2, 3, 2, 4), (2, 4, 6)),
])
def test_matmul_value_and_gradients_equal_einsum(einsum_str, x_shape, k_shape):
  kx, kk, kc = jax.random.split(jax.random.key(0), 3)
  x, k = jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)
  out_shape = jax.eval_shape(lambda a, b: jnp.einsum(einsum_str, a, b), x, k).shape
  c = jax.random.normal(kc, out_shape)

  def loss(f):
    return lambda a, b: jnp.sum(jnp.tanh(f(a, b)) * c)

  ours = lambda a, b: layers._matmul(einsum_str, a, b, None)
  plain = lambda a, b: jnp.einsum(einsum_str, a, b, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(ours(x, k), plain(x, k), rtol=1e-5, atol=1e-5)
  for g_ours, g_plain in zip(jax.grad(loss(ours), (0, 1))(x, k), jax.grad(loss(plain), (0, 1))(x, k)):
    np.testing.assert_allclose(g_ours, g_plain, rtol=1e-5, atol=1e-5)


def test_matmul_gradients_keep_input_dtypes_in_bf16():
  x = jnp.ones((2, 3, 8), jnp.bfloat16)
  k = jnp.ones((8, 4), jnp.bfloat16)
  gx, gk = jax.grad(lambda a, b: jnp.sum(layers._matmul("BLD,DF->BLF", a, b, jnp.float32)), (0, 1))(x, k)
  assert gx.dtype == jnp.bfloat16 and gk.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(gk, np.float32), 6.0)  # 2 x 3 rows of ones
  np.testing.assert_array_equal(np.asarray(gx, np.float32), 4.0)


def test_shared_bias_gradient_equals_broadcast_add():
  kl, kb, kc = jax.random.split(jax.random.key(1), 3)
  logits, bias = jax.random.normal(kl, (3, 2, 4, 5)), jax.random.normal(kb, (1, 2, 4, 5))
  c = jax.random.normal(kc, logits.shape)
  ours = lambda lg, b: jnp.sum(jax.nn.softmax(layers.add_shared_bias(lg, b)) * c)
  plain = lambda lg, b: jnp.sum(jax.nn.softmax(lg + b) * c)
  np.testing.assert_allclose(ours(logits, bias), plain(logits, bias), rtol=1e-6)
  for g_ours, g_plain in zip(jax.grad(ours, (0, 1))(logits, bias), jax.grad(plain, (0, 1))(logits, bias)):
    np.testing.assert_allclose(g_ours, g_plain, rtol=1e-5, atol=1e-6)


_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
  from instruct_jax import host
  assert host.keep_freed_memory()
def cycle():
  a = np.ones(64 * 2**20, np.float32)  # 256 MiB, every page written
  del a
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc malloc only")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in_again():
  faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True,
                                     text=True).stdout) for mode in ("keep", "system")}
  # glibc's default maps every 256 MiB buffer afresh (hundreds of faults even with huge pages).
  assert faults["system"] >= 100, faults
  assert faults["keep"] * 10 <= faults["system"], faults


def _count_dots(jaxpr) -> int:
  """dot_general equations in a jaxpr, sub-jaxprs (remat, scan, custom calls) included."""
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == "dot_general"
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          n += _count_dots(inner)
  return n


def test_remat_dot_policies_still_keep_the_cpu_matmul_outputs():
  from instruct_jax.models import t5
  batch = {"encoder_input_tokens": jnp.ones((2, 8), jnp.int32), "decoder_input_tokens": jnp.ones((2, 4), jnp.int32)}
  counts = {}
  for policy in ("none", "dots", "dots_no_batch", "full"):
    model = t5.T5(t5.config_for("tiny", remat_policy=policy))  # the Flax module itself
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), **batch))
    grad = jax.grad(lambda p: jnp.sum(model.apply(p, **batch)))
    counts[policy] = _count_dots(jax.make_jaxpr(grad)(params).jaxpr)
  # "dots" keeps every matmul output, so the backward pass recomputes none; "dots_no_batch" recomputes only
  # attention's batched matmuls; "full" recomputes them all.
  assert counts["dots"] == counts["none"] < counts["dots_no_batch"] < counts["full"], counts
