"""The "preferences" evaluator kind: held-out pairs scored by log-likelihood, the first run as the reference."""
import json

import numpy as np
import pytest

from instruct_jax import configs, predict
from instruct_jax import plan as plan_lib
from instruct_jax.data import mixtures
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import evaluators, preference_eval


def test_rewards_are_relative_to_the_first_run_and_the_rows_go_to_eval_results(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                          for i in range(6)))
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths(preference_files={"p": f"train={path},test={path}"}))
  c = configs.base()
  c.evals.prefs = "kind=preferences,tasks=p,num_examples=4,beta=0.5"
  ev = evaluators.from_config(c, tasks, mixes, plan_lib.EVALUATOR_KINDS)[1]
  assert isinstance(ev, preference_eval.PreferenceEvaluator) and ev.before_training and len(ev.rows) == 4
  assert ev.rows[0]["inputs"] == "q0" and (ev.rows[0]["chosen"], ev.rows[0]["rejected"]) == ("good 0", "bad 0")
  shift = {"value": 0.0}

  def loglik(prompts, continuations):  # the "model": chosen responses gain `shift` nats after the first run
    return np.asarray([-5.0 + (shift["value"] if c.startswith("good") else 0.0) for c in continuations])

  start = dict(ev.run(predict.PredictFns(generate=None, loglik=loglik)))
  assert start["eval/prefs/rewards/accuracies"] == 0 and start["eval/prefs/rewards/margins"] == 0
  shift["value"] = 2.0
  later = dict(ev.run(predict.PredictFns(generate=None, loglik=loglik)))
  assert later["eval/prefs/rewards/accuracies"] == 1 and later["eval/prefs/rewards/margins"] == pytest.approx(1.0)
  assert later["eval/prefs/logps/accuracies"] == 1 and later["eval/prefs/rewards/chosen"] == pytest.approx(1.0)
  rows = {(r["metric"], r["value"]) for r in ev.result_rows()}
  assert ("rewards/accuracies", 1.0) in rows and "rewards/accuracies" in ev.table()
  c.evals.prefs = "kind=preferences,tasks=builtin/reverse"
  with pytest.raises(evaluators.EvalConfigError, match="'builtin/reverse' holds no preference pairs"):
    evaluators.from_config(c, tasks, mixes, plan_lib.EVALUATOR_KINDS)
