"""Metric writers: a resume drops what was logged after its step from every log, results CSV included."""
import csv
import glob
import json

from tensorboard.backend.event_processing import event_accumulator

from instruct_jax import metrics


def _log(workdir, steps, results_at, resume_step=None):
  writer = metrics.MetricWriter(str(workdir), enabled=True, resume_step=resume_step)
  for s in steps:
    writer.write(s, {"loss": 1.0 / s}, prefix="train/")
  for s in results_at:
    writer.write_results(s, [{"evaluator": "eval", "grouping": "by_condition", "key": "unseen_templates", "metric": "rougeL",
                              "value": float(s)}])
  writer.close()


def _steps(workdir):
  jsonl = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  with open(workdir / metrics.RESULTS_CSV, newline="") as f:
    results = [int(r["step"]) for r in csv.DictReader(f)]
  acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard" / "train"))
  acc.Reload()
  events = [e.step for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []
  return jsonl, results, events


def test_a_resume_truncates_metrics_results_and_events(tmp_path):
  _log(tmp_path, range(1, 6), (0, 3, 5))
  assert _steps(tmp_path) == ([1, 2, 3, 4, 5], [0, 3, 5], [1, 2, 3, 4, 5])
  _log(tmp_path, range(4, 7), (6,), resume_step=3)  # steps 4 and 5 are trained again
  jsonl, results, events = _steps(tmp_path)
  assert jsonl == [1, 2, 3, 4, 5, 6] and results == [0, 3, 6] and sorted(events) == [1, 2, 3, 4, 5, 6]
  with open(tmp_path / metrics.RESULTS_CSV, newline="") as f:
    assert next(csv.reader(f)) == list(metrics.RESULT_COLUMNS)  # one header, rewritten with the kept rows
  _log(tmp_path, (1,), (0,), resume_step=-1)  # a restart from nothing drops the step-0 evaluation too
  assert _steps(tmp_path)[:2] == ([1], [0])
  assert not glob.glob(str(tmp_path / "**" / "*.tmp"), recursive=True)
