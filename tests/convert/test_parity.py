"""Imported tiny transformers models give transformers' logits (fp32, 1e-4) and greedy tokens.

Every batch is [3, 12] so each model compiles its forward pass once.
"""
import numpy as np
import pytest

from instruct_jax import convert
from instruct_jax.models import build
from tests.convert import hf_models

torch = pytest.importorskip("torch")

ATOL = 1e-4
ROWS, LENGTH = 3, 12


def _assert_close(ours, ref, mask):
  err = np.abs(np.asarray(ours) - ref)[mask].max()
  assert err < ATOL, f"max |logit difference| {err:.2e} on non-pad positions (logits up to {np.abs(ref).max():.1f})"


@pytest.mark.parametrize("name", list(hf_models.KINDS))
def test_logits_unpadded(name, imported):
  pretrained, fwd, model = imported(name)
  b = hf_models.batch(hf_models.KINDS[name], [LENGTH] * ROWS)
  assert hf_models.target_mask(b).all()
  _assert_close(fwd(pretrained.params, b), hf_models.hf_logits(model, b), hf_models.target_mask(b))


@pytest.mark.parametrize("name", ["t5_flan", "llama3", "mistral"])
@pytest.mark.parametrize("scan", [False, True])
def test_logits_padded(name, scan, imported):
  pretrained, fwd, model = imported(name, scan)
  kind = hf_models.KINDS[name]
  batches = [hf_models.batch(kind, [12, 7, 3], [9, 4, 12], seed=1)]
  if kind == "decoder":
    batches.append(hf_models.batch(kind, [12, 7, 3], left_pad=True, seed=2))
  for b in batches:
    mask = hf_models.target_mask(b)
    assert not mask.all()
    _assert_close(fwd(pretrained.params, b), hf_models.hf_logits(model, b), mask)


def test_rope_scaling_is_what_makes_llama3_match(saved, mesh_rules):
  """Control: the same weights without Llama-3 frequency scaling do not match (the test can fail)."""
  path, model = saved("llama3")
  pretrained = convert.import_hf(path, *mesh_rules, rope_scaling=None)
  b = hf_models.batch("decoder", [LENGTH] * ROWS)
  from instruct_jax import step  # pylint: disable=g-import-not-at-top
  ours = step.forward(build.Model(pretrained.config), pretrained.params, b)
  assert np.abs(np.asarray(ours) - hf_models.hf_logits(model, b)).max() > 1e-2


def _greedy(fwd, params, b: dict, start: int, n: int) -> np.ndarray:
  """Non-cached greedy decoding: rerun the whole sequence for each new token, written at `start + t`.

  The sequence is padded to its final length up front; causal attention keeps the not-yet-written
  positions from affecting earlier logits.
  """
  b = {k: np.array(v) for k, v in b.items()}
  tokens = b["decoder_input_tokens"]
  for t in range(n):
    logits = fwd(params, b)
    tokens[:, start + t] = np.asarray(logits[:, start + t - 1]).argmax(-1)
  return tokens[:, start:start + n]


@pytest.mark.parametrize("name", ["t5_flan", "llama3", "mistral", "qwen3",
                                  *(pytest.param(n, marks=pytest.mark.slow) for n in ("qwen2", "gemma2", "gemma3"))])
def test_greedy_tokens_match_generate(name, imported):
  pretrained, fwd, model = imported(name)
  n = 6
  if hf_models.KINDS[name] == "encoder_decoder":
    b = hf_models.batch("encoder_decoder", [12, 9, 5], [1, 1, 1], seed=3)
    b["decoder_segment_ids"][:] = 1
    ours = _greedy(fwd, pretrained.params, b, 1, n)
    # use_cache=False: transformers 5.23 sizes T5's decoder cache by num_layers (the encoder's depth), which
    # breaks generate when num_decoder_layers differs (IndexError in cache_utils).
    with torch.no_grad():
      ref = model.generate(input_ids=torch.tensor(b["encoder_input_tokens"]),
                           attention_mask=torch.tensor(b["encoder_segment_ids"]), max_new_tokens=n,
                           do_sample=False, num_beams=1, use_cache=False).numpy()[:, 1:]
  else:
    prompt = hf_models.batch("decoder", [6, 4, 2], left_pad=True, length=6, seed=3)
    b = {k: np.concatenate([v, np.zeros((ROWS, n), np.int32)], axis=1) for k, v in prompt.items()}
    b["decoder_segment_ids"][:, 6:] = 1
    b["decoder_positions"] = np.maximum(np.cumsum(b["decoder_segment_ids"], axis=1) - 1, 0).astype(np.int32)
    ours = _greedy(fwd, pretrained.params, b, 6, n)
    with torch.no_grad():
      ref = model.generate(input_ids=torch.tensor(prompt["decoder_input_tokens"]),
                           attention_mask=torch.tensor(prompt["decoder_segment_ids"]), max_new_tokens=n,
                           do_sample=False, num_beams=1, pad_token_id=0).numpy()[:, 6:]
  eos = model.generation_config.eos_token_id
  compared = 0
  for row_ours, row_ref in zip(ours, ref):  # transformers pads a row after its end-of-text
    stop = (list(row_ref).index(eos) + 1) if eos in row_ref else len(row_ref)
    np.testing.assert_array_equal(row_ours[:stop], row_ref[:stop])
    compared += stop
  assert compared >= 2 * n, "too few tokens before end-of-text to compare; pick another seed"


def test_sliding_window_is_what_makes_mistral_match(saved, mesh_rules):
  """Control: the same Mistral weights attending to every position do not match (the window is real)."""
  path, model = saved("mistral")
  pretrained = convert.import_hf(path, *mesh_rules)
  assert pretrained.config.sliding_window == hf_models.SLIDING_WINDOW
  full = convert.import_hf(path, *mesh_rules, sliding_window=None)
  b = hf_models.batch("decoder", [LENGTH] * ROWS)
  from instruct_jax import step  # pylint: disable=g-import-not-at-top
  ours = step.forward(build.Model(full.config), full.params, b)
  assert np.abs(np.asarray(ours) - hf_models.hf_logits(model, b)).max() > 1e-2
