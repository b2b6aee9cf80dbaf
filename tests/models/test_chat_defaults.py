"""Each family's default chat format, taken when a run from a checkpoint whose tokenizer has no chat template (a base
model) has chat data and names no format."""
import json

import pytest

from instruct_jax import configs
from instruct_jax.data import chat
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import families

tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(directory, specials, template=None):
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, **{s: i + 1 for i, s in enumerate(specials)},
                                                          "hello": len(specials) + 1}, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(specials))
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  config = {"eos_token": specials[0], **({"chat_template": template} if template else {})}
  (directory / "tokenizer_config.json").write_text(json.dumps(config))
  return tokenizer_lib.load(directory)


def test_each_family_names_its_default(tmp_path):
  llama3 = _tokenizer(tmp_path / "l3", ["<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>"])
  smol = _tokenizer(tmp_path / "smol", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  plain = _tokenizer(tmp_path / "l2", ["</s>", "<s>"])
  assert families.default_chat_format("llama", llama3) == "llama3"
  assert families.default_chat_format("llama", smol) == "chatml"
  assert families.default_chat_format("llama", plain) == "llama2"
  assert families.default_chat_format("mistral", plain) == "llama2"
  assert families.default_chat_format("qwen2", plain) == families.default_chat_format("qwen3", plain) == "chatml"
  assert families.default_chat_format("gemma2", plain) == families.default_chat_format("gemma3_text", plain) == "gemma"
  assert families.default_chat_format("t5", plain) is None and families.default_chat_format("nope", plain) is None
  for name in ("llama3", "chatml", "llama2", "gemma"):  # each is a named format the runs can render with
    assert chat.resolve_format(name, plain).name == name


def test_the_default_applies_only_to_a_base_checkpoint_with_chat_data(tmp_path):
  base = _tokenizer(tmp_path / "base", ["</s>", "<s>"])
  instruct = _tokenizer(tmp_path / "instruct", ["</s>", "<s>"], template="{{ messages[0].content }}")
  spec = lambda s, tok, family="llama", checkpoint=True, chats=True: families.chat_spec(
      s, tok, family, from_checkpoint=checkpoint, has_chat_data=chats)
  assert spec("", base) == "llama2"
  assert spec("", instruct) == ""  # the checkpoint's own template
  assert spec("chatml", base) == "chatml" and spec("tokenizer", base) == "tokenizer"  # a named choice stands
  assert spec("", base, checkpoint=False) == ""  # a model trained here: its own tokenizer, no family format
  assert spec("", base, chats=False) == ""  # instruction files keep their plain templates
  assert spec("", base, family="t5") == ""  # no default: the run must name one (the error says so)


def test_the_run_plan_takes_the_family_default(tmp_path):
  from instruct_jax import predict  # pylint: disable=g-import-not-at-top
  base = _tokenizer(tmp_path / "base", ["<eos>", "<start_of_turn>", "<end_of_turn>"])
  config = configs.base()
  config.init_from = str(tmp_path / "ckpt")
  config.data_paths.chat_files["talk"] = str(tmp_path / "talk.jsonl")
  fmt = predict.chat_format(config, base, "gemma2")
  assert fmt.name == "gemma" and fmt.render([{"role": "user", "content": "hello"}], add_generation_prompt=True) == \
      "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"
  with pytest.raises(chat.ChatError, match="has no chat template"):
    predict.chat_format(config, base, "t5")
