"""The masked loss: what is scored, how it is normalised, label smoothing and z-loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import losses
from instruct_jax.data import transforms


def _decoder_example():
  return transforms.decoder_features([11, 12, 13, 14], [21, 22], bos_id=2, eos_id=1, max_len=16)


def _loss(logits, targets, weights, segs=None, normalization="tokens", **kw):
  scale, denom = losses.token_scale_and_denominator(weights, segs, normalization)
  return losses.loss_and_metrics(logits, targets, weights, scale_BL=scale, denominator=denom, **kw)


def test_instruction_targets_do_not_change_loss_and_get_zero_gradient():
  ex = _decoder_example()
  targets = jnp.asarray(ex["decoder_target_tokens"])[None]
  weights = jnp.asarray(ex["decoder_loss_weights"])[None]
  n_instr = 4
  np.testing.assert_array_equal(weights[0], [0, 0, 0, 0, 1, 1, 1])
  logits = jax.random.normal(jax.random.key(0), (1, targets.shape[1], 64))
  loss, _ = _loss(logits, targets, weights)
  changed = targets.at[0, :n_instr].set(jnp.array([40, 41, 42, 43]))
  loss_changed, _ = _loss(logits, changed, weights)
  assert float(loss) == float(loss_changed)
  grad = jax.grad(lambda lg: _loss(lg, targets, weights)[0])(logits)
  assert np.all(np.asarray(grad[0, :n_instr]) == 0.0)  # exactly zero, not just small
  assert np.all(np.abs(np.asarray(grad[0, n_instr:])).sum(-1) > 0)


def test_end_of_text_is_scored():
  ex = _decoder_example()
  targets = jnp.asarray(ex["decoder_target_tokens"])[None]
  weights = jnp.asarray(ex["decoder_loss_weights"])[None]
  assert int(targets[0, -1]) == 1 and float(weights[0, -1]) == 1.0
  logits = jax.random.normal(jax.random.key(1), (1, targets.shape[1], 64))
  base, _ = _loss(logits, targets, weights)
  other_stop, _ = _loss(logits, targets.at[0, -1].set(5), weights)
  assert float(base) != float(other_stop)


def test_train_on_inputs_scores_instruction():
  ex = transforms.decoder_features([11, 12, 13], [21], bos_id=2, eos_id=1, max_len=16, train_on_inputs=True)
  np.testing.assert_array_equal(ex["decoder_loss_weights"], [1, 1, 1, 1, 1])


def test_token_mean_is_exact_global_mean():
  logits = jax.random.normal(jax.random.key(2), (3, 5, 16))
  targets = jax.random.randint(jax.random.key(3), (3, 5), 0, 16)
  weights = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], jnp.float32)
  loss, sums = _loss(logits, targets, weights)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, jnp.sum(ce * weights) / 8, rtol=1e-6)
  assert float(sums["weight_sum"]) == 8.0


def test_example_normalisation_counts_packed_segments_not_rows():
  logits = jax.random.normal(jax.random.key(4), (1, 8, 16))
  targets = jax.random.randint(jax.random.key(5), (1, 8), 0, 16)
  # One row holding three examples of 3, 1 and 2 scored tokens, plus padding.
  segs = jnp.array([[1, 1, 1, 2, 3, 3, 0, 0]])
  weights = (segs > 0).astype(jnp.float32)
  loss, _ = _loss(logits, targets, weights, segs, normalization="examples")
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[0, :, 0]
  expected = (ce[0:3].mean() + ce[3] + ce[4:6].mean()) / 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_sum_normalisation():
  logits = jax.random.normal(jax.random.key(6), (2, 4, 8))
  targets = jnp.zeros((2, 4), jnp.int32)
  weights = jnp.ones((2, 4))
  loss_sum, sums = _loss(logits, targets, weights, normalization="sum")
  np.testing.assert_allclose(loss_sum, sums["nll_sum"], rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_matches_explicit_soft_targets(smoothing):
  V = 12
  logits = jax.random.normal(jax.random.key(7), (2, 3, V))
  targets = jax.random.randint(jax.random.key(8), (2, 3), 0, V)
  ce, _ = losses.cross_entropy(logits, targets, label_smoothing=smoothing)
  soft = jax.nn.one_hot(targets, V) * (1 - smoothing) + (1 - jax.nn.one_hot(targets, V)) * smoothing / (V - 1)
  explicit = -jnp.sum(soft * jax.nn.log_softmax(logits), -1) + jnp.sum(soft * jnp.log(soft), -1)
  np.testing.assert_allclose(ce, explicit, rtol=1e-5, atol=1e-6)
  _, nll = losses.cross_entropy(logits, targets, label_smoothing=smoothing)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0],
                             rtol=1e-5)  # the metric NLL is the plain one
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.cross_entropy(logits, targets, label_smoothing=1.0)
  # A prediction equal to the smoothed distribution scores zero.
  ce_best, _ = losses.cross_entropy(jnp.log(soft), targets, label_smoothing=smoothing)
  np.testing.assert_allclose(ce_best, 0.0, atol=1e-5)


def test_z_loss_adds_squared_log_partition():
  logits = jax.random.normal(jax.random.key(9), (1, 4, 8)) + 3.0
  targets = jnp.zeros((1, 4), jnp.int32)
  plain, _ = losses.cross_entropy(logits, targets)
  with_z, nll = losses.cross_entropy(logits, targets, z_loss=1e-2)
  np.testing.assert_allclose(with_z - plain, 1e-2 * jax.nn.logsumexp(logits, -1) ** 2, rtol=1e-5)
  np.testing.assert_allclose(nll, plain, rtol=1e-6)  # the metric NLL leaves the z-loss out


def test_accuracy_counts_only_scored_tokens():
  logits = jax.nn.one_hot(jnp.array([[3, 4, 5]]), 8) * 10
  targets = jnp.array([[3, 0, 5]])
  weights = jnp.array([[0.0, 1.0, 1.0]])
  _, sums = _loss(logits, targets, weights)
  assert float(sums["correct"]) == 1.0 and float(sums["weight_sum"]) == 2.0
