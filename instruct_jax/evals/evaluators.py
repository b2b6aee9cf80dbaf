"""Evaluators: render held-out examples, ask a predict function, score, and group the scores.

The contract is small: an evaluation is a list of `EvalSet`s (tasks, templates, split, number of
examples, and the condition it measures, e.g. "seen_templates"), run with a `generate_fn` (and,
for tasks with answer options, a `loglik_fn` for rank classification) that the caller builds from its
model. Evaluators never import models. Results: one row per example in the schema every evaluator shares
(`instruct_jax.evals.metrics`: id, condition, task, category, cluster, template id, shots, prediction and its
scores, among them "score", the task's own metric: exact match, ROUGE-L or, for the Flan catalogue's
classification and multiple-choice tasks, rank accuracy over the options, as `Task.metric` says), and means x
100 per (condition, cluster), per condition, per task, per category, per template and per shot count
(`metrics.aggregate(rows, by=...)` groups by any fields).

The built-in evaluation (`builtin_eval_sets`) measures instruction following three ways: training
clusters with the templates seen in training, the same clusters with templates never seen, and a whole
cluster held out of training.

The contract, as big_vision's evaluators have it: an `Evaluator` holds its rendered rows and its schedule,
and `run(predict_fns)` yields (name, value) scalars (keeping the scored rows and the summary for the files).
`from_config(config, ...)` builds a run's evaluators: "eval" from the `eval` section (every `eval_every`
steps), and one per entry of the open map `evals`, each with its own kind and schedule:

    c.evals.ni_test = dict(kind="superni", split="test", every=500, num_examples=20)  # SuperNI's test tasks
    c.evals.mine = dict(kind="tasks", tasks=("mine",), every=0)    # only after training
    --config.evals.ni_test=kind=superni,split=test,every=500       # the same, on a command line

Keys: kind ("tasks" or "superni", or another kind of the run's table), tasks (kind tasks: tasks or mixtures; "a+b"
on a command line), split (kind tasks: the tasks' split, default "test"; kind superni: the split file's name),
num_examples (default: eval.num_examples), every (steps between runs; 0: at the end only), before_training (default
False).

Kinds are an open table (`KINDS`; the run's is `plan.EVALUATOR_KINDS`): an `EvaluatorKind` names its keys and
builds an `Evaluator` from an `EvalContext` (the eval section, the task and mixture catalogues, the SuperNI
directory), so a new evaluator is one module defining its kind and one entry in that table. Nothing registers
itself on import. Decoding
settings come from the `eval` section. A SuperNI evaluator also reports SuperNI's own table (overall, per
category, per task) as `evaluate --superni_split` does.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax

from instruct_jax import errors
from instruct_jax.data import builtin
from instruct_jax.data import flan2021
from instruct_jax.data import render as render_lib
from instruct_jax.data import superni
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import metrics as metrics_lib
from instruct_jax.evals import rank as rank_lib
from instruct_jax.evals import score as score_lib

if TYPE_CHECKING:  # the type only: evaluators are given text functions and never build a model
  from instruct_jax.predict import PredictFns


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
    raise unknown_cluster(held_out_cluster)
  train = tuple(f"builtin/{n}" for c, names in builtin.CLUSTERS.items() if c != held_out_cluster for n in names)
  seen = None if seen_templates is None else tuple(seen_templates)
  sets = [EvalSet("seen_templates", train, seen, num_examples=num_examples)]
  if unseen_templates:
    sets.append(EvalSet("unseen_templates", train, tuple(unseen_templates), num_examples=num_examples))
  if held_out_cluster is not None:
    held = tuple(f"builtin/{n}" for n in builtin.CLUSTERS[held_out_cluster])
    sets.append(EvalSet("held_out_cluster", held, None, num_examples=num_examples))
  return sets


class UnknownCluster(errors.UserError, ValueError):
  """config.eval.held_out_cluster names no cluster."""


def unknown_cluster(name: str) -> UnknownCluster:
  return UnknownCluster(f"config.eval.held_out_cluster={name!r}: unknown cluster; built-in clusters: "
                        f"{', '.join(sorted(builtin.CLUSTERS))}; Flan 2021 clusters: {', '.join(flan2021.CLUSTERS)}")


def held_out_tasks(cluster: str) -> tuple[str, ...]:
  """The tasks of config.eval.held_out_cluster (a built-in or a Flan 2021 cluster; "": none), which no training
  mixture may hold."""
  if not cluster:
    return ()
  if cluster in flan2021.CLUSTERS:
    return tuple(flan2021.cluster_tasks(cluster))
  if cluster in builtin.CLUSTERS:
    return tuple(f"builtin/{n}" for n in builtin.CLUSTERS[cluster])
  raise unknown_cluster(cluster)


USER_CLUSTERS = ("instructions", "chat", "preferences")  # tasks of the user's own files and datasets


def eval_sets(e, mixtures: Mapping[str, Any] | None = None, *, tasks: Mapping[str, tasks_lib.Task] | None = None,
              training_mixture: str | None = None, out: Callable[[str], None] = print) -> list[EvalSet]:
  """The evaluation a config's `eval` section asks for: its tasks (a mixture name stands for its tasks), and a
  held-out Flan 2021 cluster's tasks as the "held_out_cluster" condition (Flan's evaluation: rank classification for
  tasks with options, the task's generation metric otherwise).

  With neither, and `training_mixture` given: a mixture of built-in tasks gets the built-in conditions; any other
  gets the `e.split` split of each of its tasks read from the user's files or datasets that have one, or no
  evaluation; either is said on one line through `out` (never the built-in toy tasks in place of the user's data).
  Without `training_mixture` (a caller that names no run): the built-in conditions."""
  sets = []
  if e.tasks:
    names = []
    for name in e.tasks:
      names += list(mixtures[name].members) if mixtures and name in mixtures else [name]
    sets.append(EvalSet("tasks", tuple(names), None, e.split, e.num_examples))
  if e.held_out_cluster in flan2021.CLUSTERS:
    sets.append(EvalSet("held_out_cluster", tuple(flan2021.cluster_tasks(e.held_out_cluster)), None, e.split,
                        e.num_examples))
  if sets:
    return sets
  if training_mixture is not None and tasks is not None:
    from instruct_jax.data import mixtures as mixtures_lib  # pylint: disable=g-import-not-at-top  (data layer)
    trained = mixtures_lib.leaf_tasks(training_mixture, tasks, mixtures or {})
    if not all(t.startswith("builtin/") for t in trained):
      own = [t for t in trained if tasks[t].cluster in USER_CLUSTERS and e.split in tasks[t].source.splits]
      if not own:
        out(f"note: config.eval.tasks is unset and no task of config.data.mixture={training_mixture!r} read from your "
            f"files has a {e.split!r} split: nothing is evaluated (give a file a test split, NAME=train=A,test=B, or "
            "name tasks: --config.eval.tasks=\"('NAME',)\")")
        return []
      if not e.num_examples:
        out(f"note: config.eval.tasks is unset and config.eval.num_examples=0: nothing is evaluated (set "
            f"--config.eval.num_examples=N to score the {e.split!r} split of {', '.join(own)})")
        return []
      out(f"note: config.eval.tasks is unset: evaluating the {e.split!r} split of {', '.join(own)} "
          f"({e.num_examples} examples each)")
      return [EvalSet("tasks", tuple(own), None, e.split, e.num_examples)]
  return builtin_eval_sets(held_out_cluster=e.held_out_cluster or None, seen_templates=tuple(e.seen_templates) or None,
                           unseen_templates=tuple(e.unseen_templates), num_examples=e.num_examples)


def config_rows(eval_section, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Any], *,
                training_mixture: str | None = None, out: Callable[[str], None] = print) -> list[dict]:
  """The rendered examples of a run config's `eval` section (`eval_sets`)."""
  return render_eval_examples(eval_sets(eval_section, mixtures, tasks=tasks, training_mixture=training_mixture,
                                        out=out), tasks)


def task_category(task: tasks_lib.Task) -> str:
  """A SuperNI task's category as its task file gives it (the first of "Categories"), else the task's cluster."""
  if isinstance(task.source, superni.SuperNISource) and task.source.task["categories"]:
    return task.source.task["categories"][0]
  return task.cluster


# A SuperNI task is evaluated with template 0 (Tk-Instruct's "Definition + 2 positive examples", the encoding of
# SuperNI's published tables) unless an evaluation names template ids.
SUPERNI_EVAL_TEMPLATES = (0,)


def render_eval_examples(sets: Sequence[EvalSet], catalogue: Mapping[str, tasks_lib.Task]) -> list[dict[str, Any]]:
  """Deterministic examples for every set; each row carries id, condition, task, cluster, template."""
  rows = []
  for s in sets:
    for name in s.tasks:
      task = tasks_lib.lookup(catalogue, name)
      ids = s.template_ids
      if ids is None and isinstance(task.source, superni.SuperNISource):
        ids = SUPERNI_EVAL_TEMPLATES  # SuperNI is evaluated in one encoding, as its own evaluation does
      cfg = render_lib.RenderConfig(template_ids=ids, template_choice="round_robin", few_shot_rate=s.few_shot_rate)
      for i, ex in enumerate(render_lib.render_split(task, s.split, cfg, n=s.num_examples)):
        options = task.options
        if options is None:  # multiple choice: each example has its own options
          options = (task.example(s.split, ex["source_index"]) or {}).get("options")
        rows.append({"id": f"{s.condition}/{name}/{i}", "condition": s.condition, "task": name,
                     "category": task_category(task), "cluster": task.cluster, "template_id": ex["template_id"],
                     "shots": ex["shots"], "metric": metrics_lib.TASK_METRICS[task.metric], "inputs": ex["inputs"],
                     "references": list(ex["references"]), "options": list(options or [])})
  return rows


def evaluate(rows: list[dict[str, Any]], generate_fn: Callable[[Sequence[str]], list[str]],
             loglik_fn: Callable | None = None) -> list[dict[str, Any]]:
  """Adds prediction, exact_match and rougeL, score (the row's "metric" of them) and rank_accuracy (where a row has
  options) to each row."""
  predictions = generate_fn([r["inputs"] for r in rows])
  out = []
  for r, pred in zip(rows, predictions):
    scores = metrics_lib.instance_scores(pred, r["references"])
    metric = r.get("metric", "exact_match")  # rank_accuracy: exact match until the options are ranked below
    out.append({**r, "prediction": pred, **scores, "score": scores.get(metric, scores["exact_match"])})
  ranked = [r for r in out if r["options"]]
  if loglik_fn is not None and ranked:
    examples = [rank_lib.RankExample(r["inputs"], tuple(r["options"])) for r in ranked]
    result = rank_lib.rank_classify(loglik_fn, examples)
    for r, choice in zip(ranked, result.choices):
      r["rank_accuracy"] = metrics_lib.exact_match(choice, r["references"])
      if r.get("metric") == "rank_accuracy":
        r["score"] = r["rank_accuracy"]
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
  """Exact match and ROUGE-L per condition and cluster (and "score", each task's own metric, when it is neither in
  some group: rank accuracy over the options of a held-out Flan cluster's classification tasks); with `before`, as
  before -> after."""
  rows = [(k.split("/")[0], k.split("/")[1], v) for k, v in summary["by_cluster"].items()]
  rows += [(k, "ALL", v) for k, v in summary["by_condition"].items()]
  differs = lambda v, m: m not in v or abs(v["score"] - v[m]) > 1e-9
  with_score = any("score" in v and differs(v, "exact_match") and differs(v, "rougeL") for _, _, v in rows)
  lines = [f"{'condition':<18} {'cluster':<10} {'n':>5}  {'exact match':>17}  {'ROUGE-L':>17}"
           + (f"  {'score':>17}" if with_score else "")]
  for condition, cluster, v in sorted(rows, key=lambda x: (x[0], x[1] == "ALL", x[1])):
    def cell(metric):
      if metric not in v:
        return f"{'-':>17}"
      after = f"{v[metric]:6.1f}"
      if before is None:
        return f"{after:>17}"
      key = f"{condition}/{cluster}" if cluster != "ALL" else condition
      prev = before["by_cluster" if cluster != "ALL" else "by_condition"].get(key, {}).get(metric)
      return f"{prev:6.1f} -> {after}" if prev is not None else f"{after:>17}"
    lines.append(f"{condition:<18} {cluster:<10} {v['n']:>5}  {cell('exact_match'):>17}  {cell('rougeL'):>17}"
                 + (f"  {cell('score'):>17}" if with_score else ""))
  return "\n".join(lines)


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- evaluators and their schedules

COMMON_KEYS = ("kind", "num_examples", "every", "before_training")  # every evaluator's; a kind adds its own
RESERVED_NAMES = ("eval", "tasks", "seen_templates", "unseen_templates", "held_out_cluster")


class EvalConfigError(errors.UserError, ValueError):
  """An `evals` entry that cannot be built; the message names the key as config.evals.NAME.KEY."""


class Evaluator:
  """Rendered rows, a schedule, and `run(predict_fns)`, which yields (name, value) scalars.

  After a run, `scored` holds the scored rows and `summary` the `summarize` groupings (plus "superni", SuperNI's
  table, for SuperNI evaluators)."""

  def __init__(self, name: str, rows: list[dict[str, Any]], *, every: int = 0, before_training: bool = False,
               superni: bool = False):
    self.name, self.rows, self.every, self.before_training, self.superni = name, rows, every, before_training, superni
    self.scored: list[dict[str, Any]] = []
    self.summary: dict[str, Any] = {}

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def run(self, predict_fns: PredictFns):
    self.scored = evaluate(self.rows, predict_fns.generate, predict_fns.loglik)
    self.summary = summarize(self.scored)
    yield from flat_scalars(self.summary).items()
    if self.superni:  # SuperNI's table: eval/<name>/superni_overall/rougeL, .../superni_category/<category>/rougeL
      self.summary["superni"] = table = score_lib.summarize([{**r, "track": "default"} for r in self.scored])
      groups = [("superni_overall", table["overall"])]
      groups += [(f"superni_category/{c}", scores) for c, scores in table["by_category"].items()]
      for group, scores in groups:
        for metric in metrics_lib.METRIC_NAMES:
          yield f"eval/{self.name}/{group}/{metric}", scores[metric]

  def table(self) -> str:
    """The summary as a printed table (SuperNI's own for SuperNI evaluators)."""
    return score_lib.format_table(self.summary["superni"]) if self.superni else format_table(self.summary)

  def result_rows(self) -> list[dict[str, Any]]:
    """The summary as eval_results.csv rows {evaluator, grouping, key, metric, value} (SuperNI's table as the
    groupings superni_overall, superni_by_category and superni_by_task)."""
    summary = {k: v for k, v in self.summary.items() if k != "superni"}
    if "superni" in self.summary:
      table = self.summary["superni"]
      summary["superni_overall"] = {"": {**table["overall"], "n": table["num_instances"]}}
      for group in ("by_category", "by_task"):
        summary[f"superni_{group}"] = {k: {m: v for m, v in scores.items() if m != "num_instances"}
                                       | {"n": scores["num_instances"]} for k, scores in table[group].items()}
    return [{"evaluator": self.name, **r} for r in long_rows(summary)]


def parse_spec(name: str, spec: Any, kinds: Mapping[str, "EvaluatorKind"] | None = None) -> dict[str, Any]:
  """An `evals` entry as a dict: a mapping (config files) or "kind=superni,split=test,every=500" (flags), checked
  against its kind in `kinds` (default: KINDS)."""
  kinds = KINDS if kinds is None else kinds
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  if isinstance(spec, str):
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not all("=" in p for p in parts):
      raise EvalConfigError(f"config.evals.{name}={spec!r}: expected KEY=VALUE pairs joined by ',', e.g. "
                            "kind=superni,split=test,every=500")
    spec = {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}
    for key in ("every", "num_examples"):
      if key in spec:
        try:
          spec[key] = int(spec[key])
        except ValueError:
          raise EvalConfigError(f"config.evals.{name}.{key}: expected an integer, got {spec[key]!r}") from None
    if "before_training" in spec:
      text = spec["before_training"].lower()
      if text not in ("1", "0", "true", "false", "yes", "no"):
        raise EvalConfigError(f"config.evals.{name}.before_training: expected true or false, got {text!r}")
      spec["before_training"] = text in ("1", "true", "yes")
  if not isinstance(spec, Mapping):
    raise EvalConfigError(f"config.evals.{name}: expected a dict or KEY=VALUE text, got {spec!r}")
  if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in RESERVED_NAMES:
    raise EvalConfigError(f"config.evals.{name}: an evaluator's name is letters, digits and _, and none of "
                          f"{RESERVED_NAMES} (it names its TensorBoard scalars and files)")
  spec = dict(spec)
  if isinstance(spec.get("tasks"), str):  # "mine" or "a+b" in a config file too
    spec["tasks"] = tuple(t for t in spec["tasks"].split("+") if t)
  if spec.get("kind") not in kinds:
    raise EvalConfigError(f"config.evals.{name}.kind: expected one of {tuple(kinds)}, got {spec.get('kind')!r}")
  kind = kinds[spec["kind"]]
  unknown = sorted(set(spec) - set(COMMON_KEYS) - set(kind.keys))
  if unknown:
    raise EvalConfigError(f"config.evals.{name}.{unknown[0]}: no such key; a {kind.name} evaluator has "
                          f"{COMMON_KEYS + kind.keys}")
  for key in kind.required:
    if not spec.get(key):
      raise EvalConfigError(f"config.evals.{name}.{key}: a {kind.name} evaluator names its {kind.required_help}")
  for key, low in (("every", 0), ("num_examples", 1)):
    value = spec.get(key, low)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise EvalConfigError(f"config.evals.{name}.{key}: expected an integer >= {low}, got {value!r}")
  if not isinstance(spec.get("before_training", False), bool):
    raise EvalConfigError(f"config.evals.{name}.before_training: expected True or False, got "
                          f"{spec['before_training']!r}")
  return spec


def superni_split_tasks(superni_dir: str, split: str, tasks: Mapping[str, Any], *, what: str) -> list[str]:
  """The niv2/ task names of a SuperNI split file that `tasks` has; the missing ones are reported on stdout.
  `what` names the setting in errors (e.g. "--superni_split test")."""
  if not superni_dir:
    raise EvalConfigError(f"{what} needs a SuperNI directory (config.data_paths.superni_dir or --superni_dir)")
  listed = tasks_lib.superni_split(superni_dir, split)
  if not listed:
    raise EvalConfigError(f"{what}: {superni_dir}/splits/{split}_tasks.txt is missing or empty")
  present = [t for t in listed if t in tasks]
  missing = [t.removeprefix("niv2/") for t in listed if t not in tasks]
  if missing and jax.process_index() == 0:
    print(f"note: {len(missing)} of the {len(listed)} tasks of split {split!r} are not in {superni_dir}/tasks and are "
          f"not evaluated: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}", flush=True)
  if not present:
    raise EvalConfigError(f"{what}: none of its {len(listed)} tasks is in {superni_dir}/tasks")
  return present


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator kind is built from: the run's `eval` section (decoding, default num_examples), its task and
  mixture catalogues (rendered with the run's chat format), and its SuperNI directory."""
  eval_section: Any
  tasks: Mapping[str, tasks_lib.Task]
  mixtures: Mapping[str, Any]
  superni_dir: str = ""


@dataclasses.dataclass(frozen=True)
class EvaluatorKind:
  """One kind of `evals` entry: the keys it takes besides COMMON_KEYS, those it requires (`required_help` says what
  they name, for the error), and `build(name, spec, context) -> Evaluator` (rows rendered, schedule from the spec)."""
  name: str
  keys: tuple[str, ...]
  required: tuple[str, ...]
  required_help: str
  build: Callable[[str, Mapping[str, Any], EvalContext], Evaluator]


def _schedule(spec: Mapping[str, Any]) -> dict[str, Any]:
  return {"every": spec.get("every", 0), "before_training": spec.get("before_training", False)}


def task_names(name: str, members: Sequence[str], ctx: EvalContext) -> list[str]:
  """Tasks and mixtures (a mixture stands for its tasks), each checked to exist."""
  names = []
  for t in members:
    names += list(ctx.mixtures[t].members) if t in ctx.mixtures else [t]
  for t in names:
    if t not in ctx.tasks:
      raise EvalConfigError(f"config.evals.{name}.tasks: no task or mixture {t!r}")
  return names


def _build_tasks(name: str, spec: Mapping[str, Any], ctx: EvalContext) -> Evaluator:
  """kind "tasks": the named tasks (or mixtures) on their `split` (default "test")."""
  num = spec.get("num_examples", ctx.eval_section.num_examples)
  sets = [EvalSet(name, tuple(task_names(name, spec["tasks"], ctx)), None, spec.get("split", "test"), num)]
  return Evaluator(name, render_eval_examples(sets, ctx.tasks), **_schedule(spec))


def _build_superni(name: str, spec: Mapping[str, Any], ctx: EvalContext) -> Evaluator:
  """kind "superni": the tasks of a SuperNI split file, with SuperNI's own table (per category and task)."""
  num = spec.get("num_examples", ctx.eval_section.num_examples)
  names = superni_split_tasks(ctx.superni_dir, spec["split"], ctx.tasks, what=f"config.evals.{name}")
  rows = render_eval_examples([EvalSet(name, tuple(names), None, "test", num)], ctx.tasks)
  return Evaluator(name, rows, superni=True, **_schedule(spec))


TASKS = EvaluatorKind("tasks", ("tasks", "split"), ("tasks",), "tasks (or mixtures)", _build_tasks)
SUPERNI = EvaluatorKind("superni", ("split",), ("split",), "split (e.g. test)", _build_superni)
# The kinds a config may name: a plain table. A kind in a module of its own (which imports this one for the
# contract) joins it where the run's evaluators are built: `from_config(..., kinds={**KINDS, mine.KIND.name:
# mine.KIND})` (plan.EVALUATOR_KINDS).
KINDS: dict[str, EvaluatorKind] = {kind.name: kind for kind in (TASKS, SUPERNI)}


def build_evaluator(name: str, spec: Mapping[str, Any], eval_section, tasks: Mapping[str, tasks_lib.Task],
                    mixtures: Mapping[str, Any], superni_dir: str = "",
                    kinds: Mapping[str, EvaluatorKind] = KINDS) -> Evaluator:
  """One `evals` entry (already `parse_spec`ed) as an Evaluator of its kind; its rows' condition is its name."""
  return kinds[spec["kind"]].build(name, spec, EvalContext(eval_section, tasks, mixtures, superni_dir))


def from_config(config, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Any],
                kinds: Mapping[str, EvaluatorKind] = KINDS) -> list[Evaluator]:
  """A run's evaluators: "eval" (the `eval` section, every `eval_every` steps) first, then each `evals` entry in
  name order, each of its kind in `kinds`."""
  say = (lambda text: print(text, flush=True)) if jax.process_index() == 0 else (lambda text: None)
  rows = config_rows(config.eval, tasks, mixtures, training_mixture=config.data.mixture, out=say)
  out = [Evaluator("eval", rows, every=config.eval_every,
                   before_training=config.eval.before_training)]
  for name, spec in config.evals.items():
    out.append(build_evaluator(name, parse_spec(name, spec, kinds), config.eval, tasks, mixtures,
                               config.data_paths.superni_dir, kinds))
  return out
