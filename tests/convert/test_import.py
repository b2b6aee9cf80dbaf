"""Sharded checkpoints, placement on the mesh slice by slice, pickled weights, and clear errors."""
import json
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from instruct_jax import convert
from instruct_jax.convert import tensors as convert_io
from instruct_jax.convert.tensors import ConversionError
from instruct_jax.models import build
from tests.convert import hf_models

torch = pytest.importorskip("torch")


def _logits_match(pretrained, fwd, model, name):
  b = hf_models.batch(hf_models.KINDS[name], [12, 7, 3], [9, 4, 12], seed=4)
  mask = hf_models.target_mask(b)
  np.testing.assert_allclose(np.asarray(fwd(pretrained.params, b))[mask], hf_models.hf_logits(model, b)[mask],
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_index_import_reads_each_byte_once(scan, imported, mesh_rules, tmp_path):
  _, fwd, model = imported("llama3", scan)
  hf_models.save(model, tmp_path, "llama3", max_shard_size="20KB")
  assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
  pretrained = convert.import_hf(tmp_path, *mesh_rules, scan_layers=scan)
  _logits_match(pretrained, fwd, model, "llama3")
  # Every device read only its own block and replicated blocks were read once: the bytes read add up
  # to exactly the checkpoint's payload.
  source = convert_io.TensorSource(tmp_path)
  assert pretrained.bytes_read == source.payload_bytes(source.names())
  query = pretrained.params["layers"]["layers" if scan else "layer_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == P(*((None,) if scan else ()), "fsdp", "tensor", None)
  shard_shape = query.addressable_shards[0].data.shape
  assert shard_shape == ((2,) if scan else ()) + (32 // 4, 4 // 2, 8)


def test_split_inner_dim(imported, mesh_rules):
  """head_dim split over devices: an inner dim of q_proj's rows, read whole and cut on the device."""
  _, fwd, model = imported("llama3")
  mesh, rules = mesh_rules
  rules = {**rules, "heads": None, "kv_heads": None, "head_dim": "tensor"}
  pretrained = convert.import_hf(imported("llama3")[0].source, mesh, rules)
  key = pretrained.params["layers"]["layer_1"]["attention"]["key"]["kernel"]
  assert key.sharding.spec == P("fsdp", None, "tensor") and key.addressable_shards[0].data.shape == (8, 2, 4)
  _logits_match(pretrained, fwd, model, "llama3")


def test_bfloat16_params_and_scanned_t5(saved, mesh_rules):
  path, model = saved("t5_flan")
  pretrained = convert.import_hf(path, *mesh_rules, scan_layers=True, param_dtype="bfloat16")
  leaves = jax.tree.leaves(pretrained.params)
  assert {x.dtype.name for x in leaves} == {"bfloat16"}
  assert pretrained.params["encoder"]["stack"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
  want = model.state_dict()["decoder.block.2.layer.1.EncDecAttention.o.weight"].numpy()  # [D, H*K]
  got = np.asarray(pretrained.params["decoder"]["stack"]["layers"]["cross_attention"]["out"]["kernel"][2],
                   np.float32)  # [H, K, D]
  np.testing.assert_allclose(got.reshape(32, 32).T, want, rtol=1e-2, atol=1e-2)


def _copy(saved_dir, tmp_path):
  dst = tmp_path / "ckpt"
  shutil.copytree(saved_dir, dst)
  return dst


def _edit_config(path, **changes):
  cfg = json.loads((path / "config.json").read_text())
  for k, v in changes.items():
    if v is None:
      cfg.pop(k, None)
    else:
      cfg[k] = v
  (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, fn):
  tensors = load_file(path / "model.safetensors")
  fn(tensors)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_pickled_weights_refused_unless_allowed(saved, imported, mesh_rules, tmp_path):
  src, model = saved("mistral")
  path = tmp_path / "bin"
  path.mkdir()
  shutil.copy(src / "config.json", path)
  torch.save(model.state_dict(), path / "pytorch_model.bin")
  with pytest.raises(ConversionError, match="allow_pickle"):
    convert.import_hf(path, *mesh_rules)
  pretrained = convert.import_hf(path, *mesh_rules, allow_pickle=True)
  _, fwd, _ = imported("mistral")
  _logits_match(pretrained, fwd, model, "mistral")


@pytest.mark.parametrize("change,match", [
    ({"model_type": "gpt2"}, r"config.json: model_type 'gpt2' is not supported"),
    ({"architectures": ["LlamaForSequenceClassification"]}, r"architecture 'LlamaForSequenceClassification'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0}}, r"rope type 'yarn'"),
    ({"attention_bias": True}, r"attention_bias=true"),
    ({"hidden_act": "gelu"}, r'hidden_act="gelu"'),
    ({"my_new_knob": 3}, r"unknown config field\(s\) \['my_new_knob'\]"),
    ({"hidden_size": None}, r"missing config field 'hidden_size'"),
    ({"intermediate_size": 64},
     r"tensor 'model.layers.0.mlp.gate_proj.weight' in model.safetensors has shape \[48, 32\], expected \[64, 32\]"),
])
def test_config_errors_name_the_field(change, match, saved, mesh_rules, tmp_path):
  path = _copy(saved("llama3")[0], tmp_path)
  _edit_config(path, **change)
  with pytest.raises(ConversionError, match=match):
    convert.import_hf(path, *mesh_rules)


def test_unknown_field_can_be_allowed(saved, mesh_rules, tmp_path):
  path = _copy(saved("llama3")[0], tmp_path)
  _edit_config(path, my_new_knob=3)
  convert.import_hf(path, *mesh_rules, allow_unknown_fields=True)


def test_t5_errors(saved, mesh_rules, tmp_path):
  path = _copy(saved("t5_flan")[0], tmp_path)
  _edit_config(path, feed_forward_proj="relu")
  with pytest.raises(ConversionError, match="feed_forward_proj='relu'"):
    convert.import_hf(path, *mesh_rules)
  _edit_config(path, feed_forward_proj="gated-gelu", architectures=["T5EncoderModel"])
  with pytest.raises(ConversionError, match="architecture 'T5EncoderModel'"):
    convert.import_hf(path, *mesh_rules)


def test_tensor_errors(saved, mesh_rules, tmp_path):
  path = _copy(saved("llama3")[0], tmp_path)
  _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ConversionError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' "
                                            r"\(for layers/layer_1/mlp/wi_1/kernel\)"):
    convert.import_hf(path, *mesh_rules)
  path = _copy(saved("mistral")[0], tmp_path / "b")
  _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}))
  with pytest.raises(ConversionError, match=r"no place in the model.*q_proj.bias"):
    convert.import_hf(path, *mesh_rules)
  path = _copy(saved("mistral")[0], tmp_path / "c")
  _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}))
  with pytest.raises(ConversionError, match=r"'model.layers.0.self_attn.k_proj.weight' .* shape \[8, 32\], "
                                            r"expected \[16, 32\]"):
    convert.import_hf(path, *mesh_rules)
  (path / "model.safetensors").unlink()
  with pytest.raises(ConversionError, match="no model weights found"):
    convert.import_hf(path, *mesh_rules)


def test_imported_directory_round_trip(imported, mesh_rules, tmp_path):
  pretrained, fwd, model = imported("mistral")
  convert.save_imported(pretrained, tmp_path / "imp")
  (tmp_path / "imp" / "stale.txt").write_text("from an earlier import")
  convert.save_imported(pretrained, tmp_path / "imp")  # an earlier import of ours is replaced whole
  assert not (tmp_path / "imp" / "stale.txt").exists() and (tmp_path / "imp" / "instruct_jax_export.json").is_file()
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("someone else's")
  with pytest.raises(ConversionError, match="already holds files and is not an earlier output"):
    convert.save_imported(pretrained, tmp_path / "other")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["imp", "other"]  # no partial directory left behind
  restored = convert.load_pretrained(tmp_path / "imp", *mesh_rules)
  assert restored.config == pretrained.config and restored.hf_config["model_type"] == "mistral"
  _logits_match(restored, fwd, model, "mistral")
  with pytest.raises(ConversionError, match=r"\['num_layers'\] are fixed"):
    convert.load_imported(tmp_path / "imp", *mesh_rules, num_layers=3)
  blob = json.loads((tmp_path / "imp" / convert.MODEL_CONFIG).read_text())
  blob["config"]["n_experts"] = 4
  (tmp_path / "imp" / convert.MODEL_CONFIG).write_text(json.dumps(blob))
  with pytest.raises(ValueError, match=r"model_config.json: unknown config field\(s\) \['n_experts'\]"):
    convert.load_imported(tmp_path / "imp", *mesh_rules)


# config.json of released checkpoints (as published on the Hugging Face hub), and their parameter counts.
RELEASED = {
    "flan-t5-base": ({
        "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 768,
        "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
        "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
        "num_decoder_layers": 12, "num_heads": 12, "num_layers": 12, "output_past": True, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "task_specific_params": {"translation_en_to_de": {"prefix": "translate English to German: "}},
        "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.23.1",
        "use_cache": True, "vocab_size": 32128}, 247.6e6),
    "Llama-2-7b-hf": ({
        "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000}, 6.74e9),
    "Llama-3.2-1B": ({
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256}, 1.24e9),
    "Mistral-7B-v0.1": ({
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000}, 7.24e9),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configs_read_as_published_sizes(name):
  hf, published = RELEASED[name]
  family = convert.FAMILIES[hf["model_type"]]
  names = set() if hf["tie_word_embeddings"] else {"lm_head.weight"}
  config = family.config_from_hf(hf, names, name)
  abstract = build.Model(config).param_shapes()
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  assert abs(count - published) / published < 0.005, f"{name}: {count / 1e9:.3f}B parameters"
