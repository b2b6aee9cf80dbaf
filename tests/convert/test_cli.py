"""`python -m instruct_jax.convert`: Hugging Face -> imported dir -> Hugging Face, in subprocesses."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.convert import hf_models

transformers = pytest.importorskip("transformers")


def _run(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.convert", *args], capture_output=True, text=True,
                        env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=300)
  return proc


def test_cli_import_then_export(saved, tmp_path):
  saved_dir, model = saved("t5_flan")
  src = tmp_path / "src"
  shutil.copytree(saved_dir, src)
  hf_models.train_spm(src / "spiece.model")  # the tokenizer travels along and is exported with the weights
  proc = _run("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "imp"), "--scan_layers")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote" in proc.stdout
  assert {"model_config.json", "params", "spiece.model"} <= set(os.listdir(tmp_path / "imp"))
  proc = _run("--to", "hf", "--src", str(tmp_path / "imp"), "--dst", str(tmp_path / "hf"), "--export_dtype",
              "float32")
  assert proc.returncode == 0, proc.stderr[-3000:]
  reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tokenizer("Sort the numbers")["input_ids"][-1] == 1  # T5 inputs end with end-of-text
  b = hf_models.batch("encoder_decoder", [12, 7, 3], [9, 4, 12], seed=9)
  mask = hf_models.target_mask(b)
  np.testing.assert_allclose(hf_models.hf_logits(reloaded, b)[mask], hf_models.hf_logits(model, b)[mask],
                             atol=1e-5, rtol=0)


def test_cli_usage_errors(tmp_path):
  proc = _run("--src", str(tmp_path), "--dst", str(tmp_path / "x"))
  assert proc.returncode != 0 and "both 'instruct_jax'" in proc.stderr
  proc = _run("--from", "hf", "--src", str(tmp_path), "--dst", str(tmp_path / "x"))
  assert proc.returncode == 2 and "error:" in proc.stderr and "no config.json" in proc.stderr
  assert "Traceback" not in proc.stderr
