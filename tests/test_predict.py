"""Text-level predict functions on a real tiny model and a real sentencepiece tokenizer."""
import numpy as np
import pytest

from instruct_jax import predict, sampling
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.lm import backends
from instruct_jax.lm import model as model_backend
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
  backend = model_backend.ModelBackend(gen)
  out = backend.complete(["sort these", "the list", "no"], backends.GenParams(max_new_tokens=5, temperature=0.0))
  assert [c.text for c in out] == texts  # greedy through the backend equals greedy directly


@pytest.mark.parametrize("kind", helpers.KINDS)
def test_an_over_long_prompt_loses_its_end_or_with_keep_end_its_beginning(kind, tokenizer):
  model = helpers.tiny_model(kind, vocab_size=128)
  text = "sort these numbers 3 1 2 4 5 6 7 8 9 then reverse the list"
  ids = tokenizer.encode(text).tolist()
  assert len(ids) > 8
  if kind == "encoder_decoder":  # 8 = 7 of the text's ids + end-of-text
    assert model.prompt_ids(tokenizer, text, 8) == ids[:7] + [tokenizer.eos_id]
    assert model.prompt_ids(tokenizer, text, 8, keep_end=True) == ids[-7:] + [tokenizer.eos_id]
  else:  # begin-of-text + 8 of the text's ids
    assert model.prompt_ids(tokenizer, text, 8) == [tokenizer.bos_id] + ids[:8]
    assert model.prompt_ids(tokenizer, text, 8, keep_end=True) == [tokenizer.bos_id] + ids[-8:]
  assert model.prompt_ids(tokenizer, "the list", 8, keep_end=True) == model.prompt_ids(tokenizer, "the list", 8)
  # Scoring cuts the same way: with keep_end the prompt's last word counts and a prefix does not.
  params = helpers.init_params(model)
  start = predict.make_loglik_fn(model, params, tokenizer, batch_size=2, max_prompt_tokens=8)
  end = predict.make_loglik_fn(model, params, tokenizer, batch_size=2, max_prompt_tokens=8, keep_end=True)
  a, b = text, text.replace("the list", "the items")
  assert start([a], ["yes"])[0] == start([b], ["yes"])[0]  # the cut-off end makes no difference
  assert end([a], ["yes"])[0] != end([b], ["yes"])[0]
  np.testing.assert_allclose(end(["count " + a], ["yes"]), end([a], ["yes"]), rtol=1e-6)


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory):
  from instruct_jax.data import chat  # pylint: disable=g-import-not-at-top
  fmt = chat.resolve_format("chatml", None)
  texts = [chat.prompt(fmt, [{"role": "user", "content": f"count the items {i} {i + 1}"}]) + "yes no the list"
           for i in range(300)]
  return tokenizer_lib.train(texts, vocab_size=120, out_dir=tmp_path_factory.mktemp("spm_chatml"),
                             user_defined_symbols=fmt.user_symbols()), fmt


def test_under_a_chat_format_a_decoder_scores_options_with_its_end_of_turn_and_keeps_the_generation_prompt(
    chatml_tokenizer, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import chat  # pylint: disable=g-import-not-at-top
  tok, fmt = chatml_tokenizer
  model = helpers.tiny_model("decoder", vocab_size=128)
  params = helpers.init_params(model)
  eot = predict.chat_stop_id(model, tok, fmt)
  assert eot >= 0 and eot != tok.eos_id
  eval_cfg = ml_collections.ConfigDict(dict(max_new_tokens=3, num_beams=1, batch_size=2, rank_classification=True))
  fns = predict.predict_fns(model, params, tok, eval_cfg, max_prompt_tokens=64, chat_format=fmt)
  prompt = predict.chat_prompts([[{"role": "user", "content": "count the items 3 4"}]], fmt)[0]
  special = chat.SpecialAware(tok)
  with_eot = fns.loglik([prompt], ["yes"])[0]
  with_eos = predict.make_loglik_fn(model, params, special, batch_size=2, max_prompt_tokens=64)([prompt], ["yes"])[0]
  # The two scores share every term but the last: log p(end | prompt, "yes"), read here off one forward pass.
  ctx = [tok.bos_id] + special.encode(prompt).tolist() + tok.encode("yes").tolist()
  logits = model.apply(params, {"decoder_input_tokens": np.asarray([ctx], np.int32)})[0, -1]
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(with_eot - with_eos, logp[eot] - logp[tok.eos_id], rtol=1e-4, atol=1e-4)

  seen = []
  real = predict.sampling.generate
  monkeypatch.setattr(predict.sampling, "generate", lambda m, p, ids, *a, **k: seen.extend(ids) or real(m, p, ids, *a, **k))
  long = [{"role": "user", "content": " ".join(f"count the items {i}" for i in range(40))}]
  text = predict.chat_prompts([long], fmt)[0]
  whole = special.encode(text).tolist()
  assert len(whole) > 64
  fns_short = predict.predict_fns(model, params, tok, eval_cfg, max_prompt_tokens=64, chat_format=fmt)
  fns_short.generate([text])
  assert seen[0] == [tok.bos_id] + whole[-64:]  # the generation prompt (the assistant header) survives the cut
  seen.clear()
  predict.make_chat_generate_fn(model, params, tok, fmt, sampling.DecodeConfig(max_new_tokens=2),
                                max_prompt_tokens=64)([long])
  assert seen[0] == [tok.bos_id] + whole[-64:]
