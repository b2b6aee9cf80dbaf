"""Meshes, the rules table, born-sharded parameters, and numerics that do not depend on the mesh."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from instruct_jax import objectives, optim, sharding, step
from tests import helpers

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]


def _mesh(shape):
  n = int(np.prod(shape))
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), jax.devices()[:n])


def test_make_mesh_infers_and_rejects():
  assert dict(sharding.make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh({"data": 4, "fsdp": 4})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.make_mesh({"model": 2})


def test_rules_reject_two_dims_on_one_mesh_axis():
  bad = {**sharding.get_rules("fsdp"), "mlp": "fsdp"}
  with pytest.raises(ValueError, match=r"'embed'.*'mlp'.*mesh axis 'fsdp'"):
    sharding.logical_to_mesh(("embed", "mlp"), bad, name="wi_0/kernel")
  model = helpers.tiny_model("decoder")
  boxed = model.param_shapes()
  with pytest.raises(ValueError, match="mlp/wi_0/kernel"):
    sharding.param_shardings(boxed, _mesh((2, 2, 2)), bad)


def test_a_dimension_the_mesh_does_not_divide_is_a_user_error_naming_the_keys():
  # A checkpoint's vocabulary grown by two chat tokens (32000 -> 32002 rows, here 512 -> 514) over tensor=4.
  boxed = helpers.tiny_model("decoder", vocab_size=514, num_kv_heads=4).param_shapes()
  with pytest.raises(sharding.MeshError, match=r"embedding: dimension 0 of size 514 is not divisible by the 4 "
                     r"devices of mesh axes 'tensor'; choose config.mesh sizes.*config.sharding"):
    sharding.param_shardings(boxed, _mesh((2, 1, 4)), sharding.get_rules("fsdp_tensor"))
  sharding.param_shardings(boxed, _mesh((2, 4, 1)), sharding.get_rules("fsdp_tensor"))  # tensor=1 divides


def test_unknown_preset_and_axis():
  with pytest.raises(ValueError, match="unknown sharding preset"):
    sharding.get_rules("zero9")
  with pytest.raises(ValueError, match="no rule"):
    sharding.logical_to_mesh(("nonsense",), sharding.get_rules("fsdp"))


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_parameters_are_born_sharded_as_the_rules_say(kind):
  model = helpers.tiny_model(kind)
  mesh = _mesh((2, 2, 2))
  rules = sharding.get_rules("fsdp_tensor")
  tx = optim.make_optimizer(optim.OptimConfig(optimizer="adamw"))
  state, _ = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  params = state.params
  mlp = params["layers"]["layer_0"]["mlp"] if kind == "decoder" else params["encoder"]["stack"]["layer_0"]["mlp"]
  attn = (params["layers"]["layer_0"]["attention"] if kind == "decoder"
          else params["encoder"]["stack"]["layer_0"]["attention"])
  assert mlp["wi_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert mlp["wo"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert attn["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert params["token_embedder"]["embedding"].sharding.spec == P("tensor", "fsdp")
  # Each device holds a quarter of wi_0 (fsdp x tensor = 4 shards, replicated over data).
  kernel = mlp["wi_0"]["kernel"]
  assert kernel.addressable_shards[0].data.size * 4 == kernel.size
  # Adam moments follow their parameters.
  mu = optax.tree_utils.tree_get(state.opt_state, "mu")
  mu_mlp = mu["layers"]["layer_0"]["mlp"] if kind == "decoder" else mu["encoder"]["stack"]["layer_0"]["mlp"]
  assert mu_mlp["wi_0"]["kernel"].sharding.spec == P("fsdp", "tensor")


def _loss_and_grads_on(mesh_shape, kind, params_host, batch_host, preset):
  mesh = _mesh(mesh_shape)
  rules = sharding.get_rules(preset)
  model = helpers.tiny_model(kind)
  boxed = model.param_shapes()
  p_sh = sharding.param_shardings(boxed, mesh, rules)
  params = jax.device_put(params_host, p_sh)
  batch = jax.device_put(batch_host, sharding.batch_sharding(mesh, rules))
  loss_cfg = objectives.SFT()

  def fn(p, b):
    with sharding.activation_sharding(mesh, rules):
      from instruct_jax import losses
      logits = step.forward(model, p, b)
      scale, denom = losses.token_scale_and_denominator(b["decoder_loss_weights"], b["decoder_segment_ids"],
                                                        loss_cfg.normalization)
      return losses.loss_and_metrics(logits, b["decoder_target_tokens"], b["decoder_loss_weights"],
                                     scale_BL=scale, denominator=denom)[0]

  loss, grads = jax.jit(jax.value_and_grad(fn), in_shardings=(p_sh, sharding.batch_sharding(mesh, rules)))(
      params, batch)
  return jax.device_get(loss), jax.device_get(grads)


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_loss_and_gradients_agree_across_meshes(kind):
  model = helpers.tiny_model(kind)
  params = helpers.init_params(model)
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 32, seed=3), pack=True,
                                                      batch_size=8, inputs_len=16, targets_len=12))
  batch = {k: v[:8] for k, v in batch.items()}
  assert batch["decoder_target_tokens"].shape[0] == 8
  ref_loss, ref_grads = _loss_and_grads_on((1, 1, 1), kind, params, batch, "data_parallel")
  for shape in MESHES[1:]:
    preset = "fsdp_tensor" if shape[2] > 1 else "fsdp"
    loss, grads = _loss_and_grads_on(shape, kind, params, batch, preset)
    assert helpers.rel_err(loss, ref_loss) < 1e-5, shape
    assert helpers.max_tree_rel_err(grads, ref_grads) < 1e-5, shape
