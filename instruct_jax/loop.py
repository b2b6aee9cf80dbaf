"""The training loop's parts: batches to the devices, step metrics to the host one step late, and preemption.

    feed = loop.Feed(plan, pipe)                   # host batch -> global device batch (+ the host's stats)
    metrics = loop.StepMetrics(plan, pipe, writer, start)
    metrics.push(step, device_metrics, stats)      # logs the step before (its metrics are ready by now)
    metrics.finish()                               # the step in flight, before a checkpoint or the end
    preemption = loop.Preemption()                 # SIGTERM -> a flag the loop checks between steps

The trainer dispatches step t + 1 before it pulls step t's metrics, so the host never waits on the devices
between steps; a checkpoint first finishes the step in flight, so no saved state comes from a non-finite loss.
"""
from __future__ import annotations

import json
import signal
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from instruct_jax import flops, sharding
from instruct_jax import metrics as metrics_lib
from instruct_jax.data import packing
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import report as report_lib


class PreemptedWaitingForData(Exception):
  """SIGTERM came while a single-process run waited for a batch (`Preemption.before`: the data position)."""


class IteratorState:
  """A data iterator's state taken earlier, in the form grain's checkpoint handler saves (its get_state())."""

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> bytes:
    return json.dumps(self._state, indent=1).encode()


class Preemption:
  """Turns SIGTERM (a TPU VM preemption notice) into a flag the loop checks between steps. While a
  single-process run waits for a batch, SIGTERM ends the wait (a stalled reader must not outlive the notice);
  the iterator's state from before that wait goes with the exception, so the stop still saves every step done."""

  def __init__(self):
    self.requested = False
    self.waiting = False
    self.before: Any = None  # the iterator's state before the newest next_batch (None: it has no get_state)
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): preemption handling is off
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if self.waiting:
      raise PreemptedWaitingForData()

  def next_batch(self, iterator):
    """next(iterator), given up on SIGTERM in single-process runs. Several processes must stop at a step they
    agree on (checked every log_every steps), so there a SIGTERM only sets the flag."""
    single = jax.process_count() == 1
    self.before = iterator.get_state() if single and hasattr(iterator, "get_state") else None
    self.waiting = single
    try:
      if self.requested and self.waiting:
        raise PreemptedWaitingForData()
      return next(iterator)
    finally:
      self.waiting = False  # a second SIGTERM from here on only sets the flag

  def agreed(self, step: int, log_every: int) -> bool:
    """Whether every process stops after `step`. Asking the others costs a host sync, so multi-process runs ask
    only every log_every steps."""
    if jax.process_count() == 1:
      return self.requested
    if step % log_every:
      return False
    return bool(multihost_utils.process_allgather(np.array(self.requested)).any())


class Feed:
  """A host batch -> (the global batch of the features the objective reads, the host's stats for the step's
  metrics: time, token counts, per-task example counts)."""

  def __init__(self, plan, task_names):
    config = plan.config
    self.pack, self.num_tasks = bool(config.data.pack), len(task_names)
    self.features = set(plan.objective.batch_spec(plan.model.kind, config.data.batch_size,
                                                  config.data.inputs_length, config.data.targets_length))
    self.sharding = sharding.batch_sharding(plan.mesh, plan.rules)
    self.per_example = 2 if plan.objective.pairs else 1  # a pair is two examples (rows, or segments when packed)

  def __call__(self, host_batch):
    if not self.pack:  # the step's attention relies on it (step.train_step's packed=False)
      packing.check_one_example_rows(host_batch)
    counts = metrics_lib.task_counts(host_batch, self.num_tasks) // self.per_example
    stats = (time.time(), *metrics_lib.token_counts(host_batch), counts)
    batch = pipeline_lib.to_global_batch({k: v for k, v in host_batch.items() if k in self.features}, self.sharding)
    return batch, stats


class StepMetrics:
  """Step metrics pulled to the host one step late, summed over log_every steps, and written (train/ scalars,
  the data's truncation counts, the progress line)."""

  def __init__(self, plan, pipe: pipeline_lib.Pipeline, writer: metrics_lib.MetricWriter, start: int):
    config = plan.config
    self.config, self.writer, self.task_names = config, writer, pipe.task_names
    self.labels = {name: pipe.task_names if name == "task" else [str(i) for i in range(n)]
                   for name, _, n in plan.objective.groups}
    self.report = report_lib.TruncationReport(pipe.stats, config.data.truncation_warning)
    self.progress = metrics_lib.Progress(config.total_steps, start, config.log_every)
    self.window = metrics_lib.StepWindow(
        len(pipe.task_names), devices=jax.device_count(), peak_tflops=flops.peak_tflops(jax.devices()[0].device_kind),
        flops_per_step=flops.train_step_flops(plan.model, batch_size=config.data.batch_size,
                                              inputs_length=config.data.inputs_length,
                                              targets_length=config.data.targets_length))
    self.seen = np.zeros(len(pipe.task_names), np.int64)
    self.pending = None  # (step, device metrics, host stats) of the step in flight

  def push(self, step: int, device_metrics, stats) -> None:
    """`step` is in flight: the step before it is finished (its metrics are on the devices by now)."""
    self.seen += stats[-1]
    self.finish()
    self.pending = (step, device_metrics, stats)

  def finish(self) -> None:
    """Pulls the step in flight's metrics (NonFiniteLossError on a non-finite loss) and logs on schedule."""
    if self.pending is None:
      return
    step, device_metrics, stats = self.pending
    self.pending = None
    host_metrics = jax.device_get(device_metrics)
    metrics_lib.check_finite(step, host_metrics)
    self.window.add(host_metrics, stats)
    if step % self.config.log_every == 0 or step == self.config.total_steps:
      scalars = self.window.summarize(self.task_names, self.seen, self.labels)
      self.writer.write(step, scalars, prefix="train/")
      self.writer.write(step, self.report.scalars())
      self.writer.flush()
      self.progress.update(step, scalars)

  def examples_seen(self) -> dict[str, int]:
    return dict(zip(self.task_names, self.seen.tolist()))
