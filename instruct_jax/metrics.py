"""Metric writers (TensorBoard event files and metrics.jsonl), step metrics, a progress line, a NaN guard.

TensorBoard files are written with TensorBoard's own event writer and protos (no TensorFlow needed);
`tensorboard --logdir WORKDIR` reads them. Only process 0 writes. A run resumed from step S first drops
what the previous process logged after S (those steps are trained again), from metrics.jsonl and from the
event files, so every step appears once. Evaluation results also go to `workdir/eval_results.csv`, one row per
(step, evaluator, grouping, key, metric) (`RESULT_COLUMNS`), for pandas and spreadsheets; resumes truncate it the same way.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter

from instruct_jax import errors


RESULTS_CSV = "eval_results.csv"
RESULT_COLUMNS = ("step", "evaluator", "grouping", "key", "metric", "value")


class NonFiniteLossError(RuntimeError):
  pass


class MetricWriter:
  """Scalars to `workdir/tensorboard/<name>` event files and to `workdir/metrics.jsonl`.

  `resume_step`: the step the run starts from; rows and events logged after it by an earlier process are
  dropped first (see the module docstring).
  """

  def __init__(self, workdir: str, name: str = "train", enabled: bool | None = None, resume_step: int | None = None,
               wandb_project: str = "", wandb_mode: str = "", run_config: Mapping[str, Any] | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    if not self.enabled:
      return
    self._workdir = workdir
    if resume_step is not None:
      truncate_logs(workdir, resume_step)
    self._tb = EventFileWriter(os.path.join(workdir, "tensorboard", name))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._wandb = _wandb_run(workdir, wandb_project, wandb_mode, run_config) if wandb_project else None

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=prefix + k, simple_value=float(v)) for k, v in scalars.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=summary_pb2.Summary(value=values)))
    row = {"step": int(step), **{prefix + k: _jsonable(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._wandb is not None:
      self._wandb.log({prefix + k: float(v) for k, v in scalars.items()}, step=int(step))

  def write_results(self, step: int, rows: Iterable[Mapping[str, Any]]) -> None:
    """Appends evaluation results ({evaluator, grouping, key, metric, value} each) at `step` to eval_results.csv."""
    if self.enabled:
      rows = list(rows)
      append_results(os.path.join(self._workdir, RESULTS_CSV), step, rows)
      if self._wandb is not None and rows:  # the same table as eval_results.csv, one per evaluation
        import wandb  # pylint: disable=g-import-not-at-top
        table = wandb.Table(columns=list(RESULT_COLUMNS), data=[[int(step), *(r[c] for c in RESULT_COLUMNS[1:])]
                                                                for r in rows])
        self._wandb.log({"eval_results": table}, step=int(step))

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      if self._wandb is not None:
        self._wandb.finish()


WANDB_RUN_ID = "wandb_run_id"  # W/wandb_run_id: the W&B run a workdir logs to, so a restart continues it


def _wandb_run(workdir: str, project: str, mode: str, run_config: Mapping[str, Any] | None):
  """A Weights & Biases run in `project` (files under W/wandb; `mode` "offline" needs no network), resumed when the
  workdir has logged to one before."""
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError("--config.metrics.wandb needs the wandb package: pip install -e \".[wandb]\"") from None
  id_file = pathlib.Path(workdir) / WANDB_RUN_ID  # the id a first run draws; restarts read it
  run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
  id_file.write_text(run_id + "\n")
  os.makedirs(os.path.join(workdir, "wandb"), exist_ok=True)
  return wandb.init(project=project, id=run_id, resume="allow", dir=workdir, name=os.path.basename(
      os.path.normpath(workdir)), config=dict(run_config or {}), mode=mode or None, settings=wandb.Settings(
          silent=True, console="off"))


def append_results(path: str, step: int, rows: Iterable[Mapping[str, Any]]) -> None:
  """Appends rows {evaluator, grouping, key, metric, value} at `step` to the CSV at `path` (header first if new)."""
  new = not os.path.isfile(path) or os.path.getsize(path) == 0
  with open(path, "a", encoding="utf-8", newline="") as f:
    out = csv.DictWriter(f, RESULT_COLUMNS)
    if new:
      out.writeheader()
    out.writerows({"step": int(step), **{k: r[k] for k in RESULT_COLUMNS[1:]}} for r in rows)


def truncate_logs(workdir: str, step: int) -> None:
  """Drops metrics.jsonl rows, eval_results.csv rows and TensorBoard scalar events of steps after `step` (each
  file rewritten whole, then renamed over the old one)."""
  results = os.path.join(workdir, RESULTS_CSV)
  if os.path.isfile(results):
    with open(results, encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("value") is not None and r["step"].isdigit() and int(r["step"]) <= step]
    if len(kept) != len(rows):
      def write_csv(out, kept=kept):
        text = io.StringIO()
        writer = csv.DictWriter(text, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
        out.write(text.getvalue().encode())
      _replace(results, write_csv)
  jsonl = os.path.join(workdir, "metrics.jsonl")
  if os.path.isfile(jsonl):
    with open(jsonl, encoding="utf-8") as f:
      lines = f.readlines()
    kept = [line.rstrip("\n") + "\n" for line in lines if line.strip() and _row_step(line) <= step]
    if len(kept) != len(lines):
      _replace(jsonl, lambda out: out.write("".join(kept).encode()))
  for path in glob.glob(os.path.join(workdir, "tensorboard", "*", "events.out.tfevents.*")):
    if path.endswith(".tmp"):  # left by a kill during an earlier rewrite; the original is still there
      os.remove(path)
      continue
    records = list(event_file_loader.RawEventFileLoader(path).Load())  # the bytes as written, rewritten unchanged
    kept_records = [r for r in records if _event_kept(r, step)]
    if len(kept_records) != len(records):
      def write(out, kept_records=kept_records):
        writer = RecordWriter(out)
        for r in kept_records:
          writer.write(r)
        writer.flush()
      _replace(path, write)


def _event_kept(record: bytes, step: int) -> bool:
  event = event_pb2.Event.FromString(record)
  return not event.HasField("summary") or event.step <= step


def _row_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
    return sys.maxsize


def _replace(path: str, write) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as out:
    write(out)
    out.flush()
    os.fsync(out.fileno())
  os.replace(tmp, path)


def _jsonable(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


def summarize_step(sums: Mapping[str, np.ndarray], *, seconds: float, tokens: float, nonpad_tokens: float,
                   task_names: list[str], task_counts: np.ndarray | None,
                   group_labels: Mapping[str, list[str]] | None = None) -> dict[str, float]:
  """Host-side metrics of one or more steps from their summed device metrics.

  group_labels {name: labels}: for the step's per-group sums (`objectives.SFT`'s groups), the NLL per
  scored token of each group that had any, as "nll_by_<name>/<label>" (e.g. nll_by_task/builtin/reverse).
  """
  w = max(float(sums["weight_sum"]), 1e-9)
  out = {
      "loss": float(sums["loss"]),
      "nll_per_token": float(sums["nll_sum"]) / w,
      "token_accuracy": float(sums["correct"]) / w,
      "learning_rate": float(sums["learning_rate"]),
      "grad_norm": float(sums["grad_norm"]),
      "param_norm": float(sums["param_norm"]),
      "tokens_per_sec": tokens / max(seconds, 1e-9),
      "nonpad_tokens_per_sec": nonpad_tokens / max(seconds, 1e-9),
      "nonpad_share": nonpad_tokens / max(tokens, 1e-9),
  }
  if task_counts is not None:  # cumulative examples per task, and each task's realised share of the mixture so far
    total = max(float(np.sum(task_counts)), 1.0)
    for name, n in zip(task_names, task_counts):
      out[f"examples_seen/{name}"] = float(n)
      out[f"mixture_share/{name}"] = float(n) / total
  if "pairs" in sums:  # a preference objective (objectives.Preference): means over the pairs, named as TRL's
    pairs = max(float(sums["pairs"]), 1e-9)
    for name in ("rewards_chosen", "rewards_rejected", "rewards_accuracies", "rewards_margins", "logps_chosen",
                 "logps_rejected"):
      out[name.replace("_", "/", 1)] = float(sums[name]) / pairs
  for group, labels in (group_labels or {}).items():
    if f"{group}_nll" in sums:
      for label, nll, weight in zip(labels, np.asarray(sums[f"{group}_nll"]), np.asarray(sums[f"{group}_weight"])):
        if weight > 0:
          out[f"nll_by_{group}/{label}"] = float(nll) / float(weight)
  return out


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises if the loss, the gradient norm or the updated parameters' norm is not finite."""
  for name in ("loss", "grad_norm", "param_norm"):
    value = float(metrics[name])
    if not math.isfinite(value):
      raise NonFiniteLossError(f"{name} is {value} at step {step}; stopping (the last good checkpoint is kept)")


class Progress:
  """A one-line progress report with throughput and ETA, printed every `every` steps."""

  def __init__(self, total_steps: int, first_step: int, every: int, enabled: bool | None = None):
    self.total, self.first, self.every = total_steps, first_step, max(every, 1)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.t0 = time.time()

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled or (step % self.every and step != self.total):
      return
    done = step - self.first
    elapsed = time.time() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    bar = "#" * int(20 * step / max(self.total, 1))
    mfu = f"  mfu {metrics['mfu']:.1%}" if "mfu" in metrics else ""
    print(f"[{bar:<20}] step {step}/{self.total}  loss {metrics.get('loss', float('nan')):.4f}  "
          f"acc {metrics.get('token_accuracy', float('nan')):.3f}  "
          f"{metrics.get('tokens_per_sec', 0):,.0f} tok/s{mfu}  eta {_hms(eta)}", file=sys.stdout, flush=True)


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def task_counts(batch: dict[str, np.ndarray], num_tasks: int) -> np.ndarray:
  """Examples per task in a (possibly packed) batch: one per (row, segment)."""
  seg, task = batch["decoder_segment_ids"], batch["task_index"]
  starts = (seg > 0) & np.concatenate([np.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  return np.bincount(task[starts], minlength=num_tasks)


def token_counts(batch: dict[str, np.ndarray]) -> tuple[int, int]:
  total = nonpad = 0
  for prefix in ("encoder", "decoder"):
    if f"{prefix}_segment_ids" in batch:
      total += batch[f"{prefix}_segment_ids"].size
      nonpad += int((batch[f"{prefix}_segment_ids"] > 0).sum())
  return total, nonpad


@dataclasses.dataclass
class StepWindow:
  """Step metrics gathered on the host between two log lines.

  With `flops_per_step` (instruct_jax/flops.py) the summary also has the model FLOP/s per device
  ("model_tflops_per_device") and, given the device's peak, MFU ("mfu", a fraction).
  """
  num_tasks: int
  flops_per_step: float = 0.0
  devices: int = 1
  peak_tflops: float | None = None
  steps: int = 0
  sums: dict | None = None
  tokens: int = 0
  nonpad: int = 0
  t_first: float | None = None
  t_last: float | None = None

  def add(self, host_metrics: dict, stats) -> None:
    t_dispatch, tokens, nonpad, _ = stats
    self.steps += 1
    self.sums = dict(host_metrics) if self.sums is None else {k: self.sums[k] + host_metrics[k] for k in host_metrics}
    self.tokens += tokens
    self.nonpad += nonpad
    self.t_first = t_dispatch if self.t_first is None else self.t_first
    self.t_last = time.time()

  def summarize(self, task_names, seen, group_labels=None) -> dict[str, float]:
    n = max(self.steps, 1)
    means = {k: v / n if k in ("loss", "learning_rate", "grad_norm", "param_norm") else v
             for k, v in self.sums.items()}
    seconds = self.t_last - self.t_first
    out = summarize_step(means, seconds=seconds, tokens=self.tokens, nonpad_tokens=self.nonpad,
                         task_names=task_names, task_counts=seen, group_labels=group_labels)
    if self.flops_per_step:
      tflops = self.flops_per_step * n / max(seconds, 1e-9) / self.devices / 1e12
      out["model_tflops_per_device"] = tflops
      if self.peak_tflops:
        out["mfu"] = tflops / self.peak_tflops
    self.steps, self.sums, self.tokens, self.nonpad, self.t_first = 0, None, 0, 0, None
    return out
