"""Generate text from a trained workdir with the KV-cache decoder.

    python -m instruct_jax.generate --workdir /tmp/quickstart --prompt "Input: 3 1 2\\nTask: sort\\nOutput:"
    python -m instruct_jax.generate --workdir DIR --prompts_file prompts.txt --output out.jsonl --num_beams 4

The model, its tokenizer and the newest checkpoint (or --step) come from the workdir, whatever checkpoint
the run started from. Prompts are tokenized as training rows began: T5 encodes the prompt followed by
end-of-text; a decoder-only model reads begin-of-text (where its tokenizer adds one) followed by the prompt (no
end-of-text) and continues it; decoding stops at end-of-text. A prompts file holds one prompt per line, or JSONL records
with a "prompt" field, or Alpaca-style JSONL records {"instruction", "input" (optional), "system" (optional),
...}, rendered the way the run rendered its instruction files (`predict.instruction_prompts`: the same
preprocessing and template file; --template_id picks the template, default the first standard one the run
trained with). Published layouts are read one prompt per instance, never one per record: Self-Instruct's
{"instruction", "instances": [{"input", "output"}]} (its user-oriented evaluation set) gives each instance's input,
and a SuperNI task file (.json) each instance with the task's Definition as the instruction. A field that looks like
an input but is not read ("context", "question", ...: `sources.INPUT_LIKE_FIELDS`) is an error naming it.

--chat reads conversations instead: each --prompt is one user message (after --system, if given), and a prompts file
holds JSONL records {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} ending where the
model is to answer. They are rendered with the run's chat format (config.data.chat_format in the workdir's
config.json), or the tokenizer's own chat template when the run used none, with the generation prompt; a
decoder stops at the format's end of turn:

    python -m instruct_jax.generate --workdir DIR --chat --system "Answer briefly." --prompt "Name a prime."

--init_from DIR generates with a checkpoint before fine-tuning (an imported or Hugging Face directory, or another
run's workdir), with its own tokenizer and the default settings (the tokenizer's own chat template), or the
settings of --workdir when that is given too: the baseline every instruction-tuning comparison reports.

    python -m instruct_jax.generate --init_from /ckpt/smollm2-hf --chat --prompt "What is the capital of France?"

--output writes one JSONL record per prompt, in order: the prompt record's own fields (instruction, input,
any others such as a category; an "output" it had is kept as "reference"), then "prompt" (the text the model
read), "output", "ids" (the generated token ids, end-of-text excluded) and "finish_reason" ("length" when
max_new_tokens cut the output, else "stop"). `python -m instruct_jax.evals.judge` reads these files. Records are
appended a batch at a time and flushed to disk; a rerun with the same --output keeps what is there (checked to be
for the same prompts) and generates the rest, with the seeds an uninterrupted run would have used.

Benchmarks' formats (`evals/answers.py`): a `.json` prompts file is read as a JSON list (AlpacaEval's evaluation
set); `--format alpaca_eval` writes --output as the JSON list AlpacaEval reads ({instruction, output, generator,
dataset}); `--mt_bench --prompts_file question.jsonl` answers MT-Bench's questions turn by turn in the chat format
and writes FastChat's answer lines:

    python -m instruct_jax.generate --workdir DIR --prompts_file alpaca_eval.json --format alpaca_eval \
        --generator my-model --output model_outputs.json
    python -m instruct_jax.generate --workdir DIR --mt_bench --prompts_file question.jsonl --output my-model.jsonl
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid

import tqdm
from absl import flags, logging

from instruct_jax import errors, predict, sampling
from instruct_jax import plan as plan_lib
from instruct_jax import workdir as workdir_lib
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import sources
from instruct_jax.evals import answers

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by instruct_jax.train (with --init_from: only its "
                               "settings: prompt templates, chat format, lengths).")
_INIT_FROM = flags.DEFINE_string("init_from", None, "A checkpoint before fine-tuning (an imported or Hugging Face "
                                 "directory, or a workdir): generate with it, as a baseline.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the newest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Text file (one prompt per line), or JSONL records with "
                                    "a 'prompt' field or an 'instruction' (and optional 'input').")
_OUTPUT = flags.DEFINE_string("output", None, "Write JSONL here (default: print): each prompt record's fields plus "
                               "prompt, output, ids (generated token ids, end-of-text excluded), finish_reason.")
errors.local_path_flags("output")
_TEMPLATE = flags.DEFINE_integer("template_id", None, "Instruction template for {instruction, input} records "
                                 "(default: the first standard one the run trained with).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_BEAMS = flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams when > 1.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts decoded together.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CHAT = flags.DEFINE_bool("chat", False, "Prompts are conversations, rendered with the run's chat format (or the "
                          "tokenizer's template): --prompt is a user message, --prompts_file holds "
                          "{\"messages\": [...]} lines.")
for _name, _ok, _range in (("max_new_tokens", lambda v: v >= 1, ">= 1"), ("temperature", lambda v: v >= 0, ">= 0"),
                           ("top_k", lambda v: v >= 0, ">= 0 (0: all)"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
                           ("num_beams", lambda v: v >= 1, ">= 1"), ("batch_size", lambda v: v >= 1, ">= 1")):
  flags.register_validator(_name, lambda v, ok=_ok: v is not None and math.isfinite(v) and ok(v),
                           message=f"must be a number {_range}")
_SYSTEM = flags.DEFINE_string("system", None, "With --chat: a system message opening each --prompt conversation.")
_FORMAT = flags.DEFINE_enum("format", "jsonl", ["jsonl", "alpaca_eval"], "--output's format: jsonl (a record per "
                            "prompt) or alpaca_eval (the JSON list AlpacaEval reads; the records go to "
                            "OUTPUT.records.jsonl).")
_GENERATOR = flags.DEFINE_string("generator", None, "--format alpaca_eval / --mt_bench: the model's name in the "
                                 "output (default: the workdir's or --init_from's directory name).")
_MT_BENCH = flags.DEFINE_bool("mt_bench", False, "--prompts_file is MT-Bench's question.jsonl ({question_id, turns}): "
                              "answer each turn in the chat format and write FastChat's answer lines to --output.")
_PROGRESS = flags.DEFINE_bool("progress", True, "A progress bar (prompts done, rate, ETA) on stderr.")


def prompt_texts(records: list[dict], config) -> list[str]:
  """The text of each record: its "prompt", or its instruction rendered as the run rendered instruction files."""
  rendered = iter(())
  instructions = [r for r in records if "prompt" not in r]
  if instructions:
    try:
      rendered = iter(predict.instruction_prompts(instructions, config, template_id=_TEMPLATE.value))
    except ValueError as e:
      what = "--template_id" if _TEMPLATE.value is not None else "instruction records"
      raise errors.UserError(f"{what}: {e}") from None
  return [r["prompt"] if "prompt" in r else next(rendered) for r in records]


def read_conversations(path: str) -> list[dict]:
  """{"messages": [...]} records of a JSONL file (each checked: roles, string contents), for --chat."""
  records = []
  for n, record in sources.read_jsonl_numbered(path):
    try:
      chat_lib.check_prompt_messages(record.get("messages"), f"{path}:{n}: field 'messages'")
    except chat_lib.ChatError as e:
      raise errors.UserError(str(e)) from None
    records.append(record)
  return records


def chat_prompt_texts(records: list[dict], loaded) -> tuple[list[str], chat_lib.ChatFormat]:
  """The prompt of each conversation record in the run's chat format (`plan.Loaded.conversation_format`)."""
  fmt = loaded.conversation_format("--chat")
  return predict.chat_prompts([r["messages"] for r in records], fmt), fmt


def output_record(record: dict, prompt: str, text: str, ids: list[int], finish: str) -> dict:
  out = {k: v for k, v in record.items() if k not in ("prompt", "output", "ids", "finish_reason")}
  if "output" in record:
    out["reference"] = record["output"]
  return {**out, "prompt": prompt, "output": text, "ids": ids, "finish_reason": finish}


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # A baseline (--init_from: its own tokenizer, the workdir's settings or the defaults), or the workdir's checkpoint;
  # its parameters are read once the prompts are.
  loaded = plan_lib.load(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
  config = loaded.config
  plan_lib.check_positions(loaded.max_positions, config.data.inputs_length + _MAX_NEW.value,
                           _INIT_FROM.value or _WORKDIR.value,
                           "the prompt budget (config.data.inputs_length) + --max_new_tokens")
  if _MT_BENCH.value:
    return mt_bench(loaded)
  if _CHAT.value:
    system = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
    records = [{"messages": [*system, {"role": "user", "content": p}]} for p in _PROMPT.value]
    records += read_conversations(_PROMPTS_FILE.value) if _PROMPTS_FILE.value else []
    if not records:
      raise errors.UserError("give --prompt or --prompts_file")
    try:
      prompts, fmt = chat_prompt_texts(records, loaded)
    except chat_lib.ChatError as e:
      raise errors.UserError(str(e)) from None
  else:
    if _SYSTEM.value:
      raise errors.UserError("--system goes with --chat")
    listed = answers.read_prompts(_PROMPTS_FILE.value) if _PROMPTS_FILE.value else []
    records = [{"prompt": p} for p in _PROMPT.value] + listed
    if not records:
      raise errors.UserError("give --prompt or --prompts_file")
    prompts = prompt_texts(records, config)
  cfg = sampling.DecodeConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                              top_p=_TOP_P.value, num_beams=_BEAMS.value)
  options = dict(batch_size=_BATCH.value, max_prompt_tokens=loaded.config.data.inputs_length, mesh=loaded.mesh,
                 rules=loaded.rules, with_ids=True, with_finish=True)

  def generate(first: int, chunk: list[int]) -> list:
    """Outputs of the prompts at `chunk`, seeded by their batch's place in the whole list (a resumed run samples
    what an uninterrupted one would)."""
    seed = _SEED.value + first // _BATCH.value
    if _CHAT.value:
      return predict.make_chat_generate_fn(loaded.model, loaded.params, loaded.tokenizer, fmt, cfg, seed=seed,
                                           **options)([records[i]["messages"] for i in chunk])
    return predict.make_generate_fn(loaded.model, loaded.params, loaded.tokenizer, cfg, seed=seed,
                                    **options)([prompts[i] for i in chunk])

  if not _OUTPUT.value:
    for record, p, (text, _, _) in zip(records, prompts, generate(0, list(range(len(records))))):
      print(f"=== {p!r}\n{text}")
    return
  stream = _OUTPUT.value + ".records.jsonl" if _FORMAT.value == "alpaca_eval" else _OUTPUT.value
  out = answers.ResumableJsonl(stream, [{"prompt": p} for p in prompts], "prompt")
  with out, tqdm.tqdm(total=len(records), initial=out.done, desc="generate", unit="prompt",
                      disable=not _PROGRESS.value) as bar:
    for first in range(out.done, len(records), _BATCH.value):
      chunk = list(range(first, min(first + _BATCH.value, len(records))))
      for i, (text, ids, finish) in zip(chunk, generate(first, chunk)):
        out.append(output_record(records[i], prompts[i], text, ids, finish))
      out.flush()
      bar.update(len(chunk))
  if _FORMAT.value == "alpaca_eval":
    with open(stream, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f]
    listed = answers.alpaca_eval_records(rows, generator_name())
    workdir_lib.write_atomically(_OUTPUT.value, json.dumps(listed, indent=2, ensure_ascii=False) + "\n")
  print(f"wrote {len(records)} records to {_OUTPUT.value}" + (f" ({out.resumed} from an earlier run)"
                                                              if out.resumed else ""), file=sys.stderr)


def mt_bench(loaded) -> None:
  """Answers each MT-Bench question turn by turn in the chat format (the second turn sees the first answer), and
  appends FastChat's answer lines {question_id, answer_id, model_id, choices: [{index, turns}], tstamp}."""
  if not _OUTPUT.value:
    raise errors.UserError("--mt_bench writes --output (FastChat's model_answer JSONL)")
  if not _PROMPTS_FILE.value:
    raise errors.UserError("--mt_bench reads --prompts_file (MT-Bench's question.jsonl)")
  questions = answers.read_mt_bench(_PROMPTS_FILE.value)
  tok = loaded.tokenizer
  try:
    fmt = loaded.conversation_format("--mt_bench")
  except chat_lib.ChatError as e:
    raise errors.UserError(str(e)) from None
  cfg = sampling.DecodeConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                              top_p=_TOP_P.value, num_beams=_BEAMS.value)
  model_id = generator_name()
  out = answers.ResumableJsonl(_OUTPUT.value, [{"question_id": q["question_id"]} for q in questions],
                               "question_id")
  with out, tqdm.tqdm(total=len(questions), initial=out.done, desc="mt_bench", unit="question",
                      disable=not _PROGRESS.value) as bar:
    for first in range(out.done, len(questions), _BATCH.value):
      chunk = questions[first:first + _BATCH.value]
      conversations: list[list[dict]] = [[] for _ in chunk]
      for turn in range(max(len(q["turns"]) for q in chunk)):
        active = [j for j, q in enumerate(chunk) if turn < len(q["turns"])]
        for j in active:
          conversations[j].append({"role": "user", "content": chunk[j]["turns"][turn]})
        replies = predict.make_chat_generate_fn(
            loaded.model, loaded.params, tok, fmt, cfg, batch_size=_BATCH.value,
            max_prompt_tokens=loaded.config.data.inputs_length, mesh=loaded.mesh, rules=loaded.rules,
            seed=_SEED.value + first // _BATCH.value + 1000 * turn)([conversations[j] for j in active])
        for j, reply in zip(active, replies):
          conversations[j].append({"role": "assistant", "content": reply})
      for q, conversation in zip(chunk, conversations):
        turns = [m["content"] for m in conversation if m["role"] == "assistant"]
        out.append({"question_id": q["question_id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
                    "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()})
      out.flush()
      bar.update(len(chunk))
  print(f"wrote {len(questions)} answers to {_OUTPUT.value}", file=sys.stderr)


def generator_name() -> str:
  return _GENERATOR.value or os.path.basename(os.path.normpath(_INIT_FROM.value or _WORKDIR.value))


if __name__ == "__main__":
  errors.run(main)
