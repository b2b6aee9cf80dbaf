"""Conversations: chat records, chat formats, the scored spans, and chat rows for both model kinds."""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import convert, losses, predict
from instruct_jax.data import chat
from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.data import transforms
from instruct_jax.models import build

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "I am fine"}, {"role": "user", "content": "how are you?"},
                {"role": "assistant", "content": "thanks, fine"}]
TEXT = ["Hello there, how are you? I am fine, thanks. The system says be brief.",
        "### Instruction: ### Input: ### Response: USER: ASSISTANT: Sort the numbers 3 1 2, then add them."] * 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A byte-level BPE tokenizer.json with added special tokens, and a tokenizer_config.json with a chat template."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("hf_chat")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TEXT, trainer)
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                                       "chat_template": CHATML,
                                                       "tokenizer_class": "PreTrainedTokenizerFast"}))
  return d


@pytest.fixture(scope="module")
def spm_chat(tmp_path_factory):
  """A SentencePiece model trained here for ChatML: its special strings are user-defined pieces."""
  fmt = chat.resolve_format("chatml", None)
  return tokenizer_lib.train(TEXT, vocab_size=150, out_dir=tmp_path_factory.mktemp("spm_chat"),
                             user_defined_symbols=fmt.user_symbols())


def _write(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


# --- records -------------------------------------------------------------------------------------------


def test_openai_and_sharegpt_records_read_alike(tmp_path):
  share = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hello there"},
                             {"from": "gpt", "value": "I am fine"}, {"from": "human", "value": "how are you?"},
                             {"from": "gpt", "value": "thanks, fine"}]}
  src = chat.ChatSource({"train": _write(tmp_path / "c.jsonl", [{"messages": CONVERSATION}, share])})
  records = src.load("train")
  assert [r["messages"] for r in records] == [CONVERSATION, CONVERSATION] and [r["turn"] for r in records] == [4, 4]
  turns = src.turns_view().load("train")  # the encoder-decoder view: one record per assistant turn
  assert [r["turn"] for r in turns] == [2, 4, 2, 4]


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}, "unknown role 'tool'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]}, "non-empty string"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "open with a user message"),
    ({"text": "hi"}, "'messages' \\(OpenAI\\) or 'conversations'"),
])
def test_bad_records_name_file_and_line_in_strict_mode_and_are_counted_in_lenient(tmp_path, record, message):
  good = {"messages": CONVERSATION[1:3]}
  path = _write(tmp_path / "bad.jsonl", [good, record, good])
  with pytest.raises(chat.ChatError, match=f"bad.jsonl:2: .*{message}"):
    chat.ChatSource({"train": path}).load("train")
  lenient = chat.ChatSource({"train": path}, strict=False)
  assert len(lenient.load("train")) == 2 and lenient.stats.bad_records == 1
  assert "bad.jsonl:2" in lenient.stats.problems[0]


# --- formats and spans ---------------------------------------------------------------------------------


def test_chatml_renders_with_its_special_strings_and_scores_assistant_turns_only():
  fmt = chat.resolve_format("chatml", None)
  r = chat.render(fmt, CONVERSATION)
  assert r["text"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
                       "<|im_start|>assistant\nI am fine<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n"
                       "<|im_start|>assistant\nthanks, fine<|im_end|>\n")
  assert [r["text"][a:b] for a, b in r["spans"]] == ["I am fine<|im_end|>", "thanks, fine<|im_end|>"]
  assert r["inputs"].endswith("how are you?<|im_end|>\n<|im_start|>assistant\n") and r["targets"] == "thanks, fine"


def test_alpaca_keeps_instruction_and_input_in_their_sections_and_vicuna_tags_roles():
  record = {"instruction": "Add the numbers.", "input": "3 1 2", "output": "6", "system": ""}
  r = chat.render(chat.resolve_format("alpaca", None), chat.instruction_messages(record))
  assert "### Instruction:\nAdd the numbers.\n\n### Input:\n3 1 2\n\n### Response:\n6</s>" in r["text"]
  assert r["inputs"].endswith("### Response:\n") and [r["text"][a:b] for a, b in r["spans"]] == ["6</s>"]
  v = chat.render(chat.resolve_format("vicuna", None), CONVERSATION)
  assert v["text"] == ("Be brief. USER: Hello there ASSISTANT: I am fine</s>USER: how are you? ASSISTANT: thanks, "
                       "fine</s>")
  assert v["inputs"].endswith(" ASSISTANT:")


def test_unknown_format_and_missing_template_name_the_flag(spm_chat, tmp_path):
  with pytest.raises(chat.ChatError, match="config.data.chat_format='chatlm': unknown chat format"):
    chat.resolve_format("chatlm", None)
  with pytest.raises(chat.ChatError, match="config.data.chat_format='': .* has no chat template"):
    chat.resolve_format("", spm_chat)
  assert chat.resolve_format("", spm_chat, has_chat_data=False) is None  # instruction files keep their templates
  jinja = tmp_path / "mine.jinja"
  jinja.write_text(CHATML)
  assert chat.render(chat.resolve_format(str(jinja), None), CONVERSATION)["text"].startswith("<|im_start|>system")


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tokenizer_template_gives_the_ids_of_transformers_apply_chat_template(hf_dir, add_generation_prompt):
  import transformers  # pylint: disable=g-import-not-at-top
  hf = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  tok = tokenizer_lib.load(hf_dir)
  fmt = chat.resolve_format("", tok)  # the tokenizer's own template
  messages = CONVERSATION if not add_generation_prompt else CONVERSATION[:4]
  want = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
  want = want["input_ids"] if hasattr(want, "keys") else want
  assert chat.encode(tok, fmt.render(messages, add_generation_prompt)).tolist() == list(want)
  if not add_generation_prompt:  # the scored tokens are exactly each assistant content and its <|im_end|>
    ids, weights, ends = chat.scored_tokens(tok, chat.render(fmt, messages))
    assert ids.tolist() == list(want)
    im_end = tok._tok.token_to_id("<|im_end|>")  # pylint: disable=protected-access
    runs = np.split(ids, np.nonzero(np.diff(weights))[0] + 1)
    scored = [run.tolist() for run, w in zip(runs, np.split(weights, np.nonzero(np.diff(weights))[0] + 1)) if w[0]]
    assert [tok.encode(t).tolist() + [im_end] for t in ("I am fine", "thanks, fine")] == scored
    assert ends == [int(np.nonzero(weights)[0][k]) + 1 for k in (len(scored[0]) - 1, -1)]


def test_prompt_tokens_are_a_prefix_of_the_training_tokens(spm_chat, hf_dir):
  hf = tokenizer_lib.load(hf_dir)
  for tok in (spm_chat, hf):
    for name in ("alpaca", "vicuna", "chatml", "llama3", "zephyr"):
      r = chat.render(chat.resolve_format(name, tok), CONVERSATION)
      ids, weights, _ = chat.scored_tokens(tok, r)
      prompt = chat.encode(tok, r["inputs"])  # what inference reads before the last turn
      assert ids[:len(prompt)].tolist() == prompt.tolist(), (name, tok.model_path)
      assert weights[len(prompt) - 1] == 0 and weights[len(prompt)] == 1, (name, tok.model_path)


def test_trained_tokenizer_holds_the_format_specials_as_single_pieces(spm_chat):
  assert {"<|im_start|>", "<|im_end|>"} <= set(spm_chat.special_strings())
  fmt = chat.resolve_format("chatml", spm_chat)
  assert chat.end_of_turn_id(fmt, spm_chat) == spm_chat.encode("<|im_end|>")[-1]
  assert len(chat.encode(spm_chat, "a<|im_start|>b")) == len(chat.encode(spm_chat, "ab")) + 1
  with pytest.raises(chat.ChatError, match="end-of-turn marker '<\\|eot_id\\|>' is not one token"):
    chat.end_of_turn_id(chat.resolve_format("llama3", spm_chat), spm_chat)
  vicuna = chat.resolve_format("vicuna", spm_chat)
  assert chat.end_of_turn_id(vicuna, spm_chat) == spm_chat.eos_id  # "</s>" in the rendering is end-of-text


# --- rows, masks and gradients -------------------------------------------------------------------------


def _loss(logits, targets, weights):
  scale, denom = losses.token_scale_and_denominator(weights, None, "tokens")
  return losses.loss_and_metrics(logits, targets, weights, scale_BL=scale, denominator=denom)[0]


@functools.partial(jax.jit, static_argnames="vocab")
def _loss_and_grad_norms(targets, weights, vocab):
  """The token-mean loss of random logits, and the size of its gradient at each target position."""
  logits = jax.random.normal(jax.random.key(0), (*targets.shape, vocab))
  loss, grad = jax.value_and_grad(_loss)(logits, targets, weights)
  return loss, jnp.abs(grad).sum(-1)


def _pipeline(tmp_path, tok, kind, conversations, **kw):
  path = _write(tmp_path / "conv.jsonl", [{"messages": c} for c in conversations])
  fmt = chat.resolve_format("chatml", tok)
  tasks = mixtures.task_catalogue(tasks_lib.DataPaths(chat_files={"conv": path}, chat_format=fmt))
  cfg = pipeline.PipelineConfig(mixture="chat", model_kind=kind, shuffle=False, **kw)
  return pipeline.make_pipeline(cfg, tok, tasks=tasks, mixtures=mixtures.catalogue(tasks))


def test_decoder_rows_score_assistant_turns_and_their_end_of_turn_only(tmp_path, spm_chat):
  pipe = _pipeline(tmp_path, spm_chat, "decoder", [CONVERSATION, CONVERSATION[1:3]], inputs_length=96,
                   targets_length=32, batch_size=2)
  batch = next(iter(pipe))
  targets, weights = jnp.asarray(batch["decoder_target_tokens"]), jnp.asarray(batch["decoder_loss_weights"])
  im_end = spm_chat.encode("<|im_end|>")[-1]
  found = []
  for row, segs in enumerate(batch["decoder_segment_ids"]):
    for k in range(1, int(segs.max()) + 1):
      t, w = np.asarray(targets[row])[segs == k], np.asarray(weights[row])[segs == k]
      edges = np.nonzero(np.diff(w))[0] + 1
      found.append([spm_chat.decode(run).strip() for run, rw in zip(np.split(t, edges), np.split(w, edges)) if rw[0]])
      assert int((t[w > 0] == im_end).sum()) == len(found[-1])  # each turn's end is scored
  assert ["I am fine<|im_end|>", "thanks, fine<|im_end|>"] in found and ["I am fine<|im_end|>"] in found
  assert int(batch["decoder_segment_ids"].max()) >= 2  # packed: a row holds more than one conversation
  vocab = spm_chat.vocab_size
  loss, norms = map(np.asarray, _loss_and_grad_norms(targets, weights, vocab))
  assert np.all(norms[np.asarray(weights) == 0] == 0.0)  # system, user, headers, padding: exactly no gradient
  assert np.all(norms[np.asarray(weights) > 0] > 0)
  eot = np.nonzero((np.asarray(targets) == im_end) & (np.asarray(weights) > 0))
  changed = targets.at[eot].set(im_end + 1)  # another stop token changes the loss: the end of turn is learned
  assert float(loss) != float(_loss_and_grad_norms(changed, weights, vocab)[0])


def test_t5_gets_one_example_per_assistant_turn_with_the_conversation_so_far(tmp_path, spm_chat):
  pipe = _pipeline(tmp_path, spm_chat, "encoder_decoder", [CONVERSATION], inputs_length=96, targets_length=16,
                   batch_size=2, pack=False)
  examples = [pipe.examples[i] for i in range(2)]
  fmt = chat.resolve_format("chatml", spm_chat)
  assert [e["inputs"] for e in examples] == [chat.prompt(fmt, CONVERSATION[:2]), chat.prompt(fmt, CONVERSATION[:4])]
  batch = next(iter(pipe))
  for row, content in enumerate(["I am fine", "thanks, fine"]):
    w = batch["decoder_loss_weights"][row]
    assert batch["decoder_target_tokens"][row][w > 0].tolist() == [*spm_chat.encode(content), spm_chat.eos_id]
    enc = batch["encoder_input_tokens"][row]
    assert enc[enc > 0].tolist() == [*chat.encode(spm_chat, examples[row]["inputs"]), spm_chat.eos_id]
  targets, weights = jnp.asarray(batch["decoder_target_tokens"]), jnp.asarray(batch["decoder_loss_weights"])
  norms = np.asarray(_loss_and_grad_norms(targets, weights, spm_chat.vocab_size)[1])
  assert np.all(norms[np.asarray(weights) == 0] == 0.0) and np.all(norms[np.asarray(weights) > 0] > 0)
  last = np.nonzero(np.asarray(weights[1]))[0][-1]
  assert int(targets[1, last]) == spm_chat.eos_id  # the turn's end-of-text is scored


def test_decoder_truncation_keeps_whole_leading_turns_and_drops_what_cannot_fit():
  ids = np.arange(10, 30)
  weights = np.zeros(20, np.float32)
  weights[4:8] = weights[14:18] = 1  # turn 1 ends at 8, turn 2 at 18
  f = transforms.chat_decoder_features(ids, weights, [8, 18], bos_id=2, max_len=12)
  np.testing.assert_array_equal(f["decoder_input_tokens"], [2, *range(10, 17)])  # turn 2 does not fit: cut whole
  np.testing.assert_array_equal(f["decoder_target_tokens"], range(10, 18))
  np.testing.assert_array_equal(f["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1, 1])
  assert transforms.chat_decoder_features(ids, weights, [8, 18], bos_id=2, max_len=6) is None  # not even turn 1
  whole = transforms.chat_decoder_features(ids, weights, [8, 18], bos_id=2, max_len=64)
  assert whole["decoder_target_tokens"].tolist() == list(range(10, 28)) and whole["decoder_loss_weights"].sum() == 8


def test_instruction_files_take_the_chat_format_when_set(tmp_path, spm_chat):
  path = _write(tmp_path / "alpaca.jsonl", [{"instruction": "Add the numbers.", "input": "3 1 2", "output": "6",
                                              "system": "You are a calculator."}])
  fmt = chat.resolve_format("chatml", spm_chat)
  plain = mixtures.task_catalogue(tasks_lib.DataPaths(instruction_files={"a": path}))["a"]
  assert "chat" not in plain.example("train", 0)  # no format: today's templates
  fields = mixtures.task_catalogue(tasks_lib.DataPaths(instruction_files={"a": path}, chat_format=fmt))["a"].example(
      "train", 0)
  assert fields["chat"]["text"] == ("<|im_start|>system\nYou are a calculator.<|im_end|>\n<|im_start|>user\nAdd the "
                                    "numbers.\n\n3 1 2<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n")


def test_chat_prompts_and_the_exported_template(hf_dir, tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.load(hf_dir)
  fmt = chat.resolve_format("chatml", tok)
  prompts = predict.chat_prompts([CONVERSATION[:4]], fmt)
  assert prompts == [chat.render(fmt, CONVERSATION)["inputs"]]
  with pytest.raises(chat.ChatError, match="ends with a user"):
    predict.chat_prompts([CONVERSATION], fmt)
  # An export (convert --to hf) writes the named format into tokenizer_config.json, led by begin-of-text for decoders
  # whose tokenizer adds one (this one's post-processor adds none): transformers then gives the ids a decoder's
  # prompt row holds.
  model = build.Model(build.config_for("decoder", "tiny", vocab_size=tok.vocab_size))
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nn.meta.unbox(model.param_shapes()))
  convert.export_hf(model.config, params, tmp_path, tokenizer=tok,
                    chat_template=chat.export_template("chatml", begin_of_text=tok.adds_bos))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  want = hf.apply_chat_template(CONVERSATION[:4], tokenize=True, add_generation_prompt=True)
  want = want["input_ids"] if hasattr(want, "keys") else want
  assert list(want) == model.prompt_ids(chat.SpecialAware(tok), prompts[0], max_tokens=512)


def test_a_template_that_writes_begin_of_text_gets_it_once(hf_dir, tmp_path):
  tok = tokenizer_lib.load(hf_dir)
  fmt = chat.ChatFormat("own", "{{ bos_token }}" + CHATML, ("<|im_start|>", "<|im_end|>", "<s>", "</s>"), "<s>", "</s>")
  ids, weights, ends = chat.scored_tokens(tok, chat.render(fmt, CONVERSATION))
  assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
  row = transforms.chat_decoder_features(ids, weights, ends, bos_id=tok.bos_id, max_len=256)
  assert row["decoder_input_tokens"].tolist() == ids[:-2].tolist()  # not [bos, bos, ...]; the trailing "\n" is cut
  model = build.Model(build.config_for("decoder", "tiny", vocab_size=tok.vocab_size))
  prompt = model.prompt_ids(chat.SpecialAware(tok, fmt), chat.prompt(fmt, CONVERSATION[:4]), 512)
  assert prompt[0] == tok.bos_id and prompt == ids[:len(prompt)].tolist()  # inference reads the same prefix
  tok.save(tmp_path / "copy")  # a workdir's copy keeps the template
  assert tokenizer_lib.load(tmp_path / "copy").chat_template() == CHATML


def test_a_template_whose_prefixes_are_not_prefixes_is_refused():
  last_only = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
  with pytest.raises(chat.ChatError, match="not a prefix of its whole rendering"):
    chat.render(chat.ChatFormat("odd", last_only), CONVERSATION)


def test_the_piece_standing_for_the_prompts_last_newline_is_the_turns_first_scored_token(tmp_path):
  # SentencePiece drops the prompt's trailing "\n" ("...assistant\n"), so inference must generate the "▁" that stands
  # for it in the whole text: that piece is scored although its character belongs to the prompt.
  tok = tokenizer_lib.train(["café naïve 東京 and more text"] * 30, vocab_size=60, out_dir=tmp_path,
                            user_defined_symbols=("<|im_start|>", "<|im_end|>"))
  fmt = chat.resolve_format("chatml", tok)
  r = chat.render(fmt, [{"role": "user", "content": "東京"}, {"role": "assistant", "content": "café"}])
  ids, weights, _ = chat.scored_tokens(tok, r)
  prompt = chat.encode(tok, r["inputs"])
  assert ids[:len(prompt)].tolist() == prompt.tolist() and tok.piece(ids[len(prompt)]) == "▁"
  assert np.nonzero(weights)[0].tolist() == list(range(len(prompt), len(ids)))  # to the end: <|im_end|> (the
  assert tok.piece(ids[-1]) == "<|im_end|>"  # text's final "\n" is trailing whitespace, which SentencePiece drops)
