"""The SuperNI paper's two trivial baselines, as predictions to score.

* copy_input: predict the instance's own input text.
* copy_demo: predict the output of the task's first positive example, for every instance.

The paper reports ROUGE-L 14.20 (copy input) and 28.54 (copy demo) over the 119 default-track test
tasks. Command:

  python -m instruct_jax.evals.baselines --baseline=copy_demo \
      --task_files='tasks/*.json' --references=R.jsonl --output=P.jsonl

then score P.jsonl with `python -m instruct_jax.evals.score`. Task files are SuperNI task JSON
(Definition, Positive Examples, Instances, ...). Some contain bare `NaN` values, which Python's json
module accepts (strict parsers do not); those fields are never used here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import glob
import json
import os

from absl import flags

from instruct_jax import errors
from instruct_jax.evals import score as score_lib

Baseline = Callable[[Mapping], dict[str, str]]
_MAX_IDS_SHOWN = 5


def load_task(path: str) -> dict:
  """Reads a SuperNI task file (bare NaN allowed) and checks it has an Instances list."""
  with open(path, encoding="utf-8") as f:
    try:
      task = errors.loads_json(f.read())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
  if not isinstance(task, dict) or not isinstance(task.get("Instances"), list):
    raise ValueError(f"{path}: not a SuperNI task file (no 'Instances' list)")
  return task


def copy_input(task: Mapping) -> dict[str, str]:
  """{instance id: the instance's input}."""
  return {instance["id"]: instance["input"] for instance in task["Instances"]}


def copy_demo(task: Mapping) -> dict[str, str]:
  """{instance id: the output of the task's first positive example}."""
  examples = task.get("Positive Examples") or []
  if not examples:
    raise ValueError("copy_demo needs a task with at least one positive example")
  output = examples[0]["output"]
  return {instance["id"]: output for instance in task["Instances"]}


def all_baselines() -> dict[str, Baseline]:
  """The baselines by name."""
  return {"copy_input": copy_input, "copy_demo": copy_demo}


def predict(
    baseline: str, task_paths: Iterable[str], references: Sequence[Mapping], *, allow_missing: bool = False
) -> dict[str, str]:
  """Baseline predictions for the reference instances found in the task files.

  Args:
    baseline: a name from `all_baselines()`.
    task_paths: SuperNI task JSON files.
    references: reference dicts (only their "id" is used); predictions are made for these ids only.
    allow_missing: if False, a reference id found in none of the task files is an error; if True it
      is left without a prediction (and scores as empty).

  Returns:
    {id: prediction} in the order of `references`.
  """
  catalogue = all_baselines()
  if baseline not in catalogue:
    raise ValueError(f"unknown baseline {baseline!r}; choose from {sorted(catalogue)}")
  by_id = {}
  for path in task_paths:
    task = load_task(path)
    try:
      by_id.update(catalogue[baseline](task))
    except (KeyError, TypeError) as e:
      raise ValueError(f"{path}: malformed SuperNI task ({e!r})") from e
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
  missing = [ref["id"] for ref in references if ref["id"] not in by_id]
  if missing and not allow_missing:
    shown = ", ".join(repr(i) for i in missing[:_MAX_IDS_SHOWN])
    raise ValueError(f"{len(missing)} reference id(s) are in none of the task files, e.g. {shown}")
  return {ref["id"]: by_id[ref["id"]] for ref in references if ref["id"] in by_id}


def write_predictions(path: str, predictions: Mapping[str, str]) -> None:
  """Writes {id: prediction} as predictions JSONL."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for instance_id, prediction in predictions.items():
      f.write(json.dumps({"id": instance_id, "prediction": prediction}, ensure_ascii=False) + "\n")


def _define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importers get no global flags)."""
  flags.DEFINE_enum("baseline", None, sorted(all_baselines()), "Which baseline.", required=True)
  flags.DEFINE_list("task_files", None, "SuperNI task JSON files or globs, comma-separated.", required=True)
  flags.DEFINE_string("references", None, "References JSONL file.", required=True)
  flags.DEFINE_string("output", None, "Where to write predictions JSONL.", required=True)
  errors.local_path_flags("output")
  flags.DEFINE_bool("allow_missing", False, "Allow references found in no task file (they score as empty).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  paths = []
  for pattern in args.task_files:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise errors.UserError(f"--task_files: nothing matches {pattern!r}")
    paths += matches
  try:
    references = score_lib.load_references(args.references)
    predictions = predict(args.baseline, paths, references, allow_missing=args.allow_missing)
  except (OSError, ValueError) as e:
    raise errors.UserError(str(e)) from None
  write_predictions(args.output, predictions)
  print(f"wrote {len(predictions)} {args.baseline} predictions for {len(references)} references "
        f"from {len(paths)} task file(s) to {args.output}")


if __name__ == "__main__":
  _define_flags()
  errors.run(main)
