"""Super-NaturalInstructions task files and the "Definition + k positive examples" prompt encoding.

A task file holds a Definition (a list of strings), Positive and Negative Examples
(`{input, output, explanation}`) and Instances (`{id, input, output: [references...]}`). Some files
hold a bare `NaN` (e.g. `"URL": [NaN]`); Python's json module reads it as float nan, and no field we
use may be NaN.

Splits: "train" is every instance (or the first `num_train_instances`: Tk-Instruct trained on 100 per task);
"test" is the first `num_eval_instances` (100), as the official evaluation uses. Both are config keys
(`config.data_paths.superni_train_instances`, `superni_eval_instances`).

The encoding (Tk-Instruct's), for definition D (the first entry of the file's Definition list), positive
examples (x1, y1).. and the evaluated input x:

    Definition: D.                          ("." added when D lacks final punctuation)
    <blank line>
     Positive Example 1 -
    Input: x1.                              (the same rule for every input, output and explanation line)
     Output: y1.
    <blank line>
    Now complete the following example -
    Input: x.
    Output:<space>

As Tk-Instruct's collator does, the rule looks at the whole line ("Input: " + the stripped text), so an empty
input gives "Input: ." and text ending in "?", "!", ")" or any other ASCII punctuation is left as it is.

Examples are added one at a time only while the whole prompt still fits the length limit.
"""
from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Callable, Sequence
from typing import Any

from instruct_jax.data import sources

NUM_EVAL_INSTANCES = 100


def _text(value: Any, where: str, field: str) -> str:
  if isinstance(value, list):
    value = "".join(_text(v, where, field) for v in value)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    raise sources.DataError(f"{where}: field {field!r} is missing or NaN")
  if not isinstance(value, str):
    raise sources.DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
  return value


def _examples(data: dict, key: str, path: str) -> list[dict[str, str]]:
  out = []
  for i, ex in enumerate(data.get(key) or []):
    where = f"{path}: {key}[{i}]"
    out.append({"input": _text(ex.get("input"), where, "input"),
                "output": _text(ex.get("output"), where, "output"),
                "explanation": _text(ex.get("explanation", ""), where, "explanation")})
  return out


def read_task(path: str | os.PathLike, stats: sources.ReadStats | None = None) -> dict[str, Any]:
  """Reads one task file into {name, definition, categories, positive_examples, negative_examples, instances}.

  Instances without any non-empty reference are skipped and counted in `stats.empty_outputs`.
  """
  path = os.fspath(path)
  stats = stats if stats is not None else sources.ReadStats()
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)  # Accepts the bare NaN some task files hold.
    except json.JSONDecodeError as e:
      raise sources.DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
  for field in ("Definition", "Instances"):
    if field not in data:
      raise sources.DataError(f"{path}: missing field {field!r}")
  definitions = data["Definition"] if isinstance(data["Definition"], list) else [data["Definition"]]
  if not definitions:
    raise sources.DataError(f"{path}: field 'Definition' is an empty list")
  definition = _text(definitions[0], path, "Definition")  # Tk-Instruct uses the first entry
  instances = []
  for i, inst in enumerate(data["Instances"]):
    where = f"{path}: Instances[{i}] (id {inst.get('id')!r})"
    outputs = inst.get("output")
    if outputs is None:
      raise sources.DataError(f"{where}: missing field 'output'")
    outputs = [outputs] if isinstance(outputs, str) else outputs
    refs = [_text(o, where, "output") for o in outputs]
    refs = [r for r in refs if r.strip()]
    if not refs:
      stats.skip("empty_outputs", f"{where}: no non-empty output")
      continue
    instances.append({"id": str(inst.get("id", i)), "input": _text(inst.get("input"), where, "input"),
                      "references": refs})
  stats.records += len(instances)
  return {"name": os.path.basename(path).removesuffix(".json").removesuffix(".SUBSET"),
          "definition": definition,
          "categories": list(data.get("Categories") or []),
          "positive_examples": _examples(data, "Positive Examples", path),
          "negative_examples": _examples(data, "Negative Examples", path),
          "instances": instances}


class SuperNISource:
  """One SuperNI task file as a source; records carry the task's definition and examples."""

  def __init__(self, path: str | os.PathLike, *, num_eval_instances: int = NUM_EVAL_INSTANCES,
               num_train_instances: int | None = None):
    for name, value in (("num_eval_instances", num_eval_instances), ("num_train_instances", num_train_instances)):
      if value is not None and value < 1:
        raise sources.DataError(f"SuperNI {name} must be >= 1, got {value}")
    self.path = os.fspath(path)
    self.num_eval_instances = num_eval_instances
    self.num_train_instances = num_train_instances
    self.stats = sources.ReadStats()
    self._task: dict[str, Any] | None = None
    self._records: list[dict[str, Any]] | None = None

  @property
  def splits(self) -> tuple[str, ...]:
    return ("train", "test")

  @property
  def task(self) -> dict[str, Any]:
    if self._task is None:
      self._task = read_task(self.path, self.stats)
    return self._task

  def load(self, split: str) -> list[dict[str, Any]]:
    if self._records is None:
      t = self.task
      self._records = [{"id": inst["id"], "input": inst["input"], "answer": inst["references"][0],
                        "references": inst["references"], "definition": t["definition"],
                        "positive_examples": t["positive_examples"],
                        "negative_examples": t["negative_examples"]} for inst in t["instances"]]
    if split == "train":
      return self._records[:self.num_train_instances]
    if split == "test":
      return self._records[:self.num_eval_instances]
    raise sources.DataError(f"SuperNI task {self.path} has splits ('train', 'test'), not {split!r}")


def _with_period(line: str) -> str:
  """Tk-Instruct's rule: a "." after a line that does not end in ASCII punctuation."""
  return line if line and line[-1] in string.punctuation else line + "."


def _definition_text(definition: str) -> str:
  definition = definition.strip()
  return _with_period(definition) if definition else definition


def _demo(label: str, i: int, ex: dict[str, str], explanation: bool) -> str:
  text = (f" {label} Example {i} -\n{_with_period('Input: ' + ex['input'].strip())}\n"
          f"{_with_period(' Output: ' + ex['output'].strip())}\n")
  if explanation and ex.get("explanation"):
    text += f"{_with_period(' Explanation: ' + ex['explanation'].strip())}\n"
  return text + "\n"


def encode(definition: str, instance_input: str, *, positive_examples: Sequence[dict[str, str]] = (),
           negative_examples: Sequence[dict[str, str]] = (), use_definition: bool = True,
           num_positive: int = 2, num_negative: int = 0, explanations: bool = False,
           fits: Callable[[str], bool] | None = None) -> tuple[str, int]:
  """The SuperNI prompt for one instance; returns (prompt, number of demonstrations included)."""
  head = f"Definition: {_definition_text(definition)}\n\n" if use_definition and definition.strip() else ""
  tail = f"Now complete the following example -\n{_with_period('Input: ' + instance_input.strip())}\nOutput: "
  demos = [_demo("Positive", i + 1, ex, explanations) for i, ex in enumerate(positive_examples[:num_positive])]
  demos += [_demo("Negative", i + 1, ex, explanations) for i, ex in enumerate(negative_examples[:num_negative])]
  body = ""
  used = 0
  for demo in demos:
    if fits is not None and not fits(head + body + demo + tail):
      break
    body += demo
    used += 1
  return head + body + tail, used
