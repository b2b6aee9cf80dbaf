"""Metric writers (TensorBoard event files and metrics.jsonl), step metrics, a progress line, a NaN guard.

TensorBoard files are written with TensorBoard's own event writer and protos (no TensorFlow needed);
`tensorboard --logdir WORKDIR` reads them. Only process 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class NonFiniteLossError(RuntimeError):
  pass


class MetricWriter:
  """Scalars to `workdir/tensorboard/<name>` event files and to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, name: str = "train", enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    if not self.enabled:
      return
    self._tb = EventFileWriter(os.path.join(workdir, "tensorboard", name))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=prefix + k, simple_value=float(v)) for k, v in scalars.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=summary_pb2.Summary(value=values)))
    row = {"step": int(step), **{prefix + k: _jsonable(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _jsonable(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


def summarize_step(sums: Mapping[str, np.ndarray], *, seconds: float, tokens: float, nonpad_tokens: float,
                   task_names: list[str], task_counts: np.ndarray | None) -> dict[str, float]:
  """Host-side metrics of one or more steps from their summed device metrics."""
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
  if task_counts is not None:
    for name, n in zip(task_names, task_counts):
      out[f"examples_seen/{name}"] = float(n)
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
    print(f"[{bar:<20}] step {step}/{self.total}  loss {metrics.get('loss', float('nan')):.4f}  "
          f"acc {metrics.get('token_accuracy', float('nan')):.3f}  "
          f"{metrics.get('tokens_per_sec', 0):,.0f} tok/s  eta {_hms(eta)}", file=sys.stdout, flush=True)


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
