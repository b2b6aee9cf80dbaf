"""Packed rows give the same loss and gradients as one example per row, for both model kinds."""
import jax
import numpy as np
import pytest

from instruct_jax import losses, step
from tests import helpers


def _loss_and_grads(model, params, batch, normalization):
  def loss_fn(p):
    logits = step.forward(model, p, batch)
    scale, denom = losses.token_scale_and_denominator(batch["decoder_loss_weights"],
                                                      batch["decoder_segment_ids"], normalization)
    return losses.loss_and_metrics(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                   scale_BL=scale, denominator=denom)[0]
  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("kind", helpers.KINDS)
@pytest.mark.parametrize("normalization", ["tokens", pytest.param("examples", marks=pytest.mark.slow)])
def test_packed_equals_unpacked(kind, normalization):
  model = helpers.tiny_model(kind)
  params = helpers.init_params(model)
  examples = helpers.random_examples(kind, 12, seed=1)
  packed = helpers.concat_batches(helpers.make_batches(kind, examples, pack=True, batch_size=4, inputs_len=48,
                                                       targets_len=24))
  padded = helpers.concat_batches(helpers.make_batches(kind, examples, pack=False, batch_size=12, inputs_len=12,
                                                       targets_len=8))
  # Packing really put several examples in a row, and every example made it in.
  assert int(packed["decoder_segment_ids"].max()) >= 3
  assert float(packed["decoder_loss_weights"].sum()) == float(padded["decoder_loss_weights"].sum())
  loss_p, grads_p = _loss_and_grads(model, params, packed, normalization)
  loss_u, grads_u = _loss_and_grads(model, params, padded, normalization)
  assert helpers.rel_err(loss_p, loss_u) < 1e-5
  assert helpers.max_tree_rel_err(grads_p, grads_u) < 1e-4


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_attention_does_not_cross_segments(kind):
  """Changing one packed example leaves the logits of its row-mates unchanged."""
  model = helpers.tiny_model(kind)
  params = helpers.init_params(model)
  examples = helpers.random_examples(kind, 3, seed=2)
  batch = helpers.make_batches(kind, examples, pack=True, batch_size=1, inputs_len=48, targets_len=24)[0]
  assert int(batch["decoder_segment_ids"].max()) == 3
  changed = dict(batch)
  seg = np.asarray(batch["decoder_segment_ids"])
  token_key = "encoder_input_tokens" if kind == "encoder_decoder" else "decoder_input_tokens"
  seg_key = "encoder_segment_ids" if kind == "encoder_decoder" else "decoder_segment_ids"
  tokens = np.asarray(batch[token_key]).copy()
  tokens[np.asarray(batch[seg_key]) == 2] = 7
  changed[token_key] = tokens
  a = np.asarray(step.forward(model, params, batch))
  b = np.asarray(step.forward(model, params, changed))
  others = (seg == 1) | (seg == 3)
  np.testing.assert_allclose(a[others], b[others], rtol=1e-5, atol=1e-5)
  assert np.abs(a[seg == 2] - b[seg == 2]).max() > 1e-3


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_scan_and_remat_compute_the_same_function(kind):
  base = helpers.tiny_model(kind)
  params = helpers.init_params(base)
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 4), pack=True,
                                                      batch_size=2, inputs_len=32, targets_len=16))
  ref_loss, ref_grads = _loss_and_grads(base, params, batch, "tokens")
  stacked = _stack_layers(params)
  scanned = helpers.tiny_model(kind, scan_layers=True, remat_policy="full")
  loss, grads = _loss_and_grads(scanned, stacked, batch, "tokens")
  assert helpers.rel_err(loss, ref_loss) < 1e-6
  assert helpers.max_tree_rel_err(grads, _stack_layers(ref_grads)) < 1e-5


def _stack_layers(tree):
  """Unrolled params (layer_0, layer_1, ...) -> scanned params (one `layers` subtree, stacked)."""
  if not isinstance(tree, dict):
    return tree
  layer_keys = sorted((k for k in tree if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
  out = {k: _stack_layers(v) for k, v in tree.items() if not k.startswith("layer_")}
  if layer_keys:
    out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *[tree[k] for k in layer_keys])
  return out
