"""Tests for instruct_jax.evals.score: the scoring function and its command line, end to end."""
import json
import os
import pathlib
import string
import subprocess
import sys

import pytest
from rouge_score import rouge_scorer

from instruct_jax.evals import score as score_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def superni_normalize(text: str) -> str:
  punctuation = set(string.punctuation)
  return " ".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


def run_cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
  return subprocess.run(
      [sys.executable, "-m", "instruct_jax.evals.score", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def write_jsonl(path: pathlib.Path, records) -> pathlib.Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return path


def derived_predictions(references):
  """Per instance, cycling: first reference, perturbed reference, empty string, missing."""
  predictions = {}
  for i, ref in enumerate(references):
    first = ref["references"][0]
    if i % 4 == 0:
      predictions[ref["id"]] = first
    elif i % 4 == 1:
      words = first.split()
      predictions[ref["id"]] = " ".join(words[:-1] or ["!"]).upper() + " extra, words."
    elif i % 4 == 2:
      predictions[ref["id"]] = ""
  return predictions


def test_cli_per_instance_scores_match_independent_computation(shared_data, tmp_path):
  refs_path = shared_data / "natural-instructions" / "test_references.jsonl"
  references = [json.loads(line) for line in refs_path.read_text().splitlines()]
  predictions = derived_predictions(references)
  preds_path = write_jsonl(tmp_path / "p.jsonl", [{"id": k, "prediction": v} for k, v in predictions.items()])

  proc = run_cli(f"--references={refs_path}", f"--predictions={preds_path}",
                 f"--output={tmp_path / 'out' / 'metrics.json'}", f"--per_instance={tmp_path / 'rows.jsonl'}")
  assert proc.returncode == 0, proc.stderr

  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
  assert [row["id"] for row in rows] == [ref["id"] for ref in references]
  em_sum, rouge_sum, by_task = 0.0, 0.0, {}
  for ref, row in zip(references, rows):
    prediction = predictions.get(ref["id"], "")
    em = float(any(superni_normalize(prediction) == superni_normalize(r) for r in ref["references"]))
    rouge = max(scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure for r in ref["references"])
    assert (row["exact_match"], row["rougeL"]) == (em, rouge), ref["id"]
    assert row["prediction"] == predictions.get(ref["id"])
    em_sum, rouge_sum = em_sum + em, rouge_sum + rouge
    by_task.setdefault(ref["task_id"], []).append(em)

  result = json.loads((tmp_path / "out" / "metrics.json").read_text())
  n = len(references)
  assert result["num_instances"] == n == 244
  assert result["num_missing_predictions"] == n - len(predictions) == 61
  assert result["overall"] == pytest.approx({"exact_match": 100 * em_sum / n, "rougeL": 100 * rouge_sum / n})
  assert 0 < result["overall"]["exact_match"] < 100
  for task_id, ems in by_task.items():
    assert result["by_task"][task_id]["exact_match"] == pytest.approx(100 * sum(ems) / len(ems))
    assert result["by_task"][task_id]["num_instances"] == len(ems)
  assert sum(group["num_instances"] for group in result["by_category"].values()) == n
  assert list(result["by_track"]) == ["default"]
  # The printed table carries the same numbers.
  assert "61 without a prediction" in proc.stdout
  overall_line = next(line for line in proc.stdout.splitlines() if line.startswith("overall"))
  assert overall_line.split() == [
      "overall", str(n), f"{result['overall']['exact_match']:.2f}", f"{result['overall']['rougeL']:.2f}"]
  # The Python entry point gives the same result as the command.
  assert score_lib.score(references, predictions) == result


def test_cli_without_output_flags_prints_table(tmp_path):
  refs = write_jsonl(tmp_path / "r.jsonl", [
      {"id": "a", "references": ["Yes"], "task_id": "t1", "task_category": "C"},
      {"id": "b", "references": ["no", "No."], "task_id": "t2", "task_category": "C"},
  ])
  preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "yes!"}, "", {"id": "b", "prediction": "x"}])
  proc = run_cli(f"--references={refs}", f"--predictions={preds}")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert any(line.startswith("overall") and line.split()[-2:] == ["50.00", "50.00"] for line in lines)
  assert any(line.startswith("task: t2") and line.split()[-2:] == ["0.00", "0.00"] for line in lines)
  assert not any(line.startswith("track:") for line in lines)


REF = {"id": "a", "references": ["x"], "task_id": "t", "task_category": "c", "track": "default"}
PRED = {"id": "a", "prediction": "x"}


@pytest.mark.parametrize("refs, preds, expected", [
    ([REF, '{"id": "b", "references": ["y"]', REF], [PRED], ["r.jsonl:2: malformed JSON"]),
    ([REF], [PRED, "", "not json"], ["p.jsonl:3: malformed JSON"]),
    ([REF, "[1, 2]"], [PRED], ["r.jsonl:2: expected a JSON object"]),
    ([REF, {**REF, "id": "b", "task_category": None}], [PRED], ["r.jsonl:2", "'task_category'", "string"]),
    ([{k: v for k, v in REF.items() if k != "task_id"}], [PRED], ["r.jsonl:1: missing field 'task_id'"]),
    ([{**REF, "references": "x"}], [PRED], ["r.jsonl:1", "'references'", "non-empty list"]),
    ([REF], [{"id": "a"}], ["p.jsonl:1: missing field 'prediction'"]),
    ([REF, {**REF, "id": "b"}, REF], [PRED], ["r.jsonl", "duplicate id 'a' on lines 1 and 3"]),
    ([REF], ["", PRED, PRED], ["p.jsonl", "duplicate id 'a' on lines 2 and 3"]),
    ([REF], [PRED] + [{"id": f"u{i}", "prediction": ""} for i in range(7)],
     ["p.jsonl: 7 prediction id(s) not in the references", "'u0'", "'u4'", "(and 2 more)"]),
    ([], [PRED], ["r.jsonl: the file is empty"]),
])
def test_cli_errors_name_file_line_and_field(tmp_path, refs, preds, expected):
  refs_path = write_jsonl(tmp_path / "r.jsonl", refs)
  preds_path = write_jsonl(tmp_path / "p.jsonl", preds)
  proc = run_cli(f"--references={refs_path}", f"--predictions={preds_path}", f"--output={tmp_path / 'm.json'}")
  assert proc.returncode != 0
  for text in expected:
    assert text in proc.stderr
  assert not (tmp_path / "m.json").exists()


def test_cli_reports_missing_file(tmp_path):
  refs_path = write_jsonl(tmp_path / "r.jsonl", [REF])
  proc = run_cli(f"--references={refs_path}", f"--predictions={tmp_path / 'absent.jsonl'}")
  assert proc.returncode != 0
  assert "absent.jsonl" in proc.stderr


def test_score_function_rejects_unknown_and_duplicate_ids():
  refs = [dict(REF), {**REF, "id": "b"}]
  with pytest.raises(ValueError, match=r"1 prediction id\(s\) not in the references: 'zz'"):
    score_lib.score(refs, {"zz": "x"})
  with pytest.raises(ValueError, match="duplicate reference id 'a'"):
    score_lib.score([REF, REF], {})
  result = score_lib.score(refs, {"a": "X."})
  assert result["overall"]["exact_match"] == 50.0
  assert result["num_missing_predictions"] == 1


def test_official_flat_keys_name_groups_as_superni_scripts_do():
  rows = [{"task": "task1_qa", "category": "Question Answering", "exact_match": 1.0, "rougeL": 1.0},
          {"task": "task1_qa", "category": "Question Answering", "exact_match": 0.0, "rougeL": 1 / 3},
          {"task": "task2_mt", "category": "Translation", "track": "xlingual", "exact_match": 0.0, "rougeL": 0.5}]
  keys = score_lib.official_keys(rows)
  assert keys["exact_match"] == round(100 / 3, 4) and keys["rougeL"] == round(100 * (1 + 1 / 3 + 0.5) / 3, 4)
  assert keys["exact_match_for_question_answering"] == 50.0 and keys["rougeL_for_task1_qa"] == round(200 / 3, 4)
  assert keys["rougeL_default_track"] == round(200 / 3, 4) and keys["exact_match_xlingual_track"] == 0.0
  assert keys["rougeL_for_translation_xlingual_track"] == 50.0 and keys["exact_match_for_task1_qa_default_track"] == 50
  assert "rougeL_for_translation_default_track" not in keys
