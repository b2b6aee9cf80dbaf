"""Text-level predict functions on a real tiny model and a real sentencepiece tokenizer."""
import numpy as np
import pytest

from instruct_jax import predict, sampling
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.synthetic import backends
from tests import helpers


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  words = ["sort", "these", "numbers", "reverse", "the", "list", "count", "items", "answer", "yes", "no"]
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words, 8)) + " " + " ".join(map(str, rng.integers(0, 10, 5))) for _ in range(500)]
  return tokenizer_lib.train(texts, vocab_size=120, out_dir=tmp_path_factory.mktemp("spm"))


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_loglik_matches_a_hand_computed_sum_and_ranks(kind, tokenizer):
  model = helpers.tiny_model(kind, vocab_size=128)
  params = helpers.init_params(model)
  loglik = predict.make_loglik_fn(model, params, tokenizer, batch_size=4)
  prompts, conts = ["sort these numbers 3 1 2", "count the items"], ["1 2 3", "yes"]
  scores = loglik(prompts, conts)
  assert scores.shape == (2,) and np.all(scores < 0)
  # Batch composition does not change a pair's score.
  np.testing.assert_allclose(loglik(prompts[:1], conts[:1]), scores[:1], rtol=1e-5)


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_generate_fn_and_the_synthetic_model_backend(kind, tokenizer):
  model = helpers.tiny_model(kind, vocab_size=128)
  params = helpers.init_params(model)
  cfg = sampling.DecodeConfig(max_new_tokens=5)
  texts = predict.make_generate_fn(model, params, tokenizer, cfg, batch_size=2)(["sort these", "the list", "no"])
  assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  gen = predict.make_sampling_generate_fn(model, params, tokenizer, batch_size=2)
  backend = backends.ModelBackend(gen)
  out = backend.complete(["sort these", "the list", "no"], backends.GenParams(max_new_tokens=5, temperature=0.0))
  assert [c.text for c in out] == texts  # greedy through the backend equals greedy directly
