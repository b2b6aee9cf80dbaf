"""LoRA adapters exported as PEFT directories: `peft.PeftModel.from_pretrained` gives our logits; import round trips.

A tiny transformers model is imported with the existing converters, given random non-zero adapters on every
projection, exported with `convert.export_peft`, and loaded by PEFT onto a fresh copy of the same model.
"""
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from instruct_jax import convert, step
from instruct_jax.models import build, lora
from tests.convert import hf_models

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ATOL = 1e-4


def _adapted(pretrained, targets, mesh_rules, seed=0):
  """(model, params): the imported base with random adapters (std 0.1) of rank 4 (alpha 8) on `targets`."""
  cfg = dataclasses.replace(pretrained.config, lora=lora.LoraConfig(rank=4, alpha=8.0, targets=targets))
  model = build.Model(cfg)
  abstract = model.trainable(model.abstract_params(*mesh_rules))
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(abstract)))
  leaves = [jax.device_put(0.1 * jax.random.normal(k, a.shape), a.sharding)
            for k, a in zip(keys, jax.tree.leaves(abstract))]
  return model, lora.combine(pretrained.params, jax.tree.unflatten(jax.tree.structure(abstract), leaves))


@pytest.mark.slow  # ~10 s each (tests/test_lora.py checks the adapter config without torch by default)
@pytest.mark.parametrize("name,scan", [("llama3", False), ("llama3", True), ("t5_flan", False), ("qwen2", False),
                                       ("qwen3", True), ("gemma2", False), ("gemma3", True)])
def test_peft_loads_our_adapters_with_our_logits_and_import_round_trips(name, scan, saved, mesh_rules, tmp_path):
  path, hf_model = saved(name)
  pretrained = convert.import_hf(path, *mesh_rules, scan_layers=scan)
  model, params = _adapted(pretrained, lora.TARGETS, mesh_rules)
  files = convert.export_peft(model.config, params, tmp_path / "adapter", base_model=str(path))
  assert files == ["adapter_config.json", "adapter_model.safetensors"]
  blob = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert blob["r"] == 4 and blob["lora_alpha"] == 8.0 and len(blob["target_modules"]) == 7

  b = hf_models.batch(model.kind, [12, 7, 3], [9, 4, 12], seed=1)
  mask = hf_models.target_mask(b)
  ours = np.asarray(jax.jit(functools.partial(step.forward, model))(params, b))
  base = hf_models.hf_logits(hf_model, b)
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
  peft_model.save_pretrained(tmp_path / "saved_by_peft")  # PEFT's own writing of it (its full config) reads back
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               convert.import_peft(tmp_path / "saved_by_peft", model.config, *mesh_rules), model.trainable(params))
