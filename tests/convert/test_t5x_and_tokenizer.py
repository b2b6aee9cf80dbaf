"""T5X checkpoints (written here in T5X's on-disk layout with tensorstore + msgpack) and tokenizers.

No public T5X checkpoint can be downloaded in the test environment; the writer below follows T5X's
format (version 3: zarr arrays for large parameters, small ones inline in the msgpack `checkpoint`;
version 2: bfloat16 stored as uint16), which the importer reads.
"""
import copy
import functools

import jax
import ml_dtypes
import numpy as np
import pytest
import sentencepiece as spm
from flax import serialization

from instruct_jax import step
from instruct_jax import convert
from instruct_jax.convert import t5x as convert_t5x
from instruct_jax.convert.tensors import ConversionError
from instruct_jax.models import build
from tests.convert import hf_models

torch = pytest.importorskip("torch")
ts = pytest.importorskip("tensorstore")


def _t5x_params(model) -> dict:
  """{t5x name: array} of a transformers T5 model in T5X's layout (kernels [in, out], relpos [H, buckets])."""
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  out = {"token_embedder/embedding": sd["shared.weight"], "decoder/logits_dense/kernel": sd["lm_head.weight"].T}
  att = {"q": "query", "k": "key", "v": "value", "o": "out"}
  for stack, n, blocks in (("encoder", 2, [("SelfAttention", "attention", "pre_attention_layer_norm")]),
                           ("decoder", 3, [("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                                           ("EncDecAttention", "encoder_decoder_attention",
                                            "pre_cross_attention_layer_norm")])):
    relpos = sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    out[f"{stack}/relpos_bias/rel_embedding"] = relpos.T
    out[f"{stack}/{stack}_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    for i in range(n):
      hf, t = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
      for j, (hf_att, t_att, t_norm) in enumerate(blocks):
        for a, b in att.items():
          out[f"{t}/{t_att}/{b}/kernel"] = sd[f"{hf}.{j}.{hf_att}.{a}.weight"].T
        out[f"{t}/{t_norm}/scale"] = sd[f"{hf}.{j}.layer_norm.weight"]
      m = len(blocks)
      for w in ("wi_0", "wi_1", "wo"):
        out[f"{t}/mlp/{w}/kernel"] = sd[f"{hf}.{m}.DenseReluDense.{w}.weight"].T
      out[f"{t}/pre_mlp_layer_norm/scale"] = sd[f"{hf}.{m}.layer_norm.weight"]
  return out


def _write_t5x(params: dict, directory, version: int) -> None:
  """A T5X checkpoint dir: bfloat16 zarr arrays (chunked) for matrices, float32 vectors inline."""
  directory.mkdir(parents=True)
  target = {}
  for name, value in params.items():
    node = target
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    if value.ndim == 1:
      node[leaf] = value.astype(np.float32)
      continue
    rel = "target." + name.replace("/", ".")
    bf16 = value.astype(ml_dtypes.bfloat16)
    dtype, data = ("bfloat16", bf16) if version >= 3 else ("uint16", bf16.view(np.uint16))
    metadata = {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                "chunks": [max(1, s // 2) for s in value.shape]}
    spec = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": str(directory / rel)},
            "metadata": metadata}
    ts.open(spec, create=True).result().write(data).result()
    # As T5X records it: the path relative to the checkpoint dir (gcs when written to a bucket).
    node[leaf] = {"driver": "zarr", "dtype": dtype, "metadata": metadata,
                  "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": rel}}
  contents = {"version": version, "optimizer": {"target": target, "state": {"step": np.asarray(1000)}}}
  (directory / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))


@pytest.mark.parametrize("version", [3, 2])
def test_t5x_import_matches_transformers(version, saved, mesh_rules, tmp_path):
  _, model = saved("t5_flan")
  rounded = copy.deepcopy(model)  # the T5X copy holds bfloat16 matrices: compare with the same values
  with torch.no_grad():
    for p in rounded.parameters():
      if p.ndim == 2:
        p.copy_(p.to(torch.bfloat16).float())
  _write_t5x(_t5x_params(rounded), tmp_path / "checkpoint_1000", version)
  pretrained = convert.load_pretrained(tmp_path, *mesh_rules, relpos_max_distance=16)  # model dir -> latest step
  config = pretrained.config
  assert (config.num_encoder_layers, config.num_decoder_layers, config.relpos_buckets) == (2, 3, 8)
  assert not config.tie_embeddings
  b = hf_models.batch("encoder_decoder", [12, 7, 3], [9, 4, 12], seed=8)
  mask = hf_models.target_mask(b)
  ours = np.asarray(jax.jit(functools.partial(step.forward, build.Model(config)))(pretrained.params, b))
  np.testing.assert_allclose(ours[mask], hf_models.hf_logits(rounded, b)[mask], atol=1e-4, rtol=0)


def test_t5x_errors(tmp_path):
  with pytest.raises(ConversionError, match="not a T5X checkpoint"):
    convert_t5x.find_checkpoint_file(tmp_path)
  (tmp_path / "checkpoint").write_bytes(serialization.msgpack_serialize({"version": 3, "optimizer": {"state": {}}}))
  with pytest.raises(ConversionError, match="no optimizer 'target'"):
    convert.import_t5x(tmp_path, None, None)
  params = {"token_embedder/embedding": np.zeros((8, 4), np.float32),
            "encoder/layers_0/mlp/wi/kernel": np.zeros((4, 8), np.float32)}
  _write_t5x(params, tmp_path / "relu", 3)
  with pytest.raises(ConversionError, match="original-T5"):
    convert.import_t5x(tmp_path / "relu", None, None)


TEXT = ["The quick brown fox jumps over the lazy dog.", "Instruction tuning teaches a model to follow tasks.",
        "Translate English to German: good morning", "Answer the question: what is two plus two?"] * 40


def _train_spm(prefix, **ids):
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_prefix=str(prefix), vocab_size=100,
                                 hard_vocab_limit=False, minloglevel=2, **ids)
  return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def test_tokenizers(saved, imported, tmp_path):
  t5_dir = tmp_path / "t5"
  t5_dir.mkdir()
  sp = _train_spm(t5_dir / "spiece", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)  # T5's ids
  tok = convert.load_tokenizer(t5_dir)
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert list(tok.encode("the lazy fox")) == sp.encode("the lazy fox")

  llama_dir = tmp_path / "llama"
  llama_dir.mkdir()
  _train_spm(llama_dir / "tokenizer", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)  # LLaMA's ids
  tok = convert.load_tokenizer(llama_dir)
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)

  # The imported directory carries the tokenizer along.
  pretrained, _, _ = imported("llama3")
  convert.save_imported(pretrained, tmp_path / "imp", tokenizer_src=llama_dir)
  assert convert.load_tokenizer(tmp_path / "imp").eos_id == 2

  llama3_dir = tmp_path / "llama3"
  llama3_dir.mkdir()
  (llama3_dir / "tokenizer.json").write_text("{}")  # Llama-3's format; real ones: tests/data/test_tokenizer.py
  with pytest.raises(ValueError, match="tokenizer.json: not a Hugging Face tokenizers file"):
    convert.load_tokenizer(llama3_dir)
  with pytest.raises(ConversionError, match="holds no tokenizer"):
    convert.load_tokenizer(tmp_path / "imp" / "params")
