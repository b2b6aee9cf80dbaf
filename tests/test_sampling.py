"""KV-cache decoding equals recomputation; beam search with one beam equals greedy; batching is exact."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import sampling
from tests import helpers

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], list(range(12, 31))]


# T5's unrolled decoding is slow only (its scanned sibling and the decoder's unrolled one cover the same code).
@pytest.fixture(scope="module", params=[pytest.param((k, s), marks=pytest.mark.slow) if (k, s) == ("encoder_decoder", False)
                                        else (k, s) for k in helpers.KINDS for s in (False, True)],
                ids=lambda p: f"{p[0]}-{'scan' if p[1] else 'loop'}")
def model_and_params(request):
  kind, scan = request.param
  model = helpers.tiny_model(kind, scan_layers=scan)
  return model, helpers.init_params(model, seed=3)


def test_cache_equals_recompute_and_one_beam_equals_greedy(model_and_params):
  model, params = model_and_params
  cfg = sampling.DecodeConfig(max_new_tokens=10, eos_id=1)
  cached = sampling.generate(model, params, PROMPTS, cfg)
  assert cached == sampling.generate(model, params, PROMPTS, cfg, use_cache=False)
  assert all(len(c) == 10 for c in cached)  # random weights rarely emit EOS: we test the full budget
  one_beam = _beam_with(model, params, cfg, 1)
  assert one_beam == cached


def _beam_with(model, params, cfg, beams):
  """Runs the beam-search loop itself (generate() routes num_beams=1 to the sampler)."""
  P = 32
  ids = np.zeros((len(PROMPTS), P), np.int32)
  pad = np.zeros(len(PROMPTS), np.int32)
  for i, p in enumerate(PROMPTS):
    if model.left_pad_prompts:
      ids[i, P - len(p):] = p
      pad[i] = P - len(p)
    else:
      ids[i, :len(p)] = p
  stepper = model.stepper(params, prompt_len=P, max_new_tokens=cfg.max_new_tokens, pad_id=cfg.pad_id,
                          use_cache=True)
  out = jax.jit(lambda i, pd: sampling._beam_loop(stepper, i, pd, dataclasses.replace(cfg, num_beams=beams),
                                                  model.config.scan_layers))(jnp.asarray(ids), jnp.asarray(pad))
  return [row[:row.index(cfg.eos_id)] if cfg.eos_id in row else row for row in np.asarray(out).tolist()]


def test_batched_prompts_of_different_lengths_match_one_at_a_time(model_and_params):
  model, params = model_and_params
  cfg = sampling.DecodeConfig(max_new_tokens=6, eos_id=1)
  batched = sampling.generate(model, params, PROMPTS, cfg)
  for prompt, out in zip(PROMPTS, batched):
    assert sampling.generate(model, params, [prompt], cfg) == [out]


@pytest.mark.slow  # ~12 s each; beams of one equal greedy in the default suite
@pytest.mark.parametrize("kind", helpers.KINDS)
def test_exhaustive_beam_search_returns_the_most_likely_finished_sequence(kind):
  """Vocabulary 6, 3 new tokens, 36 beams: beam search is exhaustive and must match brute force."""
  import itertools

  from instruct_jax import step
  model = helpers.tiny_model(kind, vocab_size=6)
  params = helpers.init_params(model, seed=7)
  eos, prompt = 1, [2, 3, 4, 5]
  cfg = sampling.DecodeConfig(max_new_tokens=3, eos_id=eos, num_beams=36)
  beam = sampling.generate(model, params, [prompt], cfg)[0]

  def logprob(seq):
    if kind == "encoder_decoder":
      batch = {"encoder_input_tokens": jnp.asarray([prompt]), "decoder_input_tokens": jnp.asarray([[0] + seq[:-1]])}
      offset = 0
    else:
      batch = {"decoder_input_tokens": jnp.asarray([prompt + seq[:-1]])}
      offset = len(prompt) - 1
    lp = jax.nn.log_softmax(step.forward(model, params, batch)[0])
    return float(sum(lp[offset + i, t] for i, t in enumerate(seq)))

  finished = [list(body) + [eos] for n in range(3) for body in itertools.product([0, 2, 3, 4, 5], repeat=n)]
  best = max(finished, key=logprob)
  assert beam == best[:-1]


def test_stops_at_end_of_text():
  model = helpers.tiny_model("decoder")
  params = helpers.init_params(model)
  cfg = sampling.DecodeConfig(max_new_tokens=8, eos_id=1)
  first = sampling.generate(model, params, PROMPTS[:1], cfg)[0]
  # Make a token of the greedy path the end-of-text id: decoding must stop just before its first use.
  k = next(i for i in range(1, len(first)) if first[i] not in first[:i])
  stop_cfg = dataclasses.replace(cfg, eos_id=first[k])
  assert sampling.generate(model, params, PROMPTS[:1], stop_cfg)[0] == first[:k]


def test_sampling_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  top2 = sampling._filter_logits(logits, sampling.DecodeConfig(temperature=1.0, top_k=2))
  assert np.isfinite(np.asarray(top2)).sum() == 4 and (np.asarray(top2) > -1e9).sum() == 2
  nucleus = sampling._filter_logits(logits, sampling.DecodeConfig(temperature=1.0, top_p=0.7))
  assert (np.asarray(nucleus) > -1e9).tolist() == [[True, True, False, False]]
  draws = jax.vmap(lambda k: sampling._choose(logits, k, sampling.DecodeConfig(temperature=1.0, top_p=0.7)))(
      jax.random.split(jax.random.key(0), 200))
  assert set(np.asarray(draws).ravel().tolist()) == {0, 1}


@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_decoding_on_a_sharded_mesh_matches_one_device(kind):
  from instruct_jax import sharding
  model = helpers.tiny_model(kind)
  params = helpers.init_params(model, seed=2)
  cfg = sampling.DecodeConfig(max_new_tokens=6, eos_id=1)
  expected = sampling.generate(model, params, PROMPTS, cfg)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.get_rules("fsdp_tensor")
  boxed = model.param_shapes()
  sharded = jax.device_put(params, sharding.param_shardings(boxed, mesh, rules))
  assert sampling.generate(model, sharded, PROMPTS, cfg, mesh=mesh, rules=rules) == expected
  assert sampling.generate(model, sharded, PROMPTS, dataclasses.replace(cfg, num_beams=2), mesh=mesh,
                           rules=rules) == sampling.generate(model, params, PROMPTS,
                                                             dataclasses.replace(cfg, num_beams=2))
