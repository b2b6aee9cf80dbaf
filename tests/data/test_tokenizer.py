"""The two tokenizer backends (SentencePiece, Hugging Face tokenizer.json), `load`, `save` and the transformers
export. Every tokenizer is trained here; nothing is downloaded."""
import json
import pathlib
import pickle
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from instruct_jax.data import mixtures
from instruct_jax.data import render
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.data import transforms

BOT, EOT = "<|begin_of_text|>", "<|end_of_text|>"

# Lines beyond the rendered tasks, so the vocabularies cover non-ASCII letters and the punctuation tested below.
_EXTRA = ["Café crème, über naïve résumé in Zürich: é ü É Ü.",
          "Hello, world! (1+2=3)? Yes; no... 'single' \"double\" [x] {y} a/b a-b a_b #5 50% $3 & @ * = +"] * 20

# Texts the exports must tokenize like we do: newlines, digits, punctuation, runs of spaces, leading and
# trailing spaces, non-ASCII letters.
TEXTS = ["Input: 3 1 2\nTask: sort\nOutput:", "Sort these numbers: 10 9 8", "Café über naïve Zürich",
         "Hello, world! (1+2=3)?", "  leading and trailing  ", "a  b   c", "x\n\ny\tz", " ", "", "no"]


@pytest.fixture(scope="module")
def texts(catalogues):
  tasks, mixes = catalogues
  rendered = render.sample_texts(mixtures.task_rates("builtin", tasks, mixes), tasks, render.RenderConfig(), n=2000)
  return rendered + _EXTRA


@pytest.fixture(scope="module")
def trained(texts, tmp_path_factory):
  """A model trained by `train`: pad 0, end 1, unk 2, begin 3."""
  return tokenizer_lib.train(texts, vocab_size=300, out_dir=tmp_path_factory.mktemp("trained"))


def _train_llama(texts, path, **kwargs):
  lines = [line for text in texts for line in text.splitlines() if line.strip()]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path), unk_id=0, bos_id=1,
                                 eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2, **kwargs)
  return tokenizer_lib.load(f"{path}.model")


@pytest.fixture(scope="module")
def llama_unigram(texts, tmp_path_factory):
  """LLaMA's ids (unk 0, begin 1, end 2, no pad) on a default unigram model."""
  return _train_llama(texts, tmp_path_factory.mktemp("llama_unigram") / "tokenizer", vocab_size=300,
                      character_coverage=1.0)


@pytest.fixture(scope="module")
def llama_bpe(texts, tmp_path_factory):
  """LLaMA's ids and settings: BPE, byte fallback, no normalization, whitespace kept as it is."""
  return _train_llama(texts, tmp_path_factory.mktemp("llama_bpe") / "tokenizer", vocab_size=500, model_type="bpe",
                      byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                      split_digits=True)


def _train_bpe(texts, out_dir, template: bool):
  """A Llama-3-style byte-level BPE: specials added after the learned vocabulary, named in tokenizer_config.json."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.add_special_tokens([BOT, EOT])
  if template:  # what Llama-3 ships
    processors = tokenizers.processors
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOT} $A", pair=f"{BOT} $A {BOT}:1 $B:1",
                                      special_tokens=[(BOT, tok.token_to_id(BOT))])])
  out_dir.mkdir(parents=True, exist_ok=True)
  tok.save(str(out_dir / "tokenizer.json"))
  config = {"bos_token": BOT, "eos_token": EOT, "clean_up_tokenization_spaces": True,
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072,
            "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "special": True} for t in (BOT, EOT)}}
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
  return tokenizer_lib.load(out_dir)


@pytest.fixture(scope="module")
def bpe(texts, tmp_path_factory):
  return _train_bpe(texts, tmp_path_factory.mktemp("bpe") / "template", template=True)


@pytest.fixture(scope="module")
def bpe_bare(texts, tmp_path_factory):
  """The same BPE without a post-processor: nothing in tokenizer.json adds the begin-of-text token."""
  return _train_bpe(texts, tmp_path_factory.mktemp("bpe") / "bare", template=False)


@pytest.fixture(scope="module")
def tokenizers_by_name(trained, llama_unigram, llama_bpe, bpe, bpe_bare):
  return {"trained": trained, "llama_unigram": llama_unigram, "llama_bpe": llama_bpe, "bpe": bpe,
          "bpe_bare": bpe_bare}


def _ids(tok):
  return tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.has_pad


# ---------------------------------------------------------------- load


def test_load_picks_the_backend_from_files_and_directories(trained, llama_unigram, bpe, tmp_path):
  assert isinstance(trained, tokenizer_lib.SentencePieceTokenizer)
  assert isinstance(bpe, tokenizer_lib.HFTokenizer) and bpe.model_path.endswith("tokenizer.json")
  model_dir = pathlib.Path(trained.model_path).parent
  assert tokenizer_lib.load(model_dir).model_path == trained.model_path
  assert tokenizer_lib.load(trained.model_path).model_path == trained.model_path
  assert tokenizer_lib.load(pathlib.Path(llama_unigram.model_path).parent).model_path == llama_unigram.model_path
  assert isinstance(tokenizer_lib.load(bpe.model_path), tokenizer_lib.HFTokenizer)
  # SentencePiece files come first, in this order, then tokenizer.json.
  both = tmp_path / "both"
  both.mkdir()
  shutil.copy(bpe.model_path, both / "tokenizer.json")
  shutil.copy(llama_unigram.model_path, both / "tokenizer.model")
  assert tokenizer_lib.load(both).bos_id == 1
  shutil.copy(trained.model_path, both / "spiece.model")
  assert tokenizer_lib.load(both).model_path == str(both / "spiece.model")
  assert isinstance(tokenizer_lib.load(bpe.model_path), tokenizer_lib.HFTokenizer)
  assert isinstance(tokenizer_lib.load(model_dir), tokenizer_lib.SentencePieceTokenizer)


def test_load_errors_name_the_path_and_what_was_looked_for(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tokenizer_lib.load(tmp_path / "nope.model")
  assert str(tmp_path / "nope.model") in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(FileNotFoundError) as e:
    tokenizer_lib.load(tmp_path)
  message = str(e.value)
  assert str(tmp_path) in message and "\n" not in message
  assert all(name in message for name in ("spm.model", "spiece.model", "tokenizer.model", "tokenizer.json"))
  (tmp_path / "vocab.txt").write_text("a\n")
  with pytest.raises(ValueError, match="vocab.txt: not a tokenizer file"):
    tokenizer_lib.load(tmp_path / "vocab.txt")
  (tmp_path / "bad.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="bad.model: not a SentencePiece model"):
    tokenizer_lib.load(tmp_path / "bad.model")


# ---------------------------------------------------------------- special ids


def test_sentencepiece_ids(trained, llama_unigram, llama_bpe):
  assert _ids(trained)[1:] == (0, 1, 3, 2, True)
  assert [trained.piece(i) for i in range(4)] == ["<pad>", "</s>", "<unk>", "<s>"]
  for tok in (llama_unigram, llama_bpe):  # no pad: 0 (the unk id) only fills padded positions
    assert _ids(tok)[1:] == (0, 2, 1, 0, False)


def test_sentencepiece_models_without_eos_or_with_eos_equal_to_pad_are_refused(tmp_path):
  lines = ["a b c the cat sat on a mat"] * 50
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "noeos"), vocab_size=20,
                                 unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
  with pytest.raises(ValueError, match="noeos.model: the tokenizer defines no end-of-text"):
    tokenizer_lib.load(tmp_path / "noeos.model")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "same"), vocab_size=20,
                                 unk_id=1, bos_id=-1, eos_id=0, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
  # Without a pad piece id 0 still fills padding; a decoder masks padding by weights, so end-of-text 0 loads, but
  # T5's decoder starts from id 0, so its rows refuse it.
  same = tokenizer_lib.load(tmp_path / "same.model")
  assert same.eos_id == same.pad_id == 0
  with pytest.raises(ValueError, match="decoder start/pad id 0"):
    transforms.seq2seq_features([5], [6], eos_id=same.eos_id, max_input_len=4, max_target_len=4)


def test_hf_ids_come_from_tokenizer_config(bpe):
  assert bpe.vocab_size == 402 and bpe.piece(bpe.bos_id) == BOT and bpe.piece(bpe.eos_id) == EOT
  assert (bpe.bos_id, bpe.eos_id) == (400, 401)
  assert (bpe.pad_id, bpe.has_pad, bpe.unk_id) == (0, False, -1)
  assert bpe.piece(0) == "!"  # id 0 is an ordinary byte, not padding


def _bpe_dir(bpe, tmp_path, name, **files):
  d = tmp_path / name
  d.mkdir()
  shutil.copy(bpe.model_path, d / "tokenizer.json")
  for file, content in files.items():
    (d / f"{file}.json").write_text(json.dumps(content))
  return d


def test_hf_special_tokens_are_resolved_in_order(bpe, tmp_path):
  load = tokenizer_lib.load
  # A token may be an object with "content"; special_tokens_map.json serves when tokenizer_config.json is silent.
  d = _bpe_dir(bpe, tmp_path, "objects", tokenizer_config={"eos_token": {"content": EOT, "special": True}},
               special_tokens_map={"bos_token": BOT, "eos_token": BOT, "pad_token": "!"})
  assert _ids(load(d)) == (402, 0, 401, 400, -1, True)
  # config.json and generation_config.json give ids; a list of stop ids gives its first.
  d = _bpe_dir(bpe, tmp_path, "ids", config={"bos_token_id": 400, "eos_token_id": [401, 7]},
               generation_config={"eos_token_id": 5, "pad_token_id": 9})
  assert _ids(load(d)) == (402, 9, 401, 400, -1, True)
  # The tokenizer's files win over the model's; an explicit null there means "none".
  d = _bpe_dir(bpe, tmp_path, "null", tokenizer_config={"eos_token": EOT, "pad_token": None, "bos_token": None},
               config={"bos_token_id": 5, "eos_token_id": 6, "pad_token_id": 7})
  assert _ids(load(d)) == (402, 0, 401, -1, -1, False)


def test_hf_pad_equal_to_eos_is_accepted(bpe, tmp_path):
  tok = tokenizer_lib.load(_bpe_dir(bpe, tmp_path, "same", tokenizer_config={"eos_token": EOT, "pad_token": EOT}))
  assert tok.pad_id == tok.eos_id == 401 and tok.has_pad


@pytest.mark.parametrize("files, message", [
    ({"tokenizer_config": {"eos_token": "<|eot_id|>"}}, r"tokenizer_config.json: eos_token '<\|eot_id\|>' is not in"),
    ({"special_tokens_map": {"eos_token": EOT, "pad_token": "<pad>"}}, "special_tokens_map.json: pad_token '<pad>'"),
    ({"config": {"eos_token_id": 5000}}, "config.json: eos_token_id 5000 is not an id of"),
    ({"config": {"bos_token_id": 400}}, "tokenizer.json: the tokenizer defines no end-of-text token"),
])
def test_hf_special_token_errors_name_the_file_and_field(bpe, tmp_path, files, message):
  with pytest.raises(ValueError, match=message):
    tokenizer_lib.load(_bpe_dir(bpe, tmp_path, "d", **files))


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("name", ["trained", "llama_unigram", "llama_bpe", "bpe"])
def test_encode_decode_round_trip(tokenizers_by_name, texts, name):
  tok = tokenizers_by_name[name]
  # Models with SentencePiece's default normalizer fold whitespace runs into one space; the others keep text.
  folds = name in ("trained", "llama_unigram")
  for text in TEXTS + texts[:30]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == (" ".join(text.split()) if folds else text)
  batch = TEXTS + texts[:30]
  for threads in (1, 2):
    assert [list(ids) for ids in tok.encode_batch(batch, num_threads=threads)] == [list(tok.encode(t)) for t in batch]


def test_decode_stops_at_eos_and_skips_specials(trained, llama_unigram, bpe):
  for tok in (trained, llama_unigram, bpe):
    ids = list(tok.encode("Sort these numbers: 3 1 12"))
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, *ids]) == tok.decode(ids)
    assert tok.decode([*ids, -1, tok.vocab_size, 10**6]) == tok.decode(ids)  # outside the vocabulary
  # A real pad token is skipped; without one, id 0 is an ordinary piece and kept.
  ids = list(trained.encode("Sort 3 1"))
  assert trained.decode([0, *ids, 0]) == trained.decode(ids) == "Sort 3 1"
  assert bpe.decode([0, *bpe.encode(" Sort"), 0]) == "! Sort!"
  assert llama_unigram.decode([0]) == ""  # LLaMA's id 0 is <unk>: dropped, as transformers' skip_special_tokens
  assert list(trained.encode("12")[-2:]) == [trained.encode("1")[-1], trained.encode("2")[-1]]  # digits split


@pytest.mark.parametrize("name", ["trained", "llama_unigram", "llama_bpe", "bpe", "bpe_bare"])
def test_save_load_and_pickle_keep_the_ids(tokenizers_by_name, tmp_path, name):
  tok = tokenizers_by_name[name]
  files = tok.save(tmp_path / "saved")
  assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(files)
  for clone in (tokenizer_lib.load(tmp_path / "saved"), pickle.loads(pickle.dumps(tok))):
    assert type(clone) is type(tok) and _ids(clone) == _ids(tok)
    assert [list(clone.encode(t)) for t in TEXTS] == [list(tok.encode(t)) for t in TEXTS]


def test_hf_save_keeps_ids_read_from_model_configs(bpe, trained, tmp_path):
  d = _bpe_dir(bpe, tmp_path, "ids", config={"bos_token_id": 400, "eos_token_id": 401, "pad_token_id": 5})
  tok = tokenizer_lib.load(d)
  tok.save(tmp_path / "saved")
  assert _ids(tokenizer_lib.load(tmp_path / "saved")) == _ids(tok) == (402, 5, 401, 400, -1, True)
  trained.save(tmp_path / "mixed")
  with pytest.raises(ValueError, match="spm.model exists and would be read instead of tokenizer.json"):
    tok.save(tmp_path / "mixed")


# ---------------------------------------------------------------- transformers export


def _auto_tokenizer(out_dir):
  # The export is written for (and checked against) transformers 5; 4.x cannot build a fast tokenizer from a
  # SentencePiece tokenizer.model under PreTrainedTokenizerFast.
  transformers = pytest.importorskip("transformers", minversion="5")
  transformers.logging.set_verbosity_error()
  return transformers.AutoTokenizer.from_pretrained(str(out_dir))


@pytest.mark.parametrize("name, family, hf_class", [
    ("trained", "t5", "T5Tokenizer"),
    ("trained", "decoder", "TokenizersBackend"),
    ("llama_unigram", "decoder", "TokenizersBackend"),
    ("llama_bpe", "decoder", "TokenizersBackend"),
    ("llama_bpe", "t5", "TokenizersBackend"),  # not T5-like: written like the decoder-only export
    ("bpe", "decoder", "TokenizersBackend"),
    ("bpe_bare", "decoder", "TokenizersBackend"),
    ("bpe_bare", "t5", "TokenizersBackend"),
])
def test_transformers_tokenizes_like_the_pipeline(tokenizers_by_name, texts, tmp_path, name, family, hf_class):
  tok = tokenizers_by_name[name]
  files = tok.save_for_hf(tmp_path, family)
  assert "tokenizer_config.json" in files and sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
  hf = _auto_tokenizer(tmp_path)
  assert type(hf).__name__ == hf_class and len(hf) == tok.vocab_size
  assert (hf.eos_token_id, hf.bos_token_id) == (tok.eos_id, tok.bos_id if tok.bos_id >= 0 else None)
  assert hf.pad_token_id == (tok.pad_id if tok.has_pad else None)
  for text in TEXTS + texts[:40]:
    ids = [int(i) for i in tok.encode(text)]
    want = ids + [tok.eos_id] if family == "t5" else [tok.bos_id] * tok.adds_bos + ids
    assert hf(text)["input_ids"] == want, text
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
  if isinstance(tok, tokenizer_lib.HFTokenizer):  # tokenizer.json alone adds the family's token too
    import tokenizers  # pylint: disable=g-import-not-at-top
    ids = tok.encode(TEXTS[0]).tolist()
    want = ids + [tok.eos_id] if family == "t5" else [tok.bos_id] * tok.adds_bos + ids
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXTS[0]).ids == want


@pytest.mark.parametrize("family, model_type", [("t5", "t5"), ("decoder", "llama"), ("decoder", "mistral")])
def test_transformers_export_next_to_a_model_config(trained, tmp_path, family, model_type):
  # A converted checkpoint has config.json beside the tokenizer; its model type must not change the tokenizer.
  trained.save_for_hf(tmp_path, family)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
  hf = _auto_tokenizer(tmp_path)
  ids = trained.encode(TEXTS[0]).tolist()
  assert hf(TEXTS[0])["input_ids"] == (ids + [1] if family == "t5" else [3] + ids)


def test_transformers_known_differences(trained, bpe, tmp_path):
  trained.save_for_hf(tmp_path / "sp", "decoder")
  hf = _auto_tokenizer(tmp_path / "sp")
  # Unknown characters encode alike, and decode alike: the unk id is dropped (SentencePiece itself shows " ⁇ ").
  ids = trained.encode("ab\u4e2d\u6587cd").tolist()
  assert trained.unk_id in ids and hf("ab\u4e2d\u6587cd")["input_ids"] == [3] + ids
  assert trained.decode(ids) == hf.decode(ids, skip_special_tokens=True) == "abcd"
  # A special token's text is ordinary text to SentencePiece, the special token itself to transformers.
  assert trained.eos_id not in trained.encode("a </s> b") and trained.eos_id in hf("a </s> b")["input_ids"]
  assert bpe.eos_id in bpe.encode(f"a {EOT} b")  # HFTokenizer keeps the tokenizers default, as transformers


def test_save_for_hf_refuses_unknown_row_formats_and_writes_decoders_without_bos(trained, tmp_path):
  with pytest.raises(ValueError, match="unknown row format 'gpt'"):
    trained.save_for_hf(tmp_path, "gpt")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c the cat sat on a mat"] * 50),
                                 model_prefix=str(tmp_path / "t5"), vocab_size=30, pad_id=0, eos_id=1, unk_id=2,
                                 bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  t5 = tokenizer_lib.load(tmp_path / "t5.model")
  assert not t5.adds_bos  # a decoder on T5's vocabulary: rows start with the text, and so does the export
  t5.save_for_hf(tmp_path / "dec", "decoder")
  ids = t5.encode("the cat sat").tolist()
  assert _auto_tokenizer(tmp_path / "dec")("the cat sat")["input_ids"] == ids
  assert t5.save_for_hf(tmp_path / "out", "t5")[0] == "spiece.model"
