"""The jitted train step: gradient accumulation is exact, schedules and optimizers are as configured."""
import jax
import numpy as np
import pytest

from instruct_jax import objectives, optim, sharding, step
from tests import helpers


def _run_step(kind, batch, num_microbatches, optimizer="adamw", normalization="tokens", metric_groups=()):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.get_rules("fsdp_tensor")
  model = helpers.tiny_model(kind)
  # eps 1e-3 keeps Adam's first update (about g / |g|) from amplifying float noise in near-zero gradients.
  ocfg = optim.OptimConfig(optimizer=optimizer, learning_rate=1e-2, schedule="constant", eps=1e-3)
  tx = optim.make_optimizer(ocfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  train = step.jit_train_step(model, tx, objectives.SFT(normalization=normalization, groups=tuple(metric_groups)),
                              optim.make_schedule(ocfg), mesh, rules, state_sh, num_microbatches=num_microbatches)
  state, metrics = train(state, batch, jax.random.key(1))
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
@pytest.mark.parametrize("normalization", ["tokens", pytest.param("examples", marks=pytest.mark.slow)])
def test_microbatches_give_the_same_update_as_one_batch(kind, normalization):
  examples = helpers.random_examples(kind, 16, seed=4, max_out=9)
  batch = helpers.concat_batches(helpers.make_batches(kind, examples, pack=False, batch_size=16, inputs_len=12,
                                                      targets_len=10))
  # Microbatch j gets rows j, j+4, ...: make sure they hold different numbers of scored tokens.
  per_micro = np.asarray(batch["decoder_loss_weights"]).sum(1).reshape(4, 4).sum(0)
  assert len(set(per_micro.tolist())) > 1
  params_1, m1 = _run_step(kind, batch, 1, normalization=normalization)
  params_4, m4 = _run_step(kind, batch, 4, normalization=normalization)
  assert helpers.rel_err(m4["loss"], m1["loss"]) < 1e-5
  assert helpers.rel_err(m4["grad_norm"], m1["grad_norm"]) < 1e-5
  assert helpers.max_tree_rel_err(params_4, params_1) < 1e-5
  assert float(m4["weight_sum"]) == float(np.asarray(batch["decoder_loss_weights"]).sum())


@pytest.mark.slow  # ~12 s; test_microbatches_give_the_same_update_as_one_batch covers microbatching by default
def test_per_task_and_per_template_sums_add_up_and_survive_microbatching():
  kind = "decoder"
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 16, seed=5), pack=False,
                                                      batch_size=16, inputs_len=12, targets_len=10))
  rows, length = batch["decoder_target_tokens"].shape
  task = np.repeat((np.arange(rows) % 3)[:, None], length, axis=1).astype(np.int32)
  batch = {**batch, "task_index": task, "template_id": (task + 1) % 2}
  groups = (("task", "task_index", 3), ("template", "template_id", 2))
  _, m1 = _run_step(kind, batch, 1, metric_groups=groups)
  _, m4 = _run_step(kind, batch, 4, metric_groups=groups)
  w = np.asarray(batch["decoder_loss_weights"])
  np.testing.assert_allclose(m1["task_weight"], [w[task[:, 0] == g].sum() for g in range(3)])
  for name in ("task", "template"):
    assert m1[f"{name}_nll"].shape == (3 if name == "task" else 2,)
    assert float(m1[f"{name}_nll"].sum()) == pytest.approx(float(m1["nll_sum"]), rel=1e-5)
    np.testing.assert_allclose(m4[f"{name}_nll"], m1[f"{name}_nll"], rtol=1e-5)
    np.testing.assert_allclose(m4[f"{name}_weight"], m1[f"{name}_weight"])


def test_adafactor_step_lowers_the_loss():
  kind = "decoder"
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 8), pack=False,
                                                      batch_size=8, inputs_len=12, targets_len=8))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  rules = sharding.get_rules("fsdp")
  model = helpers.tiny_model(kind)
  ocfg = optim.OptimConfig(optimizer="adafactor", learning_rate=1e-2, schedule="constant")
  tx = optim.make_optimizer(ocfg)
  state, sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  train = step.jit_train_step(model, tx, objectives.SFT(), optim.make_schedule(ocfg), mesh, rules, sh)
  losses = []
  for _ in range(5):
    state, metrics = train(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1, losses
  assert int(state.step) == 5


def test_schedules():
  warm = optim.make_schedule(optim.OptimConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10,
                                               total_steps=110))
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(60), warm(110)], [0, 0.5, 1, 0.5, 0], atol=1e-6)
  rsqrt = optim.make_schedule(optim.OptimConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=100))
  np.testing.assert_allclose([rsqrt(0), rsqrt(50), rsqrt(100), rsqrt(400)], [1.0, 1.0, 1.0, 0.5], rtol=1e-6)
  const = optim.make_schedule(optim.OptimConfig(learning_rate=0.3, schedule="constant"))
  assert float(const(1000)) == pytest.approx(0.3)
  linear = optim.make_schedule(optim.OptimConfig(learning_rate=1.0, schedule="linear", warmup_steps=10,
                                                 total_steps=110, end_lr_fraction=0.0))
  np.testing.assert_allclose([linear(5), linear(10), linear(60), linear(110)], [0.5, 1, 0.5, 0], atol=1e-6)
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule(optim.OptimConfig(schedule="step"))
  with pytest.raises(ValueError, match="unknown optimizer config fields"):
    optim.OptimConfig.from_config({"learning_rat": 1.0})


def test_weight_decay_skips_norm_scales():
  params = {"mlp": {"kernel": np.ones((2, 2), np.float32)}, "pre_mlp_norm": {"scale": np.ones((2,), np.float32)}}
  tx = optim.make_optimizer(optim.OptimConfig(learning_rate=0.0 + 1e-30, weight_decay=0.5, schedule="constant",
                                              grad_clip_norm=0.0))
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(updates["pre_mlp_norm"]["scale"] == 0)
  assert np.all(updates["mlp"]["kernel"] != 0)
