"""LoRA adapters exported as PEFT directories: `peft.PeftModel.from_pretrained` gives our logits; import round trips.

A tiny transformers model is imported with the existing converters, given random non-zero adapters on every
projection, exported with `convert.export_peft`, and loaded by PEFT onto a fresh copy of the same model.
"""
import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from instruct_jax import convert, step
from instruct_jax.models import build, lora
from tests.convert import hf_models

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ATOL = 1e-4


def _adapted(pretrained, targets, seed=0):
  """(model, params): the imported base with random adapters (std 0.1) of rank 4 (alpha 8) on `targets`."""
  cfg = dataclasses.replace(pretrained.config, lora=lora.LoraConfig(rank=4, alpha=8.0, targets=targets))
  model = build.Model(cfg)
  params = lora.overlay_base(nn.meta.unbox(model.init(jax.random.key(0))), pretrained.params)
  adapters = model.trainable(params)
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(adapters)))
  leaves = [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(adapters))]
  return model, model.with_trainable(params, jax.tree.unflatten(jax.tree.structure(adapters), leaves))


@pytest.mark.parametrize("name,scan", [("llama3", False), pytest.param("llama3", True, marks=pytest.mark.slow),
                                       pytest.param("t5_flan", False, marks=pytest.mark.slow)])
def test_peft_loads_our_adapters_with_our_logits_and_import_round_trips(name, scan, saved, mesh_rules, tmp_path):
  path, hf_model = saved(name)
  pretrained = convert.import_hf(path, *mesh_rules, scan_layers=scan)
  model, params = _adapted(pretrained, lora.TARGETS)
  files = convert.export_peft(model.config, params, tmp_path / "adapter", base_model=str(path))
  assert files == ["adapter_config.json", "adapter_model.safetensors"]
  blob = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert blob["r"] == 4 and blob["lora_alpha"] == 8.0 and len(blob["target_modules"]) == 7

  b = hf_models.batch(model.kind, [12, 7, 3], [9, 4, 12], seed=1)
  mask = hf_models.target_mask(b)
  ours = np.asarray(step.forward(model, params, b))
  base = np.asarray(step.forward(build.Model(pretrained.config), pretrained.params, b))
  fresh = type(hf_model).from_pretrained(path).eval()  # PEFT injects its layers into the model it is given
  peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
  theirs = hf_models.hf_logits(peft_model, b)
  assert np.abs(ours - base)[mask].max() > 0.1  # the adapters matter ...
  err = np.abs(ours - theirs)[mask].max()
  assert err < ATOL, f"max |logit difference| vs PEFT {err:.2e}"  # ... and PEFT computes what we do

  imported = convert.import_peft(tmp_path / "adapter", model.config, *mesh_rules)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), imported,
               model.trainable(params))
  assert convert.read_peft_config(tmp_path / "adapter", model.kind) == model.config.lora

  # Merged into the base (what `convert --to hf` writes): the same logits without adapters.
  merged_model, merged = model.merged(params)
  assert merged_model.config.lora is None
  np.testing.assert_allclose(np.asarray(step.forward(merged_model, merged, b))[mask], ours[mask], atol=1e-4)


def test_peft_import_refuses_what_it_cannot_compute(saved, mesh_rules, tmp_path):
  path, _ = saved("llama3")
  pretrained = convert.import_hf(path, *mesh_rules)
  model, params = _adapted(pretrained, ("query", "value"))
  convert.export_peft(model.config, params, tmp_path)
  cfg_file = tmp_path / "adapter_config.json"
  blob = json.loads(cfg_file.read_text())
  cfg_file.write_text(json.dumps({**blob, "use_dora": True}))
  with pytest.raises(convert.ConversionError, match="use_dora=True is not supported"):
    convert.read_peft_config(tmp_path, "decoder")
  cfg_file.write_text(json.dumps({**blob, "target_modules": ["q_proj", "lm_head"]}))
  with pytest.raises(convert.ConversionError, match=r"target_modules \['lm_head'\]"):
    convert.read_peft_config(tmp_path, "decoder")
  cfg_file.write_text(json.dumps(blob))
  other = dataclasses.replace(model.config, lora=lora.LoraConfig(rank=8, alpha=8.0, targets=("query", "value")))
  with pytest.raises(convert.ConversionError, match="does not fit"):
    convert.import_peft(tmp_path, other, *mesh_rules)
