"""SuperNI metrics: exact match and ROUGE-L, computed as the official SuperNI evaluation does.

Per instance (scores in [0, 1]):

* exact match: 1.0 when `normalize_answer(prediction)` equals `normalize_answer(reference)` for some
  reference, else 0.0. Normalisation lowercases, deletes every character of `string.punctuation` and
  collapses runs of whitespace. Articles are kept (unlike SQuAD's normalisation).
* ROUGE-L: the F-measure from `rouge_score.RougeScorer(["rougeL"], use_stemmer=True)`, called as
  `score(target=reference, prediction=prediction)`, maximised over the references. Its tokenizer keeps
  only [a-z0-9] runs, so text in non-Latin scripts scores 0.

A missing prediction (None) is scored as the empty string.

Aggregates are means over instances times 100, reported overall and per task category, task and
track. For example `exact_match("The Answer!", ["the answer"])` is 1.0, and aggregating one row
`{"task_id": "t1", "task_category": "c", "exact_match": 1.0, "rougeL": 0.5}` gives an overall
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

METRIC_NAMES = ("exact_match", "rougeL")

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Row fields that `aggregate` groups by, and the key each group gets in its output.
_GROUPINGS = (("task_category", "by_category"), ("task_id", "by_task"), ("track", "by_track"))


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


def _mean_x100(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
  return {name: 100.0 * sum(row[name] for row in rows) / len(rows) for name in METRIC_NAMES}


def aggregate(rows: Iterable[Mapping]) -> dict:
  """Means x 100 overall and per group.

  Args:
    rows: one mapping per instance with "exact_match" and "rougeL" in [0, 1] and the grouping fields
      "task_category" and "task_id"; "track" is optional (rows without it are left out of by_track).

  Returns:
    {"num_instances", "overall": {metric: value}, "by_category", "by_task", "by_track"}, where each
    "by_*" maps a group name to {metric: value, "num_instances": n}; groups are sorted by name.
    "by_track" is omitted when no row has a track.
  """
  rows = list(rows)
  if not rows:
    raise ValueError("cannot aggregate zero instances")
  result = {"num_instances": len(rows), "overall": _mean_x100(rows)}
  for field, key in _GROUPINGS:
    groups = collections.defaultdict(list)
    for row in rows:
      if row.get(field) is not None:
        groups[row[field]].append(row)
    if field == "track" and not groups:
      continue
    result[key] = {
        name: {**_mean_x100(members), "num_instances": len(members)} for name, members in sorted(groups.items())
    }
  return result
