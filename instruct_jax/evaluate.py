"""Evaluate a trained workdir on its configured evaluation or on a list of tasks.

    python -m instruct_jax.evaluate --workdir /tmp/quickstart
    python -m instruct_jax.evaluate --workdir DIR --tasks niv2/task1393_superglue_copa_text_completion \\
        --superni_dir ../shared/data/natural-instructions --num_examples 100 --output_dir /tmp/eval
    python -m instruct_jax.evaluate --workdir DIR --superni_dir DIR --superni_split test --output metrics.json
    python -m instruct_jax.evaluate --workdir DIR --init_from /ckpt/base   # the baseline, as step 0

The model, tokenizer and newest checkpoint (or --step) come from the workdir; tasks are looked up in the
workdir's data paths (and --superni_dir), and a mixture name stands for its tasks (e.g. niv2_test).
Writes predictions.jsonl, metrics.json and eval_results.csv (one row per grouping, key and metric) to
--output_dir (default: WORKDIR/eval) and prints a table. With --init_from the checkpoint named there is evaluated
with the workdir's settings (default: WORKDIR/eval_baseline), and its rows are also added to the run's own
WORKDIR/eval_results.csv as step 0, beside the fine-tuned steps.
Task evaluations are also scored by `instruct_jax.evals.score` (SuperNI's exact match and ROUGE-L per
category and task); a SuperNI task counts under its task file's own category (its first "Categories" entry),
other tasks under their cluster. `--superni_split test` evaluates the tasks listed in
`splits/test_tasks.txt` of --superni_dir (those missing from its tasks/ folder are listed, not silently
skipped); `--output FILE` writes that score in `instruct_jax.evals.score`'s schema.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import tqdm
from absl import flags, logging

from instruct_jax import errors, predict
from instruct_jax import metrics as metrics_lib
from instruct_jax import plan as plan_lib
from instruct_jax.evals import evaluators
from instruct_jax.evals import score as score_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by instruct_jax.train (with --init_from: its settings "
                               "are used and the baseline's results written there as step 0).")
_INIT_FROM = flags.DEFINE_string("init_from", None, "A checkpoint before fine-tuning (an imported or Hugging Face "
                                 "directory, or a workdir): evaluate it as step 0, the baseline.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
_TASKS = flags.DEFINE_list("tasks", [], "Tasks (or mixtures) to evaluate instead of the config's evaluation.")
_SUPERNI = flags.DEFINE_string("superni_dir", None, "natural-instructions directory for niv2/ tasks.")
_SPLIT = flags.DEFINE_string("superni_split", None, "Evaluate the tasks of splits/<NAME>_tasks.txt in --superni_dir "
                              "(e.g. test: SuperNI's 119 held-out tasks).")
_NUM = flags.DEFINE_integer("num_examples", None, "Examples per task (default: the config's).", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the SuperNI-style score (overall, by_category, by_task) "
                              "here, in instruct_jax.evals.score's schema.")
_OUT = flags.DEFINE_string("output_dir", None, "Where predictions.jsonl and metrics.json go.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars (examples done, rate, ETA) on stderr.")
errors.local_path_flags("output", "output_dir")


def _with_progress(fn, batch_size: int, desc: str):
  """`fn` over its arguments' lists a batch at a time, with a progress bar (rate, ETA) on stderr."""
  def run(first, *rest):
    out = []
    with tqdm.tqdm(total=len(first), desc=desc, unit="example", disable=not _PROGRESS.value) as bar:
      for i in range(0, len(first), batch_size):
        result = fn(first[i:i + batch_size], *(r[i:i + batch_size] for r in rest))
        out.extend(result)
        bar.update(len(result))
    return np.asarray(out) if out and isinstance(result, np.ndarray) else out
  return run


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _INIT_FROM.value and not (_WORKDIR.value or _OUT.value):
    raise errors.UserError("--init_from: give --workdir (its settings; results go to WORKDIR/eval as step 0) or "
                           "--output_dir")
  # A baseline (--init_from: its own tokenizer, the workdir's settings or the defaults), or the workdir's checkpoint;
  # its parameters are read once the tasks are known.
  loaded = plan_lib.load(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
  config = loaded.config
  if _NUM.value is not None:
    config.eval.num_examples = _NUM.value
  if _TASKS.value:
    config.eval.tasks = tuple(_TASKS.value)
  if _SUPERNI.value:
    config.data_paths.superni_dir = _SUPERNI.value
  catalogues = plan_lib.catalogues(config, loaded.chat)  # chat tasks rendered with the run's chat format
  if _SPLIT.value:
    config.eval.tasks = tuple(evaluators.superni_split_tasks(config.data_paths.superni_dir, _SPLIT.value,
                                                             catalogues[0], what=f"--superni_split {_SPLIT.value}"))
  if _OUTPUT.value and not (_TASKS.value or _SPLIT.value):
    raise errors.UserError("--output writes the SuperNI-style score of --tasks or --superni_split; give one")
  # One evaluator, as the trainer runs them; tasks also get SuperNI's table (per category and task).
  ev = evaluators.Evaluator("eval", evaluators.config_rows(config.eval, *catalogues,
                                                          training_mixture=config.data.mixture),
                            superni=bool(_TASKS.value or _SPLIT.value))
  if not ev.rows:
    raise errors.UserError("nothing to evaluate: the config's evaluation has no examples (pass --tasks and "
                           "--num_examples)")
  t0 = time.time()
  fns = predict.predict_fns(loaded.model, loaded.params, loaded.tokenizer, config.eval,
                            max_prompt_tokens=config.data.inputs_length, mesh=loaded.mesh, rules=loaded.rules,
                            chat_format=loaded.chat)
  size = config.eval.batch_size
  dict(ev.run(predict.PredictFns(_with_progress(fns.generate, size, "generate"),
                                 fns.loglik and _with_progress(fns.loglik, size, "score options"))))
  seconds = time.time() - t0
  scored = ev.scored
  summary = {k: v for k, v in ev.summary.items() if k != "superni"}
  out_dir = _OUT.value or os.path.join(_WORKDIR.value, "eval_baseline" if _INIT_FROM.value else "eval")
  os.makedirs(out_dir, exist_ok=True)
  evaluators.write_jsonl(os.path.join(out_dir, "predictions.jsonl"), scored)
  result = {"summary": summary, "step": loaded.step, "examples": len(scored), "seconds": seconds,
            "examples_per_second": len(scored) / max(seconds, 1e-9)}
  if ev.superni:  # SuperNI-style breakdown by category and task, and the flat keys of SuperNI's own scripts
    result["superni"] = ev.summary["superni"] | {"official": score_lib.official_keys(
        [{**r, "track": "default"} for r in scored])}
    with open(os.path.join(out_dir, "superni_results.json"), "w") as f:
      json.dump(result["superni"]["official"], f, indent=2)
    if _OUTPUT.value:
      with open(_OUTPUT.value, "w") as f:
        json.dump(result["superni"], f, indent=1)
      print(score_lib.format_table(result["superni"]))
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=1)
  results = os.path.join(out_dir, metrics_lib.RESULTS_CSV)
  if os.path.exists(results):
    os.remove(results)
  if _INIT_FROM.value and _WORKDIR.value and not _OUT.value:  # the baseline beside the run's own rows
    metrics_lib.append_results(os.path.join(_WORKDIR.value, metrics_lib.RESULTS_CSV), loaded.step, ev.result_rows())
  metrics_lib.append_results(results, loaded.step, ev.result_rows())
  print(evaluators.format_table(summary))
  print(f"step {loaded.step}: {len(scored)} examples in {seconds:.1f} s ({result['examples_per_second']:.1f} "
        f"examples/s); wrote {out_dir}/predictions.jsonl, metrics.json and {metrics_lib.RESULTS_CSV}")


if __name__ == "__main__":
  errors.run(main)
