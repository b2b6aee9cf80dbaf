"""Evaluator kind "preferences": held-out preference pairs scored by the model, with the metrics TRL logs.

    --config.evals.prefs=kind=preferences,tasks=mine,every=50        # mine: a preference file with a test split

Each pair's chosen and rejected responses are scored after its prompt (`PredictFns.loglik`: the sum of the
response's log-probabilities and its end: end-of-text, or the chat format's end of turn), as training scores them.
The first run (before training, by default) records the starting weights' log-probabilities as the reference, so
later runs report DPO's implicit rewards beta * (log pi - log ref): `rewards/chosen`, `rewards/rejected`,
`rewards/accuracies` (share of pairs whose chosen reward is higher), `rewards/margins`, with `logps/chosen` and
`logps/rejected`, and `logps/accuracies` (share of pairs whose chosen response the model itself gives the higher
log-probability: meaningful without a reference). They go to TensorBoard and metrics.jsonl as
eval/NAME/METRIC and to eval_results.csv. Keys: tasks (preference tasks or mixtures), split (default "test"), beta
(default 0.1, as config.preference.beta), num_examples, every, before_training (default True).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from instruct_jax.evals import evaluators

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "logps/accuracies")


class PreferenceEvaluator(evaluators.Evaluator):
  """Rows {id, task, inputs, chosen, rejected}; `run` scores both responses and yields the metrics above."""

  def __init__(self, name: str, rows: list[dict[str, Any]], *, beta: float, every: int = 0,
               before_training: bool = True):
    super().__init__(name, rows, every=every, before_training=before_training)
    self.beta = beta
    self.reference: tuple[np.ndarray, np.ndarray] | None = None  # the first run's log-probabilities

  def run(self, predict_fns):
    if predict_fns.loglik is None:
      raise evaluators.EvalConfigError(f"config.evals.{self.name}: a preferences evaluator scores responses by "
                                       "log-likelihood; set config.eval.rank_classification=True")
    prompts = [r["inputs"] for r in self.rows]
    chosen = np.asarray(predict_fns.loglik(prompts, [r["chosen"] for r in self.rows]), np.float64)
    rejected = np.asarray(predict_fns.loglik(prompts, [r["rejected"] for r in self.rows]), np.float64)
    if self.reference is None:
      self.reference = (chosen, rejected)
    reward_c, reward_r = self.beta * (chosen - self.reference[0]), self.beta * (rejected - self.reference[1])
    self.scored = [{**r, "logp_chosen": float(c), "logp_rejected": float(j), "reward_chosen": float(a),
                    "reward_rejected": float(b)}
                   for r, c, j, a, b in zip(self.rows, chosen, rejected, reward_c, reward_r)]
    values = {"rewards/chosen": reward_c.mean(), "rewards/rejected": reward_r.mean(),
              "rewards/accuracies": (reward_c > reward_r).mean(), "rewards/margins": (reward_c - reward_r).mean(),
              "logps/chosen": chosen.mean(), "logps/rejected": rejected.mean(),
              "logps/accuracies": (chosen > rejected).mean()}
    self.summary = {"preferences": {m: float(values[m]) for m in METRICS}, "n": len(self.rows)}
    for m in METRICS:
      yield f"eval/{self.name}/{m}", self.summary["preferences"][m]

  def result_rows(self) -> list[dict[str, Any]]:
    return [{"evaluator": self.name, "grouping": "preferences", "key": "", "metric": m, "value": v}
            for m, v in self.summary["preferences"].items()]

  def table(self) -> str:
    return "\n".join(f"{m:<20} {v:10.4f}" for m, v in self.summary["preferences"].items()) + f"\n(n={len(self.rows)})"


def _build(name: str, spec: Mapping[str, Any], ctx: evaluators.EvalContext) -> PreferenceEvaluator:
  num = spec.get("num_examples", ctx.eval_section.num_examples)
  split = spec.get("split", "test")
  rows = []
  for task_name in evaluators.task_names(name, spec["tasks"], ctx):  # tasks and mixtures, checked
    task = ctx.tasks[task_name]
    if task.cluster != "preferences":
      raise evaluators.EvalConfigError(f"config.evals.{name}.tasks: {task_name!r} holds no preference pairs")
    for i in range(min(num, task.num_examples(split))):
      fields = task.example(split, i)
      rows.append({"id": f"{name}/{task_name}/{i}", "task": task_name, "inputs": fields["prompt"],
                   "chosen": fields["answer"], "rejected": fields["rejected"]})
  try:
    beta = float(spec.get("beta", 0.1))
  except ValueError:
    raise evaluators.EvalConfigError(f"config.evals.{name}.beta: expected a number, got {spec['beta']!r}") from None
  return PreferenceEvaluator(name, rows, beta=beta, every=spec.get("every", 0),
                             before_training=spec.get("before_training", True))


KIND = evaluators.EvaluatorKind("preferences", ("tasks", "split", "beta"), ("tasks",), "preference tasks (or mixtures)",
                                _build)
