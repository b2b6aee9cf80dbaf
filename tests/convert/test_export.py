"""Export to a Hugging Face directory that transformers loads with the same logits."""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from instruct_jax import step
from instruct_jax import convert
from instruct_jax.models import build, decoder, layers, t5
from tests.convert import hf_models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

AUTO = {"encoder_decoder": transformers.AutoModelForSeq2SeqLM, "decoder": transformers.AutoModelForCausalLM}


def _reload(path, kind):
  return AUTO[kind].from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", ["t5_flan", "t5_scaled", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_import_export_reload_gives_the_original_logits(name, imported, tmp_path):
  pretrained, _, model = imported(name)
  files = convert.export_hf(pretrained.config, pretrained.params, tmp_path, hf_base=pretrained.hf_config)
  assert files == ["config.json", "model.safetensors"]
  kind = hf_models.KINDS[name]
  reloaded = _reload(tmp_path, kind)
  assert type(reloaded) is type(model)  # Mistral stays Mistral, T5 stays T5, Gemma 3 stays Gemma 3
  with safe_open(tmp_path / "model.safetensors", "np") as exported:  # the tensors themselves, bit for bit
    state = model.state_dict()
    for k in exported.keys():
      np.testing.assert_array_equal(exported.get_tensor(k), state[k].numpy())
    written = {state[k].data_ptr() for k in exported.keys()}
    assert all(state[k].data_ptr() in written for k in state)  # the rest are tied copies (T5's embed_tokens)
  b = hf_models.batch(kind, [12, 7, 3], [9, 4, 12], seed=5)
  mask = hf_models.target_mask(b)
  np.testing.assert_allclose(hf_models.hf_logits(reloaded, b)[mask], hf_models.hf_logits(model, b)[mask],
                             atol=1e-5, rtol=0)


def _random_params(config, seed: int):
  """Fresh random parameters of the model's shapes (numpy, no init compile), at scales where all count.

  Kernels are normal with std 1/sqrt(fan in) (T5's query also 1/sqrt(head width), as T5 folds it into the
  init); embeddings and position tables std 1; norm scales 1 + 0.3 * normal.
  """
  abstract = {"params": nn.meta.unbox(build.Model(config).param_shapes())}
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    z = rng.standard_normal(x.shape).astype(np.float32)
    if "scale" in name:
      return 1.0 + 0.3 * z
    if "embedding" in name:
      return z
    fan_in = x.shape[-3] * x.shape[-2] if "'out'" in name else x.shape[-3 if "attention" in name else -2]
    if "query" in name and config.kind == "encoder_decoder":
      fan_in *= config.head_dim
    return z / np.sqrt(fan_in)

  return jax.tree_util.tree_map_with_path(draw, abstract["params"])


CONFIGS = {
    "t5_scanned": t5.config_for("tiny", scan_layers=True, num_decoder_layers=3),
    "decoder_llama3": decoder.config_for("tiny", rope_theta=500.0,
                                         rope_scaling=layers.RopeScaling(factor=4.0, original_max_position=16)),
    "decoder_untied_scanned": decoder.config_for("tiny", tie_embeddings=False, scan_layers=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_params_export_sharded_and_reload(name, tmp_path):
  config = CONFIGS[name]
  params = _random_params(config, seed=1)
  files = convert.export_hf(config, params, tmp_path, max_shard_bytes=100_000)
  assert "model.safetensors.index.json" in files and len(files) > 3  # several shards + index + config
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == {f for f in files if f.startswith("model-")}
  kind = config.kind
  reloaded = _reload(tmp_path, kind)
  b = hf_models.batch(kind, [12, 7, 3], [9, 4, 12], seed=6)
  b = {k: np.minimum(v, config.vocab_size - 1) for k, v in b.items()}
  mask = hf_models.target_mask(b)
  ours = np.asarray(jax.jit(functools.partial(step.forward, build.Model(config)))(params, b))
  ref = hf_models.hf_logits(reloaded, b)
  assert np.abs(ref).max() > 1.0  # logits big enough for the comparison to mean something
  np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


def test_bfloat16_export(tmp_path):
  config = CONFIGS["decoder_llama3"]
  params = _random_params(config, seed=2)
  convert.export_hf(config, params, tmp_path, dtype=jnp.bfloat16)
  with safe_open(tmp_path / "model.safetensors", framework="numpy") as f:
    assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
  assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
  b = hf_models.batch("decoder", [12, 7, 3], seed=7)
  mask = hf_models.target_mask(b)
  ours = np.asarray(jax.jit(functools.partial(step.forward, build.Model(config)))(rounded, b))
  np.testing.assert_allclose(ours[mask], hf_models.hf_logits(_reload(tmp_path, "decoder"), b)[mask], atol=1e-4,
                             rtol=0)
