"""SuperNI metrics: exact match and ROUGE-L, computed as the official SuperNI evaluation does.

Per instance (scores in [0, 1]):

* exact match: 1.0 when `normalize_answer(prediction)` equals `normalize_answer(reference)` for some
  reference, else 0.0. Normalisation lowercases, deletes every character of `string.punctuation` and
  collapses runs of whitespace. Articles are kept (unlike SQuAD's normalisation).
* ROUGE-L: the F-measure from `rouge_score.RougeScorer(["rougeL"], use_stemmer=True)`, called as
  `score(target=reference, prediction=prediction)`, maximised over the references. Its tokenizer keeps
  only [a-z0-9] runs, so text in non-Latin scripts scores 0.

A missing prediction (None) is scored as the empty string.

Every evaluator in instruct_jax produces rows of one schema: id, task, category (a SuperNI task file's category,
else the task's cluster), and where they apply condition, cluster, template_id, shots and track, plus the
prediction and its scores in [0, 1] (exact_match, rougeL; rank_accuracy for tasks with answer options; score,
the task's own metric). `aggregate(rows, by=...)` is the one grouping of such rows: means x 100 and a count per
group of equal `by` fields. `superni_summary` presents it as SuperNI papers do: overall and per task category,
task and track. For example `exact_match("The Answer!", ["the answer"])` is 1.0, and summarising one row
`{"task": "t1", "category": "c", "exact_match": 1.0, "rougeL": 0.5}` gives an overall
`{"exact_match": 100.0, "rougeL": 50.0}`.

SuperNI's xlingual track scores ROUGE with a multilingual tokenizer; this module uses the default
tokenizer for every track.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import functools
import string

from rouge_score import rouge_scorer

METRIC_NAMES = ("exact_match", "rougeL")  # SuperNI's two metrics
ROW_METRICS = ("score", "exact_match", "rougeL", "rank_accuracy")  # what a row may carry, in report order
TASK_METRICS = {"exact_match": "exact_match", "rouge_l": "rougeL",  # Task.metric -> the row field it names
                "rank_accuracy": "rank_accuracy"}

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Row fields that `superni_summary` groups by, and the key each group gets in its output.
_GROUPINGS = (("category", "by_category"), ("task", "by_task"), ("track", "by_track"))


def normalize_answer(text: str) -> str:
  """Lowercases, removes ASCII punctuation and collapses whitespace (SuperNI's normalisation)."""
  return " ".join(text.lower().translate(_DELETE_PUNCTUATION).split())


def _check_references(references: Sequence[str]) -> None:
  if isinstance(references, str) or not references:
    raise ValueError(f"references must be a non-empty list of strings, got {references!r}")


def exact_match(prediction: str | None, references: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals some normalised reference, else 0.0."""
  _check_references(references)
  normalized = normalize_answer(prediction or "")
  return float(any(normalized == normalize_answer(ref) for ref in references))


@functools.lru_cache(maxsize=2)
def rouge_l_scorer(use_stemmer: bool = True) -> rouge_scorer.RougeScorer:
  """The shared ROUGE-L scorer (built once per stemming setting)."""
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str | None, references: Sequence[str], *, use_stemmer: bool = True) -> float:
  """Max over references of the ROUGE-L F-measure of score(target=reference, prediction)."""
  _check_references(references)
  scorer = rouge_l_scorer(use_stemmer)
  prediction = prediction or ""
  return max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in references)


def instance_scores(prediction: str | None, references: Sequence[str]) -> dict[str, float]:
  """Both SuperNI metrics for one instance, in [0, 1]."""
  return {"exact_match": exact_match(prediction, references), "rougeL": rouge_l(prediction, references)}


def aggregate(rows: Iterable[Mapping], by: Sequence[str] = (),
              metrics: Sequence[str] = ROW_METRICS) -> dict[str, dict[str, float]]:
  """Means x 100 of each of `metrics` that a group's rows carry, and the group's size "n", per group of rows
  with equal values of the fields `by`. A group's key is those values joined by "/" (by=("condition",
  "template_id") -> "unseen_templates/9"; by=() -> one group, ""); keys are sorted, numbers as numbers. Rows
  whose value of a `by` field is None are left out."""
  groups: dict[tuple, list[Mapping]] = collections.defaultdict(list)
  for r in rows:
    key = tuple(r.get(k) for k in by)
    if None not in key:
      groups[key].append(r)
  out = {}
  for key in sorted(groups, key=lambda k: tuple((isinstance(v, str), v) for v in k)):
    members = groups[key]
    scores = {}
    for m in metrics:
      values = [x[m] for x in members if x.get(m) is not None]
      if values:
        scores[m] = 100.0 * sum(values) / len(values)
    out["/".join(str(v) for v in key)] = {**scores, "n": len(members)}
  return out


def superni_summary(rows: Iterable[Mapping]) -> dict:
  """SuperNI's presentation of `aggregate`: exact match and ROUGE-L x 100 overall and per group.

  Args:
    rows: evaluation rows with "exact_match" and "rougeL" in [0, 1] and the grouping fields "category" and
      "task"; "track" is optional (rows without it are left out of by_track).

  Returns:
    {"num_instances", "overall": {metric: value}, "by_category", "by_task", "by_track"}, where each
    "by_*" maps a group name to {metric: value, "num_instances": n}; groups are sorted by name.
    "by_track" is omitted when no row has a track.
  """
  rows = list(rows)
  if not rows:
    raise ValueError("cannot aggregate zero instances")
  def groups(by):
    return {k: {m: v[m] for m in METRIC_NAMES} | {"num_instances": v["n"]}
            for k, v in aggregate(rows, by, METRIC_NAMES).items()}
  result = {"num_instances": len(rows), "overall": {m: v for m, v in groups(())[""].items() if m != "num_instances"}}
  for field, key in _GROUPINGS:
    found = groups((field,))
    if field != "track" or found:
      result[key] = found
  return result
