"""config.init_from: start training from a Hugging Face directory or a converted one (weights only)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.train.test_trainer import ROOT, _cmd, _env, _losses, _run

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def spm_and_hf(tmp_path_factory):
  from instruct_jax.data import render, mixtures
  from instruct_jax.data import tokenizer as tokenizer_lib
  from tests.convert import hf_models
  tmp = tmp_path_factory.mktemp("init_from")
  tasks, mixes = mixtures.catalogues()
  texts = render.sample_texts(mixtures.task_rates("builtin", tasks, mixes), tasks, render.RenderConfig(), n=2000)
  tok = tokenizer_lib.train(texts, vocab_size=90, out_dir=tmp / "spm")
  assert tok.vocab_size <= hf_models.VOCAB
  hf_dir = hf_models.save(hf_models.build("t5_flan"), tmp / "hf", "t5_flan")
  return tok.model_path, hf_dir


@pytest.mark.parametrize("route", ["hf", "converted"])
def test_training_starts_from_pretrained_weights(spm_and_hf, tmp_path, route):
  spm, hf_dir = spm_and_hf
  src = hf_dir
  if route == "converted":
    src = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "instruct_jax.convert", "--from", "hf", "--src", str(hf_dir), "--dst",
                    str(src)], cwd=ROOT, env=_env(), check=True, capture_output=True, text=True)
  work = tmp_path / "work"
  out = _run(_cmd(work, f"--config.init_from={src}", f"--config.tokenizer.path={spm}",
                  "--config.total_steps=3")).stdout
  assert f"Initialised weights from {src}" in out
  losses = _losses(work)
  assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))


def test_resume_reads_the_pretrained_config_but_not_its_weights(spm_and_hf, tmp_path):
  spm, hf_dir = spm_and_hf
  src = tmp_path / "converted"
  subprocess.run([sys.executable, "-m", "instruct_jax.convert", "--from", "hf", "--src", str(hf_dir), "--dst",
                  str(src)], cwd=ROOT, env=_env(), check=True, capture_output=True, text=True)
  work = tmp_path / "work"
  flags = (f"--config.init_from={src}", f"--config.tokenizer.path={spm}")
  _run(_cmd(work, *flags, "--config.total_steps=8"))
  shutil.rmtree(src / "params")  # a resumed run must not read the pretrained weights again
  out = _run(_cmd(work, *flags, "--config.total_steps=12")).stdout
  assert "Resumed from checkpoint step 8" in out and "Initialised weights" not in out
  assert sorted(_losses(work)) == list(range(1, 13))
