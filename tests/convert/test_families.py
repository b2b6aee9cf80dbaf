"""Today's families (Qwen2, Qwen3, Gemma 2, Gemma 3) against transformers: padded, packed and scanned logits, cached
decoding, the switches each one needs, shardings with one key/value head, and the attention switch.

The tiny checkpoints (tests/convert/hf_models.py) make each family's difference matter at 12 tokens; logits parity on
unpadded rows, greedy ids, the export round trip and PEFT are in test_parity, test_export and test_peft.
"""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from instruct_jax import convert, sampling, step
from instruct_jax.models import attention, build
from tests.convert import hf_models

torch = pytest.importorskip("torch")

FAMILIES = ["qwen2", "qwen3", "gemma2", "gemma3"]
ATOL = 1e-4


def _max_err(fwd, params, model, b):
  mask = hf_models.target_mask(b)
  return np.abs(np.asarray(fwd(params, b)) - hf_models.hf_logits(model, b))[mask].max()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_padded_logits_match_transformers(name, scan, imported):
  pretrained, fwd, model = imported(name, scan)
  for b in (hf_models.batch("decoder", [12, 7, 3], seed=1),
            hf_models.batch("decoder", [12, 7, 3], left_pad=True, seed=2)):
    assert _max_err(fwd, pretrained.params, model, b) < ATOL


@pytest.mark.parametrize("name", ["qwen3", "gemma3", pytest.param("gemma2", marks=pytest.mark.slow)])
def test_packed_rows_equal_each_example_alone(name, imported):
  """Two examples in one row (segment ids 1, 2; positions restarting) give each example's own logits: the
  segment mask holds for sliding and global layers alike."""
  pretrained, fwd, model = imported(name)
  a, b = hf_models.batch("decoder", [7], seed=3), hf_models.batch("decoder", [5], seed=4)
  tokens = np.concatenate([a["decoder_input_tokens"][:, :7], b["decoder_input_tokens"][:, :5]], 1)
  packed = {"decoder_input_tokens": tokens,
            "decoder_segment_ids": np.array([[1] * 7 + [2] * 5], np.int32),
            "decoder_positions": np.array([list(range(7)) + list(range(5))], np.int32)}
  packed = {k: np.repeat(v, 3, axis=0) for k, v in packed.items()}  # the batch shape the fixture compiled
  ours = np.asarray(fwd(pretrained.params, packed))[0]
  np.testing.assert_allclose(ours[:7], hf_models.hf_logits(model, a)[0, :7], atol=ATOL, rtol=0)
  np.testing.assert_allclose(ours[7:], hf_models.hf_logits(model, b)[0, :5], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mistral", "gemma3", pytest.param("qwen2", marks=pytest.mark.slow),
                                  pytest.param("gemma2", marks=pytest.mark.slow)])
def test_cached_greedy_and_beam_decoding(name, imported):
  """KV-cache decoding runs past the 5-token window (Mistral's, Gemma's sliding layers): greedy and beam-search ids
  equal transformers.generate's, and equal the recomputing references."""
  pretrained, _, model = imported(name)
  ours = build.Model(pretrained.config)
  prompts = [[5, 17, 33, 2, 60, 41, 9, 12, 70], [8, 44, 3, 21]]
  cfg = sampling.DecodeConfig(max_new_tokens=8, eos_id=-1, pad_id=0)  # no end-of-text: the whole budget
  cached = sampling.generate(ours, pretrained.params, prompts, cfg)
  assert cached == sampling.generate(ours, pretrained.params, prompts, cfg, use_cache=False)
  for prompt, got in zip(prompts, cached):
    with torch.no_grad():
      ref = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, num_beams=1,
                           eos_token_id=None, pad_token_id=0).numpy()[0, len(prompt):]
    assert got == ref.tolist()
  beam = dataclasses.replace(cfg, num_beams=3)
  beams = sampling.generate(ours, pretrained.params, prompts, beam)
  assert beams == sampling.generate(ours, pretrained.params, prompts, beam, use_cache=False)
  for prompt, got in zip(prompts, beams):  # no end-of-text: every beam runs the budget, scored by its log-prob sum
    with torch.no_grad():
      ref = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, num_beams=3,
                           length_penalty=0.0, eos_token_id=None, pad_token_id=0).numpy()[0, len(prompt):]
    assert got == ref.tolist()


@pytest.mark.parametrize("name, change", [
    ("gemma3", dict(local_rope_theta=None)),  # the sliding layers' own RoPE base
    ("gemma3", dict(layer_types=None)),  # sliding and global layers
    ("gemma3", dict(query_scale=None)),  # query_pre_attn_scalar apart from the head width
    ("gemma2", dict(attn_softcap=None)),
    ("gemma2", dict(final_softcap=None)),
    ("qwen3", dict(qk_norm=False)),
])
def test_each_switch_is_what_makes_the_family_match(name, change, saved, mesh_rules):
  """Controls: the same weights without one of the family's switches do not match transformers."""
  path, model = saved(name)
  pretrained = convert.import_hf(path, *mesh_rules)
  config = dataclasses.replace(pretrained.config, **change)
  params = pretrained.params
  if change.get("qk_norm") is False:  # its q/k norm scales go with it
    params = jax.tree_util.tree_map_with_path(lambda p, x: x, params)
    for layer in params["layers"].values():
      layer["attention"] = {k: v for k, v in layer["attention"].items() if not k.endswith("_norm")}
  b = hf_models.batch("decoder", [12] * 3)
  err = _max_err(functools.partial(step.forward, build.Model(config)), params, model, b)
  assert err > 1e-2, f"{change} changes nothing ({err:.1e})"


def test_one_key_value_head_is_replicated_over_the_tensor_axis(imported):
  pretrained, _, _ = imported("gemma3")  # 4 query heads, 1 key/value head, on fsdp 4 x tensor 2
  assert pretrained.config.num_kv_heads == 1
  layer = pretrained.params["layers"]["layer_0"]["attention"]
  assert layer["key"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None)
  assert layer["query"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_auto_attention_keeps_soft_capping_and_per_layer_windows_on_the_einsum(imported):
  pretrained, _, _ = imported("gemma2")
  cfg = pretrained.config
  resolve = functools.partial(attention.resolve, dtype=np.dtype("bfloat16"), head_dim=128, dropout_active=False)
  assert resolve("auto", dense_mask=False, backend="gpu") == "cudnn"
  assert resolve("auto", dense_mask=False, backend="gpu", softcap=True) == "xla"
  with pytest.raises(attention.AttentionError, match="cannot soft-cap"):
    resolve("cudnn", dense_mask=False, backend="gpu", softcap=True)
  text, problem = build.Model(dataclasses.replace(cfg, attention="auto", dtype=np.dtype("bfloat16"))).attention_plan("gpu")
  assert problem is None and "soft-caps" in text and "xla in training" in text


@pytest.mark.parametrize("scan", [False, True])
def test_remat_of_sliding_and_global_layers_keeps_the_gradients(scan, saved, mesh_rules):
  """Rematerialised layers that differ by type (Gemma 3: the index picks the mask and RoPE base; unrolled it stays a
  Python int through remat, scanned it is traced) give the gradients of the plain stack."""
  path, _ = saved("gemma3")
  b = hf_models.batch("decoder", [12, 7, 3], seed=6)
  b["decoder_target_tokens"] = np.roll(b["decoder_input_tokens"], -1, axis=1)
  grads = {}
  for policy in ("none", "full"):
    pretrained = convert.import_hf(path, *mesh_rules, scan_layers=scan, remat_policy=policy)
    model = build.Model(pretrained.config)

    def loss(params):
      logits = step.forward(model, params, b)
      return -jax.numpy.mean(jax.nn.log_softmax(logits)[..., 0])

    grads[policy] = jax.jit(jax.grad(loss))(pretrained.params)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5, rtol=1e-5),
               grads["none"], grads["full"])
