"""Converter outputs written whole or not at all, and the source files an import copies checked (issue 28)."""
import json
import os
import shutil

import numpy as np
import pytest

from instruct_jax import convert
from instruct_jax.convert import outdir, pretrained as pretrained_lib
from instruct_jax.convert.tensors import ConversionError

from tests.convert import hf_models
from tests.convert.test_cli import _run

transformers = pytest.importorskip("transformers")


def _source(saved, tmp_path, name="llama3"):
  src = tmp_path / "src"
  shutil.copytree(saved(name)[0], src)
  hf_models.train_spm(src / "tokenizer.model", llama_ids=True)
  return src


def test_a_tokenizer_link_leaving_the_source_is_refused(saved, mesh_rules, tmp_path):
  src = _source(saved, tmp_path)
  secret = tmp_path / "elsewhere" / "passwd"
  secret.parent.mkdir()
  secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
  (src / "tokenizer.model").unlink()
  (src / "tokenizer.model").symlink_to(secret)
  pretrained = convert.import_hf(src, *mesh_rules)
  with pytest.raises(ConversionError, match=r"src/tokenizer.model is a link to .*elsewhere/passwd, outside .*src: "
                                            "refusing to copy it"):
    convert.save_imported(pretrained, tmp_path / "imp", tokenizer_src=src)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "src"]  # nothing written, nothing partial
  # A link within the source directory, and a Hugging Face cache snapshot's links into its blobs/, are fine.
  hub = tmp_path / "hub" / "models--org--tiny"
  (hub / "blobs").mkdir(parents=True)
  (hub / "snapshots" / "abc123").mkdir(parents=True)
  for f in src.iterdir():
    if f.is_file() and not f.is_symlink():
      shutil.copyfile(f, hub / "blobs" / f"sha-{f.name}")
      (hub / "snapshots" / "abc123" / f.name).symlink_to(f"../../blobs/sha-{f.name}")
  hf_models.train_spm(hub / "blobs" / "sha-tokenizer.model", llama_ids=True)
  (hub / "snapshots" / "abc123" / "tokenizer.model").symlink_to("../../blobs/sha-tokenizer.model")
  snapshot = hub / "snapshots" / "abc123"
  convert.save_imported(convert.import_hf(snapshot, *mesh_rules), tmp_path / "imp", tokenizer_src=snapshot)
  assert (tmp_path / "imp" / "tokenizer.model").is_file() and not (tmp_path / "imp" / "tokenizer.model").is_symlink()


SLOW = pytest.mark.slow  # a convert subprocess each: 4 s


@pytest.mark.parametrize("name, content, message", [
    ("tokenizer.json", '{"version": "1.0", "model": ', "not a valid tokenizer.json"),
    pytest.param("tokenizer.json", '{"version": "1.0"}', "not a valid tokenizer.json", marks=SLOW),
    pytest.param("tokenizer.model", "not protobuf at all", "not a valid tokenizer.model", marks=SLOW),
    pytest.param("tokenizer_config.json", '{"bos_token": "<s>", "bos_token": "<t>"}', "duplicate key 'bos_token'",
                 marks=SLOW),
    pytest.param("chat_template.jinja", "{% for m in messages %}{{ m.content }", "not a valid chat_template.jinja",
                 marks=SLOW),
])
def test_malformed_tokenizer_files_are_refused_at_import(saved, mesh_rules, tmp_path, name, content, message):
  src = _source(saved, tmp_path)
  (src / name).write_text(content)
  proc = _run("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "imp"))
  assert proc.returncode == 2 and message in proc.stderr and str(src / name) in proc.stderr, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "imp").exists()


def test_an_export_replaces_an_earlier_one_whole_and_refuses_other_directories(imported, tmp_path):
  pretrained, _, model = imported("llama3")
  dst = tmp_path / "hf"
  files = convert.export_hf(pretrained.config, pretrained.params, dst, hf_base=pretrained.hf_config)
  assert files == ["config.json", "model.safetensors"]
  assert json.loads((dst / outdir.MARKER).read_text())["to"] == "hf"
  # Re-exported sharded: the old single file must not stay beside the new shards (transformers would load it).
  files = convert.export_hf(pretrained.config, pretrained.params, dst, hf_base=pretrained.hf_config,
                            max_shard_bytes=20_000)
  assert "model.safetensors" not in os.listdir(dst) and "model.safetensors.index.json" in files
  assert sorted(os.listdir(dst)) == sorted([*files, outdir.MARKER])
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
  b = hf_models.batch("decoder", [12, 7])
  np.testing.assert_allclose(hf_models.hf_logits(reloaded, b), hf_models.hf_logits(model, b), atol=1e-5, rtol=0)
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  (theirs / "model.safetensors").write_bytes(b"someone else's model")
  with pytest.raises(ConversionError, match="already holds files and is not an earlier output"):
    convert.export_hf(pretrained.config, pretrained.params, theirs, hf_base=pretrained.hf_config)
  assert os.listdir(theirs) == ["model.safetensors"]
  (tmp_path / "empty").mkdir()  # an empty directory is fine
  convert.export_hf(pretrained.config, pretrained.params, tmp_path / "empty", hf_base=pretrained.hf_config)


def test_a_failed_export_leaves_the_earlier_one_and_no_partial_directory(imported, tmp_path, monkeypatch):
  pretrained, _, _ = imported("llama3")
  dst = tmp_path / "hf"
  convert.export_hf(pretrained.config, pretrained.params, dst, hf_base=pretrained.hf_config)
  before = {p.name: p.read_bytes() for p in dst.iterdir()}
  real = pretrained_lib._write_safetensors

  def fail_midway(out_dir, produced, max_shard_bytes):
    real(out_dir, produced, max_shard_bytes)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(pretrained_lib, "_write_safetensors", fail_midway)
  with pytest.raises(OSError, match="No space left"):
    convert.export_hf(pretrained.config, pretrained.params, dst, hf_base=pretrained.hf_config, max_shard_bytes=20_000)
  assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@SLOW
def test_a_corrupt_safetensors_file_is_one_line_naming_it(saved, tmp_path):
  src = _source(saved, tmp_path)
  weights = src / "model.safetensors"
  blob = weights.read_bytes()
  weights.write_bytes(blob[:8] + b"{garbage" + blob[16:])
  proc = _run("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "imp"))
  assert proc.returncode == 2 and f"error: {weights}: not a readable safetensors file" in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  weights.write_bytes(blob[:-64])  # cut short
  proc = _run("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "imp"))
  assert proc.returncode == 2 and "not a readable safetensors file" in proc.stderr and "Traceback" not in proc.stderr
