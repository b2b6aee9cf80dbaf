"""Evaluation rows carry task, category, cluster, template id and shots; results come out per template and per
shot count; one row schema and one grouping serve built-in tasks and SuperNI alike."""
import pytest

from instruct_jax import predict
from instruct_jax.data import mixtures
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import evaluators
from instruct_jax.evals import metrics
from instruct_jax.evals import score


@pytest.fixture(scope="module")
def rows():
  tasks, _ = mixtures.catalogues()
  sets = evaluators.builtin_eval_sets(held_out_cluster="check", seen_templates=(0, 1), unseen_templates=(8, 9),
                                      num_examples=4)
  return evaluators.render_eval_examples(sets, tasks)


def test_every_row_carries_what_results_are_grouped_by(rows):
  for r in rows:
    assert {"condition", "task", "category", "cluster", "template_id", "shots", "metric"} <= set(r)
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
  assert metrics.aggregate(rows, by=("a",)) == {"x": {"exact_match": 50.0, "n": 2},
                                                "y": {"exact_match": 100.0, "n": 1}}
  assert list(metrics.aggregate(rows, by=("b",))) == ["2", "10"]  # numbers sort as numbers
  assert metrics.aggregate(rows, by=("a", "b"))["x/10"] == {"exact_match": 0.0, "n": 1}


def test_superni_and_builtin_rows_share_one_schema_and_score_by_the_tasks_own_metric(shared_data):
  """A SuperNI task (ROUGE-L, its file's category) and a built-in one (exact match, its cluster) evaluated together:
  "score" is each task's own metric, and the SuperNI summary comes from the same rows without rescoring."""
  tasks, _ = mixtures.catalogues(tasks_lib.DataPaths(superni_dir=str(shared_data / "natural-instructions")))
  copa = "niv2/task1393_superglue_copa_text_completion"
  sets = [evaluators.EvalSet("tasks", (copa, "builtin/sort_ascending"), None, num_examples=3)]
  rows = evaluators.render_eval_examples(sets, tasks)
  assert {(r["task"], r["category"], r["metric"]) for r in rows} == {
      (copa, tasks[copa].source.task["categories"][0], "rougeL"), ("builtin/sort_ascending", "order", "exact_match")}
  # SuperNI in its published encoding (template 0: Definition + 2 positive examples); other tasks round-robin.
  assert {r["template_id"] for r in rows if r["task"] == copa} == {0}
  assert len({r["template_id"] for r in rows if r["task"] != copa}) == 3
  half = {r["inputs"]: " ".join(r["references"][0].split()[:1]) for r in rows}  # the reference's first word
  scored = evaluators.evaluate(rows, lambda prompts: [half[p] for p in prompts])
  for r in scored:
    assert r["score"] == r[r["metric"]]
  summary = evaluators.summarize(scored)
  assert summary["by_category"]["tasks/order"]["score"] == summary["by_category"]["tasks/order"]["exact_match"]
  superni = score.summarize([{**r, "track": "default"} for r in scored])
  refs = [{"id": r["id"], "references": r["references"], "task_id": r["task"], "task_category": r["category"]}
          for r in scored]
  scorer = score.score(refs, {r["id"]: r["prediction"] for r in scored})
  assert superni == {k: v for k, v in scorer.items() if k != "official"} | {"by_track": superni["by_track"]}
  assert superni["by_task"][copa]["rougeL"] == summary["by_task"][f"tasks/{copa}"]["rougeL"]


def test_evaluator_specs_from_config_files_and_command_lines():
  from instruct_jax import configs
  c = configs.base()
  c.evals.held = dict(kind="tasks", tasks=("builtin_check",), every=5, num_examples=2)
  c.evals.flag = "kind=tasks,tasks=builtin/reverse+builtin/first_k,every=0,before_training=true"
  tasks, mixes = mixtures.catalogues()
  evals = evaluators.from_config(c, tasks, mixes)
  assert [(e.name, e.every, e.before_training) for e in evals] == [("eval", 0, True), ("flag", 0, True),
                                                                   ("held", 5, False)]  # then in name order
  assert {r["task"] for r in evals[1].rows} == {"builtin/reverse", "builtin/first_k"}
  assert {r["condition"] for r in evals[2].rows} == {"held"} and len(evals[2].rows) == 3 * 2
  assert evals[2].due(10) and not evals[2].due(7) and not evals[1].due(10)
  for name, spec, message in [
      ("a", "kind=tasks", "config.evals.a.tasks: a tasks evaluator names"),
      ("a", "kind=superni", "config.evals.a.split"),
      ("a", "kind=bleu,tasks=x", "config.evals.a.kind: expected one of"),
      ("a", "kind=tasks,tasks=x,every=often", "config.evals.a.every: expected an integer"),
      ("a", {"kind": "tasks", "tasks": ("x",), "evry": 3}, "config.evals.a.evry: no such key"),
      ("a", "tasks", "expected KEY=VALUE pairs"),
      ("seen_templates", "kind=tasks,tasks=x", "an evaluator's name"),
      ("a", "kind=tasks,tasks=x,before_training=ture", "config.evals.a.before_training: expected true or false"),
      ("a", {"kind": "tasks", "tasks": "x", "num_examples": "5"}, "config.evals.a.num_examples: expected an integer"),
  ]:
    with pytest.raises(evaluators.EvalConfigError, match=message):
      evaluators.parse_spec(name, spec)
  assert evaluators.parse_spec("a", {"kind": "tasks", "tasks": "builtin/reverse+builtin_check"})["tasks"] == (
      "builtin/reverse", "builtin_check")  # one string in a config file too, never its characters
  c.evals.bad = "kind=tasks,tasks=no_such_task"
  with pytest.raises(evaluators.EvalConfigError, match="config.evals.bad.tasks: no task or mixture 'no_such_task'"):
    evaluators.from_config(c, tasks, mixes)


def test_an_evaluator_yields_scalars_and_superni_tables_from_predict_fns(shared_data):
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths(superni_dir=str(shared_data / "natural-instructions")))
  spec = evaluators.parse_spec("ni", "kind=superni,split=test,num_examples=2")
  from instruct_jax import configs
  ev = evaluators.build_evaluator("ni", spec, configs.base().eval, tasks, mixes,
                                  str(shared_data / "natural-instructions"))
  echo = predict.PredictFns(generate=lambda prompts: [p.split()[-1] for p in prompts])
  scalars = dict(ev.run(echo))
  table = ev.summary["superni"]
  assert scalars["eval/ni/superni_overall/rougeL"] == table["overall"]["rougeL"]
  assert {k.split("/")[3] for k in scalars if "/superni_category/" in k} == set(table["by_category"])
  assert table["num_instances"] == len(ev.rows) == 2 * len(table["by_task"])
  rows = ev.result_rows()
  assert {r["evaluator"] for r in rows} == {"ni"}
  assert {r["grouping"] for r in rows} >= {"by_cluster", "superni_overall", "superni_by_category", "superni_by_task"}


def test_a_new_evaluator_kind_is_one_table_entry():
  """The table of kinds is open: a kind names its keys and builds an Evaluator from the run's context."""
  from instruct_jax import configs  # pylint: disable=g-import-not-at-top

  def build(name, spec, ctx):
    task = ctx.tasks[spec["task"]]
    rows = evaluators.render_eval_examples([evaluators.EvalSet(name, (task.name,), None, "test", 2)], ctx.tasks)
    return evaluators.Evaluator(name, rows, every=spec.get("every", 0))

  kinds = {**evaluators.KINDS, "one_task": evaluators.EvaluatorKind("one_task", ("task",), ("task",), "task", build)}
  c = configs.base()
  c.evals.mine = "kind=one_task,task=builtin/reverse,every=4"
  tasks, mixes = mixtures.catalogues()
  with pytest.raises(evaluators.EvalConfigError, match="config.evals.mine.kind: expected one of"):
    evaluators.from_config(c, tasks, mixes)  # not in the built-in table
  mine = evaluators.from_config(c, tasks, mixes, kinds)[1]
  assert (mine.name, mine.every, len(mine.rows), {r["task"] for r in mine.rows}) == ("mine", 4, 2, {"builtin/reverse"})
  echo = predict.PredictFns(generate=lambda prompts: ["x"] * len(prompts))
  assert "eval/mine/rougeL" in dict(mine.run(echo))
  with pytest.raises(evaluators.EvalConfigError, match="config.evals.bad.tasks: no such key; a one_task evaluator"):
    evaluators.parse_spec("bad", "kind=one_task,task=builtin/reverse,tasks=x", kinds)
  with pytest.raises(evaluators.EvalConfigError, match="config.evals.bad.task: a one_task evaluator names its task"):
    evaluators.parse_spec("bad", "kind=one_task", kinds)
