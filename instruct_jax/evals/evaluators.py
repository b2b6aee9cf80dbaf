"""Evaluators: render held-out examples, ask a predict function, score, and group the scores.

The contract is small: an evaluation is a list of `EvalSet`s (tasks, templates, split, number of
examples, and the condition it measures, e.g. "seen_templates"), run with a `generate_fn` (and,
for tasks with answer options, a `loglik_fn` for rank classification) that the caller builds from its
model. Evaluators never import models. Results: one row per example in the schema every evaluator shares
(`instruct_jax.evals.metrics`: id, condition, task, category, cluster, template id, shots, prediction and its
scores, among them "score", the task's own metric: exact match or ROUGE-L as `Task.metric` says), and means x
100 per (condition, cluster), per condition, per task, per category, per template and per shot count
(`metrics.aggregate(rows, by=...)` groups by any fields).

The built-in evaluation (`builtin_eval_sets`) measures instruction following three ways: training
clusters with the templates seen in training, the same clusters with templates never seen, and a whole
cluster held out of training.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from instruct_jax.data import builtin
from instruct_jax.data import render as render_lib
from instruct_jax.data import superni
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import metrics as metrics_lib
from instruct_jax.evals import rank as rank_lib


@dataclasses.dataclass(frozen=True)
class EvalSet:
  condition: str  # what this set measures, e.g. "seen_templates", "unseen_templates", "held_out_cluster"
  tasks: tuple[str, ...]
  template_ids: tuple[int, ...] | None = None  # None: every template of the task
  split: str = "test"
  num_examples: int = 20
  few_shot_rate: float = 0.0


def builtin_eval_sets(*, held_out_cluster: str | None, seen_templates: Sequence[int] | None,
                      unseen_templates: Sequence[int], num_examples: int) -> list[EvalSet]:
  """The three conditions of the built-in family (see module docstring); seen_templates None: all."""
  if held_out_cluster is not None and held_out_cluster not in builtin.CLUSTERS:
    raise ValueError(f"config.eval.held_out_cluster={held_out_cluster!r}: unknown cluster; clusters: "
                     f"{sorted(builtin.CLUSTERS)}")
  train = tuple(f"builtin/{n}" for c, names in builtin.CLUSTERS.items() if c != held_out_cluster for n in names)
  seen = None if seen_templates is None else tuple(seen_templates)
  sets = [EvalSet("seen_templates", train, seen, num_examples=num_examples)]
  if unseen_templates:
    sets.append(EvalSet("unseen_templates", train, tuple(unseen_templates), num_examples=num_examples))
  if held_out_cluster is not None:
    held = tuple(f"builtin/{n}" for n in builtin.CLUSTERS[held_out_cluster])
    sets.append(EvalSet("held_out_cluster", held, None, num_examples=num_examples))
  return sets


def eval_sets(e, mixtures: Mapping[str, Any] | None = None) -> list[EvalSet]:
  """The evaluation a config's `eval` section asks for: its tasks (a mixture name stands for its tasks),
  or the built-in conditions."""
  if e.tasks:
    names = []
    for name in e.tasks:
      names += list(mixtures[name].members) if mixtures and name in mixtures else [name]
    return [EvalSet("tasks", tuple(names), None, e.split, e.num_examples)]
  return builtin_eval_sets(held_out_cluster=e.held_out_cluster or None, seen_templates=tuple(e.seen_templates) or None,
                           unseen_templates=tuple(e.unseen_templates), num_examples=e.num_examples)


def config_rows(eval_section, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Any]) -> list[dict]:
  """The rendered examples of a run config's `eval` section (its tasks, or the built-in conditions)."""
  return render_eval_examples(eval_sets(eval_section, mixtures), tasks)


def task_category(task: tasks_lib.Task) -> str:
  """A SuperNI task's category as its task file gives it (the first of "Categories"), else the task's cluster."""
  if isinstance(task.source, superni.SuperNISource) and task.source.task["categories"]:
    return task.source.task["categories"][0]
  return task.cluster


def render_eval_examples(sets: Sequence[EvalSet], catalogue: Mapping[str, tasks_lib.Task]) -> list[dict[str, Any]]:
  """Deterministic examples for every set; each row carries id, condition, task, cluster, template."""
  rows = []
  for s in sets:
    cfg = render_lib.RenderConfig(template_ids=s.template_ids, template_choice="round_robin",
                                  few_shot_rate=s.few_shot_rate)
    for name in s.tasks:
      task = tasks_lib.lookup(catalogue, name)
      for i, ex in enumerate(render_lib.render_split(task, s.split, cfg, n=s.num_examples)):
        rows.append({"id": f"{s.condition}/{name}/{i}", "condition": s.condition, "task": name,
                     "category": task_category(task), "cluster": task.cluster, "template_id": ex["template_id"],
                     "shots": ex["shots"], "metric": metrics_lib.TASK_METRICS[task.metric], "inputs": ex["inputs"],
                     "references": list(ex["references"]), "options": list(task.options or [])})
  return rows


def evaluate(rows: list[dict[str, Any]], generate_fn: Callable[[Sequence[str]], list[str]],
             loglik_fn: Callable | None = None) -> list[dict[str, Any]]:
  """Adds prediction, exact_match and rougeL, score (the row's "metric" of them) and rank_accuracy (where a row has
  options) to each row."""
  predictions = generate_fn([r["inputs"] for r in rows])
  out = []
  for r, pred in zip(rows, predictions):
    scores = metrics_lib.instance_scores(pred, r["references"])
    out.append({**r, "prediction": pred, **scores, "score": scores[r.get("metric", "exact_match")]})
  ranked = [r for r in out if r["options"]]
  if loglik_fn is not None and ranked:
    examples = [rank_lib.RankExample(r["inputs"], tuple(r["options"])) for r in ranked]
    result = rank_lib.rank_classify(loglik_fn, examples)
    for r, choice in zip(ranked, result.choices):
      r["rank_accuracy"] = metrics_lib.exact_match(choice, r["references"])
  return out


# summarize's groupings: name -> the row fields whose values make a group's key ("condition/cluster", ...).
GROUPINGS = {"by_cluster": ("condition", "cluster"), "by_condition": ("condition",), "by_task": ("condition", "task"),
             "by_category": ("condition", "category"), "by_template": ("condition", "template_id"),
             "by_shots": ("condition", "shots")}


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """`aggregate` for each of GROUPINGS: per (condition, cluster), condition, task, template id and shot count."""
  rows = list(rows)
  return {name: metrics_lib.aggregate(rows, by) for name, by in GROUPINGS.items()
          if all(k in r for r in rows for k in by)}


def flat_scalars(summary: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
  """{eval/<condition>/<cluster>/<metric>: value} for metric writers (per-task rows left out)."""
  out = {}
  for group in ("by_condition", "by_cluster", "by_template", "by_shots"):
    for key, scores in summary.get(group, {}).items():
      if group in ("by_template", "by_shots"):  # "condition/7" -> "condition/template_7"
        condition, value = key.rsplit("/", 1)
        key = f"{condition}/{group.removeprefix('by_').removesuffix('s')}_{value}"
      for metric, value in scores.items():
        if metric != "n":
          out[f"{prefix}{key}/{metric}"] = value
  return out


def long_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The summary as rows {grouping, key, metric, value} (counts as metric "n"), for eval_results.csv."""
  return [{"grouping": grouping, "key": key, "metric": metric, "value": value}
          for grouping, groups in summary.items() if isinstance(groups, Mapping)
          for key, scores in groups.items() for metric, value in scores.items()]


def format_table(summary: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> str:
  """Exact match and ROUGE-L per condition and cluster; with `before`, as before -> after."""
  lines = [f"{'condition':<18} {'cluster':<10} {'n':>5}  {'exact match':>17}  {'ROUGE-L':>17}"]
  rows = [(k.split("/")[0], k.split("/")[1], v) for k, v in summary["by_cluster"].items()]
  rows += [(k, "ALL", v) for k, v in summary["by_condition"].items()]
  for condition, cluster, v in sorted(rows, key=lambda x: (x[0], x[1] == "ALL", x[1])):
    def cell(metric):
      after = f"{v[metric]:6.1f}"
      if before is None:
        return f"{after:>17}"
      key = f"{condition}/{cluster}" if cluster != "ALL" else condition
      prev = before["by_cluster" if cluster != "ALL" else "by_condition"].get(key, {}).get(metric)
      return f"{prev:6.1f} -> {after}" if prev is not None else f"{after:>17}"
    lines.append(f"{condition:<18} {cluster:<10} {v['n']:>5}  {cell('exact_match'):>17}  {cell('rougeL'):>17}")
  return "\n".join(lines)


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
