"""What generate reads and writes: prompt files (`read_prompts`: published layouts one prompt per instance), records
appended as they are done (resumable), and the answer formats of the benchmarks that judge open-ended outputs.

- AlpacaEval: model outputs are a JSON list of {instruction, output, generator, dataset} (`alpaca_eval_records`).
- MT-Bench: questions are JSONL {question_id, category, turns} (`read_mt_bench`); FastChat's gen_model_answer writes
  a line {question_id, answer_id, model_id, choices: [{index, turns}], tstamp} per question.
"""
from __future__ import annotations

import json
import os
import pathlib

from instruct_jax import errors, workdir
from instruct_jax.data import sources


def read_prompts(path: str) -> list[dict]:
  """Prompt records: {"prompt": line} for a text line; a JSON record as it is (checked to hold a string "prompt"
  or "instruction", and string "input" / "system" where present), except that a Self-Instruct record
  ({instruction, instances: [{input, output}]}) is one prompt per instance, and a SuperNI task file (.json) one per
  instance (its Definition the instruction); `sources.instruction_records`. A `.json` file is a JSON list
  (AlpacaEval's evaluation set) or a SuperNI task file."""
  records = []
  if not os.path.isfile(path):
    raise errors.UserError(f"--prompts_file {path}: no such file")
  if path.endswith(".json"):
    try:
      data = sources.read_json_data(path)
      if sources.is_superni_task(data):
        return [_checked(record, where) for where, record in sources.superni_records(data, path)]
      listed = sources.json_records(data, path)
      return [r for i, record in enumerate(listed) for r in _expanded(record, f"{path}: record {i}")]
    except sources.DataError as e:
      raise errors.UserError(str(e)) from None
  for n, line in sources.text_lines(path):
    if isinstance(line, sources.DataError):
      raise line
    if not line.strip():
      continue
    if not line.lstrip().startswith("{"):
      records.append({"prompt": line.rstrip("\n").replace("\\n", "\n")})
      continue
    try:
      record = errors.loads_json(line)
    except json.JSONDecodeError as e:
      raise errors.UserError(f"{path}:{n}: malformed JSON ({e.msg})") from None
    records += _expanded(record, f"{path}:{n}")
  return records


def _expanded(record, where: str) -> list[dict]:
  """A prompt record, checked; an instruction record one per Self-Instruct instance (`sources.expand_instances`)."""
  if isinstance(record, dict) and "instruction" in record:
    try:
      return [_checked(r, at) for at, r in sources.expand_instances(record, where)]
    except sources.DataError as e:
      raise errors.UserError(str(e)) from None
  return [_checked(record, where)]


def _checked(record, where: str) -> dict:
  if not isinstance(record, dict) or ("prompt" not in record and "instruction" not in record):
    raise errors.UserError(f"{where}: record has no 'prompt' or 'instruction' field")
  for field in ("prompt",) if "prompt" in record else ("instruction", "input", "system"):
    if field in record and not isinstance(record[field], str):
      raise errors.UserError(f"{where}: field {field!r} must be a string, got {type(record[field]).__name__}")
  return record


def read_mt_bench(path: str) -> list[dict]:
  """MT-Bench's question.jsonl: {question_id, category, turns: [str, ...]} per line."""
  if not os.path.isfile(path):
    raise errors.UserError(f"--prompts_file {path}: no such file")
  questions = []
  for n, record in sources.read_jsonl_numbered(path):
    turns = record.get("turns")
    if "question_id" not in record or not isinstance(turns, list) or not turns or not all(
        isinstance(t, str) for t in turns):
      raise errors.UserError(f"{path}:{n}: an MT-Bench question needs 'question_id' and 'turns' (a list of strings)")
    questions.append(record)
  return questions



def alpaca_eval_records(rows: list[dict], generator: str) -> list[dict]:
  """AlpacaEval's model-outputs list: instruction (with its input, when a record has one), output, generator, and
  dataset (the prompt record's own, as AlpacaEval's evaluation set has it, else "instruct_jax")."""
  out = []
  for row in rows:
    instruction = row.get("instruction", row["prompt"])
    if row.get("input"):
      instruction = f"{instruction}\n\n{row['input']}"
    out.append({"instruction": instruction, "output": row["output"], "generator": generator,
                "dataset": row.get("dataset", "instruct_jax")})
  return out


class ResumableJsonl:
  """An output JSONL written a record at a time, each batch flushed to disk; a rerun keeps the records already
  written (checked, by `key`, against what the rerun would write in their place: another prompt list is an error
  naming the line) and a line cut short by a kill is dropped."""

  def __init__(self, path: str, expected: list[dict], key: str):
    self.path, self.done = path, 0
    kept = []
    if os.path.exists(path):
      lines = pathlib.Path(path).read_text(encoding="utf-8").split("\n")
      for n, line in enumerate(lines, 1):
        if not line.strip():
          continue
        try:
          record = errors.loads_json(line)
        except json.JSONDecodeError:
          if n == len(lines):  # the last line, without its newline: a write the kill interrupted
            break
          raise errors.UserError(f"{path}:{n}: malformed JSON; not an output of this command (use another "
                                 "--output)") from None
        if len(kept) >= len(expected) or not isinstance(record, dict) or record.get(key) != expected[len(kept)][key]:
          raise errors.UserError(f"{path}:{n}: written for another {key} than this run's {len(kept) + 1}-th; use "
                                 "another --output (or delete it) to start over")
        kept.append(line)
      workdir.write_atomically(path, "".join(line + "\n" for line in kept))
    self.done = self.resumed = len(kept)
    self._file = open(path, "a", encoding="utf-8")

  def append(self, record: dict) -> None:
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.done += 1

  def flush(self) -> None:
    self._file.flush()
    os.fsync(self._file.fileno())

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()
