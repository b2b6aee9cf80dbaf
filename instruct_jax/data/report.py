"""What the trainer checks and reports about its data: every configured file read at the start, and the
examples the pipeline cuts or drops, per task (logged as scalars, warned about above a threshold).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax

from instruct_jax.data import pipeline


def check_files(config, tasks, rates: Mapping[str, float]) -> None:
  """Reads every configured instruction and chat file now (a bad one fails before training starts, naming file and
  line) and says which ones neither the mixture nor the evaluation uses."""
  used = set(rates) | set(config.eval.tasks)
  files = [("instruction_files", n) for n in config.data_paths.instruction_files]
  for key, name in files + [("chat_files", n) for n in config.data_paths.chat_files]:
    task = tasks[name]
    for split in task.source.splits:
      task.source.load(split)
    if name not in used and jax.process_index() == 0:
      print(f"note: config.data_paths.{key}.{name} is read and valid, but neither "
            f"config.data.mixture={config.data.mixture!r} nor config.eval.tasks uses it", flush=True)
    stats = getattr(task.source, "stats", None)
    bad = stats is not None and (stats.bad_lines or stats.empty_outputs or stats.bad_records)
    if bad and jax.process_index() == 0:
      print(f"note: task {name}: skipped {stats.bad_lines} malformed line(s), {stats.empty_outputs} record(s) "
            f"with an empty output and {stats.bad_records} unusable conversation(s)"
            + (f"; first: {stats.problems[0]}" if stats.problems else ""), flush=True)


class TruncationReport:
  """Per-task truncation and drop counts of the pipeline: logged as scalars, warned about once per task."""

  def __init__(self, stats: pipeline.Stats, threshold: float):
    self.stats, self.threshold, self.warned = stats, threshold, set()

  def scalars(self) -> dict[str, float]:
    out = {}
    for i, name in enumerate(self.stats.task_names):
      kept, dropped, cut = int(self.stats.examples[i]), int(self.stats.dropped[i]), int(self.stats.truncated[i])
      out[f"data/truncated/{name}"], out[f"data/dropped/{name}"] = cut, dropped
      seen = kept + dropped
      share = (cut + dropped) / max(seen, 1)
      if seen >= 20 and share > self.threshold and name not in self.warned and jax.process_index() == 0:
        self.warned.add(name)
        print(f"WARNING: task {name}: {100 * share:.0f}% of its examples so far are cut ({cut}) or dropped "
              f"({dropped}) at data.inputs_length / data.targets_length (warning above "
              f"config.data.truncation_warning={self.threshold})", flush=True)
    return out

  def summary(self) -> str:
    rows = [f"  {name}: {int(self.stats.truncated[i])} truncated, {int(self.stats.dropped[i])} dropped of "
            f"{int(self.stats.examples[i] + self.stats.dropped[i])}"
            for i, name in enumerate(self.stats.task_names) if self.stats.truncated[i] or self.stats.dropped[i]]
    return "data: no example was truncated or dropped" if not rows else "data (this process):\n" + "\n".join(rows)
