"""Scores SuperNI-format predictions against references (exact match and ROUGE-L).

Command:

  python -m instruct_jax.evals.score --references=R.jsonl --predictions=P.jsonl \
      --output=metrics.json [--per_instance=scores.jsonl]

References JSONL, one object per line: {"id", "references": [str, ...], "task_id", "task_category",
"track"} ("track" optional). Predictions JSONL: {"id", "prediction": str}. Blank lines are skipped and
line numbers count from 1. A reference without a prediction scores as the empty prediction and is
counted in "num_missing_predictions"; a prediction whose id is not among the references is an error.

Evaluators call `score(references, predictions)` directly with the same dicts.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os

from absl import flags

from instruct_jax import errors
from instruct_jax.data import sources
from instruct_jax.evals import metrics

_MAX_IDS_SHOWN = 5


class InputError(ValueError):
  """Bad references or predictions; the message names the file, line and field."""


def _field(path: str, line_no: int, record: dict, name: str, *, optional: bool = False):
  """The string field `name`, or None when optional and absent."""
  if name not in record:
    if optional:
      return None
    raise InputError(f"{path}:{line_no}: missing field {name!r}")
  value = record[name]
  if not isinstance(value, str):
    raise InputError(f"{path}:{line_no}: field {name!r} must be a string, got {type(value).__name__}")
  return value


def _check_unique(path: str, line_no: int, instance_id: str, first_lines: dict[str, int]) -> None:
  if instance_id in first_lines:
    raise InputError(f"{path}: duplicate id {instance_id!r} on lines {first_lines[instance_id]} and {line_no}")
  first_lines[instance_id] = line_no


def load_references(path: str) -> list[dict]:
  """Reads and validates a references JSONL file (see the module docstring)."""
  references, first_lines = [], {}
  for line_no, record in sources.read_jsonl_numbered(path):
    instance_id = _field(path, line_no, record, "id")
    if "references" not in record:
      raise InputError(f"{path}:{line_no}: missing field 'references'")
    refs = record["references"]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
      raise InputError(f"{path}:{line_no}: field 'references' must be a non-empty list of strings")
    _check_unique(path, line_no, instance_id, first_lines)
    references.append({
        "id": instance_id,
        "references": refs,
        "task_id": _field(path, line_no, record, "task_id"),
        "task_category": _field(path, line_no, record, "task_category"),
        "track": _field(path, line_no, record, "track", optional=True),
    })
  return references


def load_predictions(path: str) -> dict[str, str]:
  """Reads and validates a predictions JSONL file into {id: prediction}."""
  predictions, first_lines = {}, {}
  for line_no, record in sources.read_jsonl_numbered(path):
    instance_id = _field(path, line_no, record, "id")
    prediction = _field(path, line_no, record, "prediction")
    _check_unique(path, line_no, instance_id, first_lines)
    predictions[instance_id] = prediction
  return predictions


def score_instances(
    references: Sequence[Mapping], predictions: Mapping[str, str], *, source: str = "predictions"
) -> list[dict]:
  """Per-instance scores in [0, 1], in the order of `references`.

  Args:
    references: dicts with "id", "references", "task_id", "task_category" and optionally "track".
    predictions: {id: prediction}; ids absent here score as the empty prediction.
    source: how to name the predictions in error messages (e.g. their file).

  Returns:
    One evaluation row per reference (the schema of `metrics`): id, task, category, track, prediction (None
    when missing), exact_match and rougeL.

  Raises:
    ValueError: duplicate reference ids, or prediction ids that are not among the references.
  """
  seen = set()
  for ref in references:
    if ref["id"] in seen:
      raise ValueError(f"duplicate reference id {ref['id']!r}")
    seen.add(ref["id"])
  unknown = [instance_id for instance_id in predictions if instance_id not in seen]
  if unknown:
    shown = ", ".join(repr(i) for i in unknown[:_MAX_IDS_SHOWN])
    more = f" (and {len(unknown) - _MAX_IDS_SHOWN} more)" if len(unknown) > _MAX_IDS_SHOWN else ""
    raise ValueError(f"{source}: {len(unknown)} prediction id(s) not in the references: {shown}{more}")
  rows = []
  for ref in references:
    prediction = predictions.get(ref["id"])
    rows.append({
        "id": ref["id"],
        "task": ref["task_id"],
        "category": ref["task_category"],
        "track": ref.get("track"),
        "prediction": prediction,
        **metrics.instance_scores(prediction, ref["references"]),
    })
  return rows


def summarize(rows: Sequence[Mapping]) -> dict:
  """`metrics.superni_summary` of evaluation rows (any evaluator's), and the count of missing predictions."""
  result = metrics.superni_summary(rows)
  result["num_missing_predictions"] = sum(row["prediction"] is None for row in rows)
  return result


def score(references: Sequence[Mapping], predictions: Mapping[str, str]) -> dict:
  """SuperNI metrics (x 100) overall, by_category, by_task and by_track (`metrics.superni_summary`), and the same as
  SuperNI's scripts' flat keys under "official" (`official_keys`)."""
  rows = score_instances(references, predictions)
  return summarize(rows) | {"official": official_keys(rows)}


def official_keys(rows: Sequence[Mapping]) -> dict[str, float]:
  """The flat metric keys SuperNI's scripts write, x 100 and rounded to 4 places as they round them.

  Tk-Instruct's compute_metrics over every row: `exact_match`, `rougeL`, `exact_match_for_<category>`,
  `rougeL_for_<task>`, ... (a category's words lower-cased and joined by "_"); and per track, as the leaderboard's
  eval/automatic/evaluation.py names them: `exact_match_default_track`, `rougeL_for_<category>_xlingual_track`,
  `exact_match_for_<task>_default_track`, ... (rows without a track are in the default track).
  """
  def means(subset: Sequence[Mapping]) -> dict[str, float]:
    return {m: round(100.0 * sum(float(r[m]) for r in subset) / len(subset), 4) for m in metrics.METRIC_NAMES}

  def grouped(subset: Sequence[Mapping], suffix: str) -> dict[str, float]:
    out = {f"{m}{suffix}": v for m, v in means(subset).items()}
    for field in ("category", "task"):
      groups: dict[str, list[Mapping]] = {}
      for r in subset:
        name = "_".join(str(r[field]).lower().split()) if field == "category" else str(r[field])
        groups.setdefault(name, []).append(r)
      for name, members in sorted(groups.items()):
        out.update({f"{m}_for_{name}{suffix}": v for m, v in means(members).items()})
    return out

  rows = list(rows)
  if not rows:
    raise ValueError("cannot aggregate zero instances")
  result = grouped(rows, "")
  for track in sorted({r.get("track") or "default" for r in rows}):
    result.update(grouped([r for r in rows if (r.get("track") or "default") == track], f"_{track}_track"))
  return result


def format_table(result: Mapping) -> str:
  """A plain-text table of the overall, per-category, per-task and per-track scores."""
  lines = [("overall", result["num_instances"], result["overall"])]
  for key, label in (("by_category", "category"), ("by_task", "task"), ("by_track", "track")):
    lines += [(f"{label}: {name}", group["num_instances"], group) for name, group in result.get(key, {}).items()]
  width = max(len(name) for name, _, _ in lines)
  out = [
      f"SuperNI scores (mean x 100) over {result['num_instances']} instances; "
      f"{result['num_missing_predictions']} without a prediction (scored as empty).",
      f"{'group':<{width}}  {'n':>6}  {'EM':>7}  {'ROUGE-L':>7}",
  ]
  for name, n, values in lines:
    out.append(f"{name:<{width}}  {n:>6}  {values['exact_match']:>7.2f}  {values['rougeL']:>7.2f}")
  return "\n".join(out)


def _define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importers get no global flags)."""
  flags.DEFINE_string("references", None, "References JSONL file.", required=True)
  flags.DEFINE_string("predictions", None, "Predictions JSONL file.", required=True)
  flags.DEFINE_string("output", None, "Where to write the metrics JSON (optional).")
  flags.DEFINE_string("per_instance", None, "Where to write per-instance scores as JSONL (optional).")
  errors.local_path_flags("output", "per_instance")


def _write(path: str, text: str) -> None:
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  try:
    references = load_references(args.references)
    if not references:
      raise InputError(f"{args.references}: no references")
    predictions = load_predictions(args.predictions)
    rows = score_instances(references, predictions, source=args.predictions)
  except (OSError, ValueError) as e:
    raise errors.UserError(str(e)) from None
  result = summarize(rows) | {"official": official_keys(rows)}  # = score(references, predictions)
  print(format_table(result))
  if args.output:
    _write(args.output, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
  if args.per_instance:
    _write(args.per_instance, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


if __name__ == "__main__":
  _define_flags()
  errors.run(main)
