"""Chat-format tokens added to a checkpoint's tokenizer (both backends) and its embedding tables grown by their rows."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from instruct_jax import configs, convert, sharding
from instruct_jax import plan as plan_lib
from instruct_jax.convert import added_tokens
from instruct_jax.data import chat
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import build, decoder, t5

CONVERSATION = [{"role": "user", "content": "Sort: 3 1 2"}, {"role": "assistant", "content": "1 2 3"}]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sort the numbers: 3 1 2", "Reverse: a b c"] * 40


def _sentencepiece(tmp_path) -> tokenizer_lib.Tokenizer:
  """A LLaMA-style SentencePiece model (unk 0, bos 1, eos 2) with no ChatML pieces."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_prefix=str(tmp_path / "tokenizer"),
                                 vocab_size=60, hard_vocab_limit=False, minloglevel=2, unk_id=0, bos_id=1, eos_id=2,
                                 pad_id=-1)
  return tokenizer_lib.load(tmp_path / "tokenizer.model")


def _tokenizer_json(tmp_path) -> tokenizer_lib.Tokenizer:
  """A byte-level BPE tokenizer.json with Llama-3's begin/end-of-text tokens and no ChatML tokens."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, tokenizers.trainers.BpeTrainer(
      vocab_size=300, show_progress=False, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                              "eos_token": "<|end_of_text|>"}))
  return tokenizer_lib.load(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("backend", ["sentencepiece", "tokenizer_json"])
def test_chatml_markers_become_the_next_ids_and_the_loss_scores_im_end(tmp_path, backend):
  src = tmp_path / "src"
  src.mkdir()
  tok = _sentencepiece(src) if backend == "sentencepiece" else _tokenizer_json(src)
  fmt = chat.resolve_format("chatml", tok)
  with pytest.raises(chat.ChatError, match="config.data.add_chat_tokens=True"):  # today's error names the way out
    chat.end_of_turn_id(fmt, tok)
  added = added_tokens.plan(fmt, tok, vocab_size=tok.vocab_size)
  assert added.tokens == ("<|im_start|>", "<|im_end|>") and added.ids == [tok.vocab_size, tok.vocab_size + 1]
  assert added.rows == tok.vocab_size + 2
  grown = added_tokens.extend_tokenizer(tok, added, tmp_path / "grown")
  assert grown.vocab_size == tok.vocab_size + 2 and type(grown) is type(tok)
  assert tokenizer_lib.load(tmp_path / "grown").vocab_size == grown.vocab_size  # the copy stands alone
  assert added_tokens.missing(fmt, grown) == ()
  assert chat.end_of_turn_id(fmt, grown) == tok.vocab_size + 1
  rendered = chat.render(fmt, CONVERSATION)
  ids, weights, _ = chat.scored_tokens(grown, rendered)
  assert ids.tolist().count(tok.vocab_size) == 2  # one <|im_start|> per message
  ends = [k for k, i in enumerate(ids) if i == tok.vocab_size + 1]
  assert len(ends) == 2 and weights[ends[0]] == 0 and weights[ends[1]] == 1  # the assistant's <|im_end|> is scored
  assert grown.decode(grown.encode("Sort the numbers")) == tok.decode(tok.encode("Sort the numbers"))
  assert added_tokens.plan(fmt, grown, grown.vocab_size) is None


def test_jinja_formats_name_their_special_strings(tmp_path):
  file = tmp_path / "mine.jinja"
  file.write_text(chat.named_formats()["llama3"]["template"])
  fmt = chat.resolve_format(str(file), None)
  assert fmt.specials[:3] == ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _grown(config, added, mesh, rules):
  rng = np.random.default_rng(0)  # random values of the parameters' shapes, placed as the model lays them out
  params = jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                        build.Model(config).abstract_params(mesh, rules))
  big = build.Model(added.grow(config))
  out = added_tokens.grow_params(params, big, added, mesh, rules)
  assert jax.tree.map(lambda a: a.shape, out) == jax.tree.map(lambda a: a.shape, nn.meta.unbox(big.param_shapes()))
  return jax.device_get(params), jax.device_get(out)


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_rows_grow_with_the_mean_and_old_rows_stay_bitwise(tied):
  mesh, rules = sharding.make_mesh({"fsdp": -1}), sharding.get_rules("fsdp")
  config = decoder.DecoderConfig(**{**decoder.SIZES["tiny"], "vocab_size": 96, "tie_embeddings": tied})
  added = added_tokens.AddedTokens(("<|im_start|>", "<|im_end|>"), first_id=96, old_rows=96)
  old, new = _grown(config, added, mesh, rules)
  table, grown = old["token_embedder"]["embedding"], new["token_embedder"]["embedding"]
  assert grown.shape == (98, 64) and np.array_equal(grown[:96], table)
  np.testing.assert_allclose(grown[96:], np.broadcast_to(table.mean(0), (2, 64)), rtol=1e-5, atol=1e-7)
  assert ("logits_dense" in new) == (not tied)
  if not tied:
    kernel, grown_kernel = old["logits_dense"]["kernel"], new["logits_dense"]["kernel"]
    assert grown_kernel.shape == (64, 98) and np.array_equal(grown_kernel[:, :96], kernel)
    np.testing.assert_allclose(grown_kernel[:, 96:], np.stack([kernel.mean(1)] * 2, 1), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(new["final_norm"]["scale"], old["final_norm"]["scale"])


def test_padded_vocabulary_rows_are_used_instead_of_growing_and_t5_grows_too():
  mesh, rules = sharding.make_mesh({"fsdp": -1}), sharding.get_rules("fsdp")
  config = t5.T5Config(**{**t5.SIZES["tiny"], "vocab_size": 128})
  added = added_tokens.AddedTokens(("<|im_start|>", "<|im_end|>"), first_id=100, old_rows=128)  # 28 unused rows
  assert added.rows == 128 and "no growth" in added.describe()
  old, new = _grown(config, added, mesh, rules)
  table, grown = old["token_embedder"]["embedding"], new["token_embedder"]["embedding"]
  assert grown.shape == table.shape
  np.testing.assert_array_equal(np.delete(grown, [100, 101], 0), np.delete(table, [100, 101], 0))
  np.testing.assert_allclose(grown[100:102], np.stack([table[:100].mean(0)] * 2), rtol=1e-5, atol=1e-7)
  added = added_tokens.AddedTokens(("<|im_end|>",), first_id=128, old_rows=128)
  _, new = _grown(config, added, mesh, rules)
  assert new["token_embedder"]["embedding"].shape[0] == 129
  if "logits_dense" in new["decoder"]:
    assert new["decoder"]["logits_dense"]["kernel"].shape[-1] == 129


def test_lora_runs_are_refused_and_the_key_turns_adding_off(tmp_path):
  src = tmp_path / "ckpt"
  src.mkdir()
  tok = _sentencepiece(src)
  config = configs.base()
  config.init_from, config.data.chat_format = str(src), "chatml"
  pretrained = convert.Pretrained(decoder.DecoderConfig(**{**decoder.SIZES["tiny"], "vocab_size": tok.vocab_size}),
                                  None, str(src))
  fmt = chat.resolve_format("chatml", tok)
  assert plan_lib.chat_tokens(config, pretrained, fmt).ids == [tok.vocab_size, tok.vocab_size + 1]
  config.model.lora.rank = 4
  with pytest.raises(configs.ConfigError, match="LoRA"):
    plan_lib.chat_tokens(config, pretrained, fmt)
  config.data.add_chat_tokens = False
  assert plan_lib.chat_tokens(config, pretrained, fmt) is None
