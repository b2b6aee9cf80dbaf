"""The CPU-speed formulations compute the same values and gradients as the plain ones they replace.

`layers._matmul` (2-D matmul whose weight gradient reads a transposed copy of x on CPU), `add_shared_bias`
(bias gradient as a matmul) and the loss's accuracy count (target logit == max instead of argmax) exist only
to make the CPU train step faster; these tests pin that they change nothing else.
"""
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import losses
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


def test_correct_count_matches_argmax_and_counts_ties():
  logits = jax.random.normal(jax.random.key(2), (4, 6, 11))
  targets = jax.random.randint(jax.random.key(3), (4, 6), 0, 11)
  targets = targets.at[0].set(jnp.argmax(logits[0], -1))  # some rows right for sure
  weights = jnp.ones((4, 6))
  scale, denom = losses.token_scale_and_denominator(weights, None, "tokens")
  _, sums = losses.loss_and_metrics(logits, targets, weights, scale_BL=scale, denominator=denom)
  assert float(sums["correct"]) == float(jnp.sum(jnp.argmax(logits, -1) == targets)) >= 6
  tie = jnp.zeros((1, 1, 5)).at[0, 0, 1].set(1.0).at[0, 0, 3].set(1.0)  # tokens 1 and 3 share the max
  for target in (1, 3):
    scale, denom = losses.token_scale_and_denominator(jnp.ones((1, 1)), None, "tokens")
    _, sums = losses.loss_and_metrics(tie, jnp.full((1, 1), target), jnp.ones((1, 1)), scale_BL=scale,
                                      denominator=denom)
    assert float(sums["correct"]) == 1.0


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
