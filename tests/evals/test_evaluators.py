"""Evaluation rows carry task, cluster, template id and shots; results come out per template and per shot count."""
import pytest

from instruct_jax.data import mixtures
from instruct_jax.evals import evaluators


@pytest.fixture(scope="module")
def rows():
  tasks, _ = mixtures.catalogues()
  sets = evaluators.builtin_eval_sets(held_out_cluster="check", seen_templates=(0, 1), unseen_templates=(8, 9),
                                      num_examples=4)
  return evaluators.render_eval_examples(sets, tasks)


def test_every_row_carries_what_results_are_grouped_by(rows):
  for r in rows:
    assert {"condition", "task", "cluster", "template_id", "shots"} <= set(r)
  assert {r["template_id"] for r in rows if r["condition"] == "seen_templates"} == {0, 1}
  assert {r["template_id"] for r in rows if r["condition"] == "unseen_templates"} == {8, 9}


def test_results_per_template_list_seen_and_unseen_templates_one_by_one(rows):
  # A model that answers right only when prompted with templates 1 and 9.
  answer = {r["inputs"]: (r["references"][0] if r["template_id"] in (1, 9) else "") for r in rows}
  scored = evaluators.evaluate(rows, lambda prompts: [answer[p] for p in prompts])
  summary = evaluators.summarize(scored)
  by_template = summary["by_template"]
  assert by_template["seen_templates/0"]["exact_match"] == 0.0
  assert by_template["seen_templates/1"]["exact_match"] == 100.0
  assert by_template["unseen_templates/8"]["exact_match"] == 0.0
  assert by_template["unseen_templates/9"]["exact_match"] == 100.0
  n_seen = sum(r["condition"] == "seen_templates" for r in rows)
  assert by_template["seen_templates/0"]["n"] + by_template["seen_templates/1"]["n"] == n_seen
  assert summary["by_shots"]["seen_templates/0"]["n"] == n_seen  # zero-shot throughout
  scalars = evaluators.flat_scalars(summary)
  assert scalars["eval/unseen_templates/template_9/exact_match"] == 100.0
  assert "eval/seen_templates/shot_0/exact_match" in scalars


def test_aggregate_groups_by_any_fields():
  rows = [{"a": "x", "b": 2, "exact_match": 1.0}, {"a": "x", "b": 10, "exact_match": 0.0},
          {"a": "y", "b": 2, "exact_match": 1.0}]
  assert evaluators.aggregate(rows, by=("a",)) == {"x": {"exact_match": 50.0, "n": 2},
                                                   "y": {"exact_match": 100.0, "n": 1}}
  assert list(evaluators.aggregate(rows, by=("b",))) == ["2", "10"]  # numbers sort as numbers
  assert evaluators.aggregate(rows, by=("a", "b"))["x/10"] == {"exact_match": 0.0, "n": 1}
