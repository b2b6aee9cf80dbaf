"""ChatML on a checkpoint whose tokenizer lacks <|im_start|> / <|im_end|> (as Mistral-7B-v0.1's does): the run adds
them as tokens and grows the embeddings, resumes, and exports a model that transformers loads with the grown
vocabulary, whose apply_chat_template gives our prompt ids and whose greedy generate gives our tokens (slow: both
tokenizer backends, SentencePiece tokenizer.model and tokenizer.json)."""
import json
import pathlib

import jax
import numpy as np
import pytest

from instruct_jax import configs, predict, sampling, train
from instruct_jax import plan as plan_lib
from instruct_jax import workdir as workdir_lib
from instruct_jax.data import chat

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests.convert import hf_models  # noqa: E402  (needs torch)
from tests.test_pretrained_workflow import _bpe_llama, _cli  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUESTION = [{"role": "system", "content": "Answer the question."},
            {"role": "user", "content": "Sort the numbers: 3 1 2"}]
MAX_NEW = 8


def _sentencepiece_llama(directory: pathlib.Path) -> pathlib.Path:
  """A Llama with an untied output layer and a SentencePiece tokenizer.model (LLaMA's ids) of exactly its rows."""
  directory.mkdir()
  hf_models.train_spm(directory / "tokenizer.model", llama_ids=True)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  vocab = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
  config = transformers.LlamaConfig(**{**hf_models._LLAMA3, "vocab_size": vocab, "tie_word_embeddings": False,
                                       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  hf_models._redraw(model, 0)
  model.save_pretrained(directory, safe_serialization=True)
  return directory


def _chat_file(tmp_path) -> str:
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(40):
    xs = [str(v) for v in rng.integers(0, 10, 3)]
    user = {"role": "user", "content": "Sort the numbers: " + " ".join(xs)}
    reply = {"role": "assistant", "content": " ".join(sorted(xs))}
    lines.append(json.dumps({"messages": [*QUESTION[:1], user, reply]}))
  (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
  return f"train={tmp_path / 'chat.jsonl'},test={tmp_path / 'chat.jsonl'}"


def _config(src, files, total_steps):
  c = configs.load(ROOT / "configs" / "finetune.py")
  c.init_from, c.total_steps, c.log_every, c.checkpoint_every = str(src), total_steps, 1, 0
  c.data.mixture, c.data.chat_format = "chat", "chatml"
  c.data_paths.chat_files["talk"] = files
  c.data.batch_size, c.data.inputs_length, c.data.targets_length = 8, 64, 16
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 0
  return c


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sentencepiece", "tokenizer_json"])
def test_chatml_tokens_are_added_trained_resumed_and_exported(tmp_path, capsys, backend):
  src = _sentencepiece_llama(tmp_path / "ckpt") if backend == "sentencepiece" else _bpe_llama(tmp_path / "ckpt")
  hf = json.loads((src / "config.json").read_text())
  vocab = hf["vocab_size"]
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
  embed_in = torch_model.model.embed_tokens.weight.detach().numpy()
  files = _chat_file(tmp_path)
  work = tmp_path / "work"

  # The dry run reports the growth (and writes nothing).
  assert train.dry_run(_config(src, files, 3)) == []
  out = capsys.readouterr().out
  assert f"config.data.add_chat_tokens adds <|im_start|> (id {vocab}), <|im_end|> (id {vocab + 1})" in out
  assert f"vocab_size={vocab + 2}," in out

  # Step 0: the markers are the next ids; the old rows are the checkpoint's, bit for bit; new rows are the mean.
  train.train_and_evaluate(_config(src, files, 0), str(work))
  out = capsys.readouterr().out
  assert (f"Added chat tokens to the tokenizer: <|im_start|> (id {vocab}), <|im_end|> (id {vocab + 1}); embedding rows "
          f"{vocab} -> {vocab + 2}") in out
  tok = workdir_lib.tokenizer(work)
  assert tok.vocab_size == vocab + 2
  assert chat.encode(tok, "<|im_start|>user\nHi<|im_end|>").tolist().count(vocab + 1) == 1
  assert json.loads((work / "model_config.json").read_text())["config"]["vocab_size"] == vocab + 2
  loaded = plan_lib.load(work, step=0)
  params = jax.device_get(loaded.params)
  table = params["token_embedder"]["embedding"]
  assert table.shape[0] == vocab + 2 and np.array_equal(table[:vocab], embed_in)
  np.testing.assert_allclose(table[vocab:], np.stack([embed_in.mean(0)] * 2), rtol=1e-5, atol=1e-7)
  if backend == "sentencepiece":  # untied: the output layer grew too
    head = torch_model.lm_head.weight.detach().numpy()
    kernel = params["logits_dense"]["kernel"]
    assert np.array_equal(kernel[:, :vocab], head.T)
    np.testing.assert_allclose(kernel[:, vocab:].T, np.stack([head.mean(0)] * 2), rtol=1e-5, atol=1e-7)

  # Resume to step 3 (the restart check sees the same grown model and tokenizer).
  result = train.train_and_evaluate(_config(src, files, 3), str(work))
  assert result["final_step"] == 3 and "Resumed from checkpoint step 0" in capsys.readouterr().out
  assert workdir_lib.tokenizer(work).vocab_size == vocab + 2

  # Ours: the run's chat format, stopping at <|im_end|>.
  loaded = plan_lib.load(work)
  fmt = predict.chat_format(loaded.config, loaded.tokenizer)
  assert predict.chat_stop_id(loaded.model, loaded.tokenizer, fmt) == vocab + 1
  prompt = predict.chat_prompts([QUESTION], fmt)[0]
  our_prompt = loaded.model.prompt_ids(chat.SpecialAware(loaded.tokenizer), prompt, loaded.config.data.inputs_length)
  _, ours = predict.make_chat_generate_fn(loaded.model, loaded.params, loaded.tokenizer, fmt,
                                          sampling.DecodeConfig(max_new_tokens=MAX_NEW), with_ids=True)([QUESTION])[0]

  # transformers on the export: the grown vocabulary, the same prompt ids and the same greedy tokens.
  export = tmp_path / "export"
  _cli("instruct_jax.convert", "--to", "hf", "--src", work, "--dst", export)
  assert json.loads((export / "config.json").read_text())["vocab_size"] == vocab + 2
  hf_tok = transformers.AutoTokenizer.from_pretrained(export)
  assert len(hf_tok) == vocab + 2 and hf_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [vocab, vocab + 1]
  text = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
  ids = hf_tok(text, add_special_tokens=False)["input_ids"]
  assert ids == our_prompt, (ids, our_prompt)
  assert json.loads((export / "generation_config.json").read_text())["eos_token_id"][-1] == vocab + 1  # stops there
  model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  assert model.get_input_embeddings().weight.shape[0] == vocab + 2
  with torch.no_grad():
    generated = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)
  theirs = generated[0, len(ids):].tolist()
  theirs = theirs[:min([theirs.index(s) for s in (hf_tok.eos_token_id, vocab + 1) if s in theirs] + [len(theirs)])]
  assert theirs == list(ours)


@pytest.mark.slow
def test_t5_checkpoint_takes_chatml_tokens_trains_and_exports_what_transformers_generates(tmp_path, capsys):
  """The encoder-decoder case: a T5 checkpoint whose SentencePiece model lacks ChatML's markers; the run gives them
  the checkpoint's unused embedding rows (no growth), trains on conversations, and the export's tokenizer, chat
  template and weights give transformers our prompt ids and our greedy reply."""
  src = hf_models.save(hf_models.build("t5_flan"), tmp_path / "ckpt", "t5_flan")
  hf_models.train_spm(src / "spiece.model")
  rows = json.loads((src / "config.json").read_text())["vocab_size"]
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  pieces = spm.SentencePieceProcessor(model_file=str(src / "spiece.model")).get_piece_size()
  assert pieces + 2 <= rows  # the markers fit the unused rows
  files = _chat_file(tmp_path)
  work = tmp_path / "work"
  train.train_and_evaluate(_config(src, files, 3), str(work))
  out = capsys.readouterr().out
  assert (f"Added chat tokens to the tokenizer: <|im_start|> (id {pieces}), <|im_end|> (id {pieces + 1}); in unused "
          f"rows of the {rows}-row embedding (no growth)") in out

  loaded = plan_lib.load(work)
  fmt = predict.chat_format(loaded.config, loaded.tokenizer)
  assert predict.chat_stop_id(loaded.model, loaded.tokenizer, fmt) == -1  # T5's replies end with end-of-text
  prompt = predict.chat_prompts([QUESTION], fmt)[0]
  our_prompt = loaded.model.prompt_ids(chat.SpecialAware(loaded.tokenizer), prompt, loaded.config.data.inputs_length)
  assert our_prompt.count(pieces) == 3 and our_prompt.count(pieces + 1) == 2  # system, user, assistant header
  _, ours = predict.make_chat_generate_fn(loaded.model, loaded.params, loaded.tokenizer, fmt,
                                          sampling.DecodeConfig(max_new_tokens=MAX_NEW), with_ids=True)([QUESTION])[0]

  export = tmp_path / "export"
  _cli("instruct_jax.convert", "--to", "hf", "--src", work, "--dst", export)
  hf_tok = transformers.AutoTokenizer.from_pretrained(export)
  assert hf_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [pieces, pieces + 1]
  text = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
  assert text == prompt
  ids = hf_tok(text)["input_ids"]  # T5's tokenizer appends </s>, as our encoder input ends with it
  assert ids == our_prompt, (ids, our_prompt)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(export, dtype=torch.float32).eval()
  with torch.no_grad():  # use_cache=False: see tests/test_pretrained_workflow.py (this T5's decoder is deeper)
    generated = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, use_cache=False)
  theirs = generated[0, 1:].tolist()
  theirs = theirs[:theirs.index(hf_tok.eos_token_id)] if hf_tok.eos_token_id in theirs else theirs
  assert theirs == list(ours)
