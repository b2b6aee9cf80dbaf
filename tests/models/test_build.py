"""The model factory: one place that knows the model kinds; layouts, config files and prompt conventions."""
import pathlib
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from instruct_jax import step
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import build, decoder, layers, t5
from tests import helpers

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "instruct_jax"


def test_nothing_outside_the_factory_asks_which_kind_a_model_is():
  asks = re.compile(r"isinstance\([^)]*\b(T5|Decoder|T5Config|DecoderConfig)\b|\b(model|config)\.kind\s*(==|!=| in\b)")
  offenders = [f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py") if p.name != "build.py"
               for n, line in enumerate(p.read_text().splitlines(), 1) if asks.search(line)]
  assert offenders == []


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_factory_gives_module_features_and_padding_side(kind):
  model = helpers.tiny_model(kind)
  assert model.kind == kind and isinstance(model.module, t5.T5 if kind == "encoder_decoder" else decoder.Decoder)
  assert model.input_features == (t5.INPUT_FEATURES if kind == "encoder_decoder" else decoder.INPUT_FEATURES)
  assert model.left_pad_prompts == (kind == "decoder")
  assert model.num_params() == sum(x.size for x in jax.tree.leaves(nn.meta.unbox(model.param_shapes())))
  assert hash(model) == hash(helpers.tiny_model(kind))  # a static jit argument


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tokenizer_lib.train(["sort the numbers 3 1 2", "reverse the list a b c"] * 50, vocab_size=60,
                             out_dir=tmp_path_factory.mktemp("spm"))


def test_prompts_are_tokenized_as_training_rows_begin(tokenizer):
  ids = tokenizer.encode("sort the numbers").tolist()
  assert helpers.tiny_model("encoder_decoder").prompt_ids(tokenizer, "sort the numbers", 64) == ids + [tokenizer.eos_id]
  assert helpers.tiny_model("decoder").prompt_ids(tokenizer, "sort the numbers", 64) == [tokenizer.bos_id] + ids
  # Cut as training cuts: T5 keeps the beginning and its end-of-text; the decoder keeps the beginning.
  assert helpers.tiny_model("encoder_decoder").prompt_ids(tokenizer, "sort the numbers", 2) == ids[:1] + [1]
  assert helpers.tiny_model("decoder").prompt_ids(tokenizer, "sort the numbers", 2) == [tokenizer.bos_id] + ids[:2]


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_relayout_between_unrolled_and_scanned_keeps_the_function(kind):
  unrolled = helpers.tiny_model(kind)
  scanned = helpers.tiny_model(kind, scan_layers=True)
  params = helpers.init_params(unrolled, seed=4)
  stacked = build.relayout(params, unrolled.config, scan_layers=True)
  assert jax.tree.structure(stacked) == jax.tree.structure(nn.meta.unbox(scanned.param_shapes()))
  back = build.relayout(stacked, scanned.config, scan_layers=False)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back, params))
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 6), pack=True,
                                                      batch_size=3, inputs_len=32, targets_len=16))
  np.testing.assert_allclose(step.forward(scanned, stacked, batch), step.forward(unrolled, params, batch),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [
    t5.config_for("small", scan_layers=True, dropout_rate=0.1),
    decoder.config_for("1b"),
    decoder.config_for("tiny", sliding_window=4096, rope_scaling=layers.RopeScaling(factor=4.0)),
], ids=["t5", "llama3", "mistral"])
def test_model_config_json_round_trip(config):
  blob = build.config_to_json(config)
  assert build.config_from_json(blob, "model_config.json") == config
  with pytest.raises(build.ModelConfigError, match=r"model_config.json: kind 'gpt'"):
    build.config_from_json({**blob, "kind": "gpt"}, "model_config.json")
