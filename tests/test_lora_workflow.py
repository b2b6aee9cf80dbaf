"""LoRA end to end: a run on a Hugging Face base with config.model.lora keeps the base frozen, resumes, loads its
workdir with the adapters, and exports (convert --to peft) a PEFT adapter that PEFT applies to the base with our
logits; the adapter on the base exports merged (convert --from peft --to hf) with the same logits, and starts a
new run (config.model.lora.init_from) with the same adapters."""
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from instruct_jax import configs, convert, sharding, step, train
from instruct_jax import plan as plan_lib
from instruct_jax.models import lora

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**keys):
  c = configs.load(ROOT / "configs" / "tiny.py", "decoder")
  c.eval.num_examples = 0
  c.checkpoint_every = 2
  for k, v in keys.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def _convert(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.convert", *args], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_lora_run_on_a_hf_base_resumes_exports_to_peft_and_imports_back(tmp_path):
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  transformers = pytest.importorskip("transformers")
  train.train_and_evaluate(_config(total_steps=1), str(tmp_path / "base_run"))
  mesh, rules = sharding.make_mesh({"data": 1}, jax.devices()[:1]), sharding.get_rules("data_parallel")
  base = convert.load_pretrained(tmp_path / "base_run", mesh, rules)
  convert.export_hf(base.config, base.params, tmp_path / "base_hf",
                    tokenizer=convert.load_tokenizer(tmp_path / "base_run"))

  lora_keys = {"init_from": str(tmp_path / "base_hf"), "model.size": "", "model.overrides": ml_collections.ConfigDict(),
               "model.lora.rank": 4, "model.lora.targets": ("query", "value", "wo"), "optim.learning_rate": 1e-2}
  run = str(tmp_path / "lora_run")
  train.train_and_evaluate(_config(total_steps=2, **lora_keys), run)
  result = train.train_and_evaluate(_config(total_steps=3, **lora_keys), run)  # resumes from step 2
  assert result["final_step"] == 3

  loaded = plan_lib.load(run)  # what generate and evaluate load: the model with its adapters
  assert loaded.model.config.lora == lora.LoraConfig(4, 16.0, 0.0, ("query", "value", "wo"))
  hf_base = convert.import_hf(tmp_path / "base_hf", loaded.mesh, loaded.rules)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(lora.base(loaded.params)),
               jax.device_get(hf_base.params))  # the base never moved
  assert all(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(
      loaded.model.trainable(loaded.params)))  # every adapter did

  # The command line: the run's adapters as a PEFT directory; that directory on the base, merged, as HF weights.
  _convert("--to", "peft", "--src", run, "--dst", str(tmp_path / "adapter"))
  _convert("--from", "peft", "--to", "hf", "--src", str(tmp_path / "adapter"), "--base", str(tmp_path / "base_hf"),
           "--dst", str(tmp_path / "merged_hf"))
  batch = {"decoder_input_tokens": np.array([[3, 17, 40, 9, 22, 5]], np.int32),
           "decoder_segment_ids": np.ones((1, 6), np.int32), "decoder_positions": np.arange(6)[None].astype(np.int32)}
  ours = np.asarray(step.forward(loaded.model, loaded.params, batch))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base_hf").eval()
  with torch.no_grad():
    theirs = peft.PeftModel.from_pretrained(hf_model, str(tmp_path / "adapter")).eval()(
        input_ids=torch.tensor(batch["decoder_input_tokens"])).logits.numpy()
  assert np.abs(ours - theirs).max() < 1e-4
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged_hf").eval()
  with torch.no_grad():
    assert np.abs(ours - merged(input_ids=torch.tensor(batch["decoder_input_tokens"])).logits.numpy()).max() < 1e-4
  # The same, imported: the directory takes its tokenizer from the base (an adapter directory has none).
  _convert("--from", "peft", "--src", str(tmp_path / "adapter"), "--base", str(tmp_path / "base_hf"),
           "--dst", str(tmp_path / "imported"))
  assert convert.load_tokenizer(str(tmp_path / "imported")).vocab_size == convert.load_tokenizer(
      str(tmp_path / "base_hf")).vocab_size

  # A new run starting from the exported adapter holds the same adapters before its first step.
  start = plan_lib.initial_params(_config(**lora_keys, **{"model.lora.init_from": str(tmp_path / "adapter")}),
                               loaded.model, loaded.params, jax.tree.map(lambda x: x.sharding, loaded.params),
                               loaded.mesh, loaded.rules, hf_base)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(start), jax.device_get(loaded.params))
