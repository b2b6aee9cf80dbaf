"""LoRA: only the adapters train (the base is bitwise unchanged and holds no optimizer state), step 0 is the base
model, adapters shard by their logical axes, dropout acts in training only, and bad settings name their key."""
import dataclasses
import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from instruct_jax import configs, convert, objectives, optim, sharding, step
from instruct_jax.models import build, lora
from tests import helpers

LORA = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets=("query", "value", "out", "wo"))
ONE_LAYER = {"decoder": dict(num_layers=1), "encoder_decoder": dict(num_encoder_layers=1, num_decoder_layers=1)}


def test_only_adapters_change_and_the_optimizer_holds_no_base_state():
  """The step is the same code for both kinds (T5's adapters are checked below and in the PEFT parity test)."""
  mesh, rules = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), sharding.get_rules("fsdp_tensor")
  kind = "decoder"
  model = helpers.tiny_model(kind, lora=LORA, **ONE_LAYER[kind])
  ocfg = optim.OptimConfig(learning_rate=1e-2, schedule="constant")
  tx = optim.make_optimizer(ocfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  adapters = model.trainable(state.params)
  n_adapter = sum(x.size for x in jax.tree.leaves(adapters))
  n_base = sum(x.size for x in jax.tree.leaves(lora.base(state.params)))
  assert 0 < n_adapter < n_base / 10
  assert sum(x.size for x in jax.tree.leaves(state.opt_state)) <= 2 * n_adapter + 8  # Adam's moments, a count
  base_shapes = {x.shape for x in jax.tree.leaves(lora.base(state.params)) if x.ndim > 1}
  assert not base_shapes & {x.shape for x in jax.tree.leaves(state.opt_state)}

  # Adapters shard by the kernel's logical axes (embed -> fsdp, heads -> tensor); the rank is never split. A
  # scanned stack stacks them (and their Adam moments) on its leading "layers" axis.
  for scan, layer in ((False, "layer_0"), (True, "layers")):
    scanned = helpers.tiny_model(kind, lora=LORA, scan_layers=scan)
    abstract, sh = step.abstract_train_state(scanned, tx, mesh, rules, jax.random.key(0))
    lead = (None,) if scan else ()
    query = sh.params["layers"][layer]["attention"]["query"]
    assert query["lora_a"].spec == P(*lead, "fsdp", None) and query["lora_b"].spec == P(*lead, None, "tensor", None)
    mu = abstract.opt_state[1][0].mu["layers"][layer]["attention"]["query"]  # (clip, adamw (scale_by_adam, ...))
    assert mu["lora_a"].shape == ((2,) if scan else ()) + (64, 4) and set(mu) == {"lora_a", "lora_b"}
    assert sum(x.size for x in jax.tree.leaves(abstract.opt_state)) <= 2 * sum(
        x.size for x in jax.tree.leaves(scanned.trainable(abstract.params))) + 8

  before = jax.device_get(state.params)  # the step donates the state
  train = step.jit_train_step(model, tx, objectives.SFT(), optim.make_schedule(ocfg), mesh, rules, state_sh)
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 8, seed=3), pack=False,
                                                      batch_size=8, inputs_len=12, targets_len=10))
  for i in range(2):  # B moves in step 1 (A's gradient is zero while B is), A in step 2
    state, metrics = train(state, batch, jax.random.key(i))
  after = jax.device_get(state.params)
  assert np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, lora.base(after), lora.base(before))
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), model.trainable(after), model.trainable(before))
  assert all(jax.tree.leaves(changed)), changed


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_step_zero_is_the_base_model_and_dropout_acts_in_training_only(kind):
  model = helpers.tiny_model(kind, lora=LORA, **ONE_LAYER[kind])
  base_model = helpers.tiny_model(kind, **ONE_LAYER[kind])
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0)))
  b = model.dummy_batch(6)
  fwd = jax.jit(lambda m, p, rng=None: m.apply(p, b, dropout_rng=rng), static_argnums=0)
  np.testing.assert_array_equal(np.asarray(fwd(model, params)), np.asarray(fwd(base_model, lora.base(params))))
  moved = model.with_trainable(params, jax.tree.map(lambda x: x + 0.1, model.trainable(params)))
  evaluated = np.asarray(fwd(model, moved))
  assert np.abs(evaluated - np.asarray(fwd(model, params))).max() > 1e-3  # the moved adapters matter
  assert np.abs(np.asarray(fwd(model, moved, jax.random.key(1))) - evaluated).max() > 1e-4  # dropout in training
  merged_model, merged = model.merged(moved)  # folded into the kernels: the same function, no adapters
  assert merged_model.config.lora is None and merged_model.config == base_model.config
  assert jax.tree.structure(merged) == jax.tree.structure(lora.base(params))
  np.testing.assert_allclose(np.asarray(fwd(merged_model, merged)), evaluated, atol=1e-4)


def _section(**lora_keys):
  c = configs.base()
  c.model.kind, c.model.size = "decoder", "tiny"
  for k, v in lora_keys.items():
    c.model.lora[k] = v
  return c.model


def test_config_section_builds_lora_and_names_bad_keys():
  model = build.from_section(_section(rank=8, alpha=32.0, targets=("query", "wi_0")))
  assert model.config.lora == lora.LoraConfig(8, 32.0, 0.0, ("query", "wi_0"))
  assert model.config.lora.scale == 4.0
  assert build.from_section(_section()).config.lora is None  # rank 0: off
  blob = build.config_to_json(model.config)
  assert build.config_from_json(blob, "x") == model.config
  cases = [(dict(rank=-1), r"config.model.lora.rank=-1"), (dict(rank=4, alpha=0.0), r"config.model.lora.alpha=0.0"),
           (dict(rank=4, dropout=1.0), r"config.model.lora.dropout=1.0"),
           (dict(rank=4, targets=("q_proj",)), r"config.model.lora.targets: unknown projection 'q_proj'.*'query'"),
           (dict(rank=4, targets=("lm_head",)), r"unknown projection 'lm_head'"),
           (dict(rank=4, init_from="/nonexistent"), r"config.model.lora.init_from")]
  for keys, match in cases:
    with pytest.raises(build.ModelConfigError, match=match):
      build.from_section(_section(**keys))
  with pytest.raises(build.ModelConfigError, match=r"--config.model.lora.rank=-1"):
    build.from_section(_section(rank=-1), flag_keys=("model.lora.rank",))
  adapter = lora.LoraConfig(4, 8.0, 0.3, ("query",))
  assert build.from_section(_section(dropout=0.05), adapter=adapter).config.lora == dataclasses.replace(
      adapter, dropout=0.05)  # rank 0: the adapter's rank, alpha and targets
  with pytest.raises(build.ModelConfigError, match=r"config.model.lora.rank=8 contradicts"):
    build.from_section(_section(rank=8), adapter=adapter)
  assert isinstance(configs.base().model.lora, ml_collections.ConfigDict)
  # One order for targets (a flag's order or repeats never make two configs of one adapter).
  assert lora.LoraConfig(4, targets=("value", "query", "value")).targets == ("query", "value")


def test_adafactor_parameter_scaling_with_lora_is_refused_naming_the_key():
  from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  config = configs.base()
  config.model.kind, config.model.size, config.model.lora.rank = "decoder", "tiny", 4
  config.optim.optimizer = "adafactor"
  model = build.from_section(config.model)
  with pytest.raises(configs.ConfigError, match=r"^config.optim.adafactor_param_scale=True with LoRA"):
    plan_lib.check_lora_optimizer(config, model)
  config.optim.adafactor_param_scale = False
  plan_lib.check_lora_optimizer(config, model)


def test_peft_adapter_config_is_read_in_our_names_and_what_we_cannot_compute_is_refused(tmp_path):
  mesh, rules = sharding.make_mesh({"fsdp": -1}), sharding.get_rules("fsdp")
  model = helpers.tiny_model("decoder", lora=lora.LoraConfig(4, 8.0, 0.0, ("query", "value")))
  assert convert.peft.adapter_maps(model.config)[("layers", "layer_0", "attention", "query", "lora_a")].names == (
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",)
  blob = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["v_proj", "q_proj"],
          "bias": "none", "use_rslora": False, "rank_pattern": {}}
  file = tmp_path / "adapter_config.json"
  file.write_text(json.dumps(blob))
  assert convert.read_peft_config(tmp_path, "decoder") == model.config.lora
  cases = [({"use_dora": True}, "use_dora=True is not supported"), ({"bias": "all"}, "bias='all' is not supported"),
           ({"target_modules": ["q_proj", "lm_head"]}, r"target_modules \['lm_head'\]"),
           ({"target_modules": ".*proj"}, "regex targets are not supported"), ({"peft_type": "IA3"}, "only LORA")]
  for change, match in cases:
    file.write_text(json.dumps({**blob, **change}))
    with pytest.raises(convert.ConversionError, match=match):
      convert.read_peft_config(tmp_path, "decoder")
  file.write_text(json.dumps({**blob, "r": 8}))
  with pytest.raises(convert.ConversionError, match="does not fit"):
    convert.import_peft(tmp_path, model.config, mesh, rules)
