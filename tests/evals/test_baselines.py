"""Tests for instruct_jax.evals.baselines on the shared SuperNI task files."""
import json
import os
import pathlib
import string
import subprocess
import sys

import pytest

from instruct_jax.evals import baselines
from instruct_jax.evals import score as score_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COPA = "task1393_superglue_copa_text_completion"


def superni_normalize(text: str) -> str:
  punctuation = set(string.punctuation)
  return " ".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


@pytest.fixture(name="superni")
def fixture_superni(shared_data):
  root = shared_data / "natural-instructions"
  return {
      "tasks": sorted(str(p) for p in (root / "tasks").glob("*.json")),
      "references": score_lib.load_references(str(root / "test_references.jsonl")),
      "root": root,
  }


def test_load_task_accepts_bare_nan(shared_data):
  path = shared_data / "natural-instructions" / "tasks" / "task063_first_i_elements.SUBSET.json"
  assert "NaN" in path.read_text()
  task = baselines.load_task(str(path))
  assert len(baselines.copy_input(task)) == len(task["Instances"]) == 16
  assert set(baselines.copy_demo(task).values()) == {task["Positive Examples"][0]["output"]}


def test_copy_demo_exact_match_on_copa_equals_count_from_file(superni):
  preds = baselines.predict("copy_demo", superni["tasks"], superni["references"])
  result = score_lib.score(superni["references"], preds)
  assert result["num_missing_predictions"] == 0

  task = json.loads((superni["root"] / "tasks" / f"{COPA}.json").read_text())
  demo = superni_normalize(task["Positive Examples"][0]["output"])
  eval_ids = {ref["id"] for ref in superni["references"] if ref["task_id"] == COPA}
  instances = [inst for inst in task["Instances"] if inst["id"] in eval_ids]
  assert len(instances) == 100
  hits = sum(demo in {superni_normalize(o) for o in inst["output"]} for inst in instances)
  assert result["by_task"][COPA]["exact_match"] == pytest.approx(100 * hits / len(instances))
  assert 0 < hits < len(instances)


def test_copy_input_scores_are_sensible(superni):
  refs = superni["references"]
  copy_input = score_lib.score(refs, baselines.predict("copy_input", superni["tasks"], refs))
  copy_demo = score_lib.score(refs, baselines.predict("copy_demo", superni["tasks"], refs))
  # Independently: copying the input matches a reference exactly for no instance of these tasks.
  inputs = {}
  for path in superni["tasks"]:
    for inst in baselines.load_task(path)["Instances"]:
      inputs[inst["id"]] = superni_normalize(inst["input"])
  expected_em = sum(inputs[r["id"]] in {superni_normalize(x) for x in r["references"]} for r in refs)
  assert copy_input["overall"]["exact_match"] == 100 * expected_em / len(refs) == 0.0
  # Rewriting a question keeps most of its words; copying the input beats copying a demo there.
  rewrite = "task1622_disfl_qa_text_modication"
  assert copy_input["by_task"][rewrite]["rougeL"] > max(50.0, copy_demo["by_task"][rewrite]["rougeL"])
  for result in (copy_input, copy_demo):
    for group in result["by_task"].values():
      assert 0.0 <= group["exact_match"] <= 100.0 and 0.0 <= group["rougeL"] <= 100.0


def test_predict_errors(superni, tmp_path):
  refs = superni["references"]
  one_task = [p for p in superni["tasks"] if COPA in p]
  with pytest.raises(ValueError, match=r"144 reference id\(s\) are in none of the task files"):
    baselines.predict("copy_input", one_task, refs)
  assert len(baselines.predict("copy_input", one_task, refs, allow_missing=True)) == 100
  with pytest.raises(ValueError, match="unknown baseline 'copy_all'"):
    baselines.predict("copy_all", one_task, refs)
  no_demo = tmp_path / "task_x.json"
  no_demo.write_text(json.dumps({"Positive Examples": [], "Instances": [{"id": "a", "input": "i", "output": ["o"]}]}))
  with pytest.raises(ValueError, match=f"{no_demo}: copy_demo needs .* positive example"):
    baselines.predict("copy_demo", [str(no_demo)], [{"id": "a"}])
  broken = tmp_path / "broken.json"
  broken.write_text('{"Instances": [\n{"id": }]}')
  with pytest.raises(ValueError, match=f"{broken}:2: malformed JSON"):
    baselines.load_task(str(broken))


def test_cli_writes_predictions_that_score_like_the_function(superni, tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
  out = tmp_path / "copy_demo.jsonl"
  refs_path = superni["root"] / "test_references.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "instruct_jax.evals.baselines", "--baseline=copy_demo",
       f"--task_files={superni['root'] / 'tasks' / '*.json'}", f"--references={refs_path}", f"--output={out}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "wrote 244 copy_demo predictions" in proc.stdout
  written = score_lib.load_predictions(str(out))
  assert written == baselines.predict("copy_demo", superni["tasks"], superni["references"])
