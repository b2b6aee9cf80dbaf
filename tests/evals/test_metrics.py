"""Tests for instruct_jax.evals.metrics against rouge_score and SuperNI's published rules."""
import json
import string

import pytest
from rouge_score import rouge_scorer

from instruct_jax.evals import metrics


def superni_normalize(text: str) -> str:
  """SuperNI's normalisation, written independently: lowercase, drop punctuation, squeeze spaces."""
  punctuation = set(string.punctuation)
  return " ".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


def test_normalize_answer_keeps_articles_and_non_ascii_punctuation():
  assert metrics.normalize_answer("  The  Cat's\tHAT!! ") == "the cats hat"
  assert metrics.normalize_answer("A an THE") == "a an the"
  assert metrics.normalize_answer("x-y_z (1,2)") == "xyz 12"
  assert metrics.normalize_answer("\u201cquoted\u201d") == "\u201cquoted\u201d"


def test_normalize_answer_matches_independent_version_on_real_references(shared_data):
  path = shared_data / "natural-instructions" / "test_references.jsonl"
  texts = [ref for line in path.read_text().splitlines() for ref in json.loads(line)["references"]]
  texts += ["¿Qué?  ¡Sí!", "line\nbreak\u00a0nbsp", "", "!!!"]
  assert len(texts) > 244
  for text in texts:
    assert metrics.normalize_answer(text) == superni_normalize(text), text


def test_exact_match_takes_max_over_references_and_treats_missing_as_empty():
  assert metrics.exact_match("The answer.", ["nope", "the  answer"]) == 1.0
  assert metrics.exact_match("an answer", ["answer"]) == 0.0  # Articles are not removed.
  assert metrics.exact_match(None, ["?!"]) == 1.0  # Missing == "" and "?!" normalises to "".
  assert metrics.exact_match(None, ["x"]) == 0.0


@pytest.mark.parametrize("bad", [[], "a string"])
def test_metrics_reject_bad_references(bad):
  with pytest.raises(ValueError, match="non-empty list"):
    metrics.exact_match("x", bad)
  with pytest.raises(ValueError, match="non-empty list"):
    metrics.rouge_l("x", bad)


def test_rouge_l_reproduces_published_test_vectors_without_stemming(shared_data):
  targets = (shared_data / "rouge_testdata" / "target.txt").read_text().splitlines()
  predictions = (shared_data / "rouge_testdata" / "prediction.txt").read_text().splitlines()
  got = [metrics.rouge_l(p, [t], use_stemmer=False) for t, p in zip(targets, predictions)]
  assert got == pytest.approx([0.51163, 0.50000], abs=5e-6)


def test_rouge_l_with_stemming_equals_rouge_score(shared_data):
  targets = (shared_data / "rouge_testdata" / "target.txt").read_text().splitlines()
  predictions = (shared_data / "rouge_testdata" / "prediction.txt").read_text().splitlines()
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  for target, prediction in zip(targets, predictions):
    expected = scorer.score(target=target, prediction=prediction)["rougeL"].fmeasure
    assert metrics.rouge_l(prediction, [target]) == expected
  # Stemming matters on line 1, so the default really is the stemming scorer.
  assert metrics.rouge_l(predictions[1], [targets[1]]) != metrics.rouge_l(
      predictions[1], [targets[1]], use_stemmer=False)


def test_rouge_l_is_max_over_references_and_argument_order_matters():
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  prediction, refs = "the quick brown fox", ["a slow fox", "the quick dog jumps over"]
  expected = max(scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure for r in refs)
  assert metrics.rouge_l(prediction, refs) == expected
  assert 0.0 < expected < 1.0
  assert metrics.rouge_l(None, ["anything"]) == 0.0
  assert metrics.rouge_l("\u6771\u4eac", ["\u6771\u4eac"]) == 0.0  # Non-Latin text has no tokens.
  assert metrics.rouge_l_scorer() is metrics.rouge_l_scorer()  # Built once.


def test_superni_summary_means_times_100_by_group():
  rows = [
      {"task": "t1", "category": "A", "track": "default", "exact_match": 1.0, "rougeL": 0.5},
      {"task": "t1", "category": "A", "track": "default", "exact_match": 0.0, "rougeL": 0.25},
      {"task": "t2", "category": "B", "track": "xlingual", "exact_match": 1.0, "rougeL": 1.0},
  ]
  result = metrics.superni_summary(rows)
  assert result["num_instances"] == 3
  assert result["overall"] == pytest.approx({"exact_match": 200 / 3, "rougeL": 175 / 3})
  assert result["by_task"]["t1"] == pytest.approx({"exact_match": 50.0, "rougeL": 37.5, "num_instances": 2})
  assert result["by_category"]["B"] == {"exact_match": 100.0, "rougeL": 100.0, "num_instances": 1}
  assert sorted(result["by_track"]) == ["default", "xlingual"]
  no_track = metrics.superni_summary([{k: v for k, v in row.items() if k != "track"} for row in rows])
  assert "by_track" not in no_track
  with pytest.raises(ValueError, match="zero instances"):
    metrics.superni_summary([])
  # One grouping underneath: aggregate by any field gives the same numbers, its count as "n".
  assert metrics.aggregate(rows, by=("category",))["A"] == pytest.approx({"exact_match": 50.0, "rougeL": 37.5, "n": 2})
  assert list(metrics.aggregate(rows, by=("category", "track"))) == ["A/default", "B/xlingual"]
  assert metrics.aggregate([{"a": 1, "score": 1.0}, {"a": None, "score": 0.0}], by=("a",)) == {"1": {"score": 100.0, "n": 1}}
