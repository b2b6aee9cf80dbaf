"""What the trainer checks and reports about its data: every configured file read at the start, the mixture's
rates (set, and realised by the stream the run draws), and the examples the pipeline cuts or drops, per task (logged
as scalars, warned about above a threshold).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax

from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline

REALISED_OVER = 10_000  # examples of the mixed stream the start-of-run rate table counts


def check_files(config, tasks, rates: Mapping[str, float]) -> None:
  """Reads every configured instruction and chat file now (a bad one fails before training starts, naming file and
  line) and says which ones neither the mixture nor the evaluation uses."""
  used = set(rates) | set(config.eval.tasks)
  files = [("instruction_files", n) for n in config.data_paths.instruction_files]
  files += [("hf_datasets", n) for n in config.data_paths.hf_datasets]  # opened, columns and types checked
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


def mixture_rates(data: pipeline.PipelineConfig, tasks, mixtures, n: int = REALISED_OVER) -> dict:
  """The mixture's rates, set and realised over the first `n` examples of the stream the run draws (no data read):
  {"mixture", "realised_over", "tasks": {task: {"rate", "realised"}}, "members": {member: {"rate", "realised"}}}
  ("members": the mixture's own members, e.g. of "instructions:0.5,chat:0.3,flan2021:0.2"; {} for one task)."""
  mixed, task_names, rates = pipeline.mixed_indices(data, tasks, mixtures)
  shares = pipeline.realised_shares(mixed, len(task_names), n)
  by_task = {name: {"rate": rates[name], "realised": float(shares[i])} for i, name in enumerate(task_names)}
  members = {}
  for member, rate in mixtures_lib.member_rates(data.mixture, tasks, mixtures, cap=data.mixing_cap,
                                                temperature=data.mixing_temperature, split=data.split).items():
    leaves = mixtures_lib.leaf_tasks(member, tasks, mixtures)
    members[member] = {"rate": rate, "realised": sum(by_task[t]["realised"] for t in leaves if t in by_task)}
  out = {"mixture": data.mixture, "realised_over": n, "tasks": by_task, "members": members}
  if data.exclude:  # examples decontamination keeps out of training, by task
    out["decontaminated"] = {name: int(len(found)) for name, found in data.exclude.items()}
  return out


def format_mixture_rates(report: dict, max_tasks: int = 20) -> str:
  """The table `mixture_rates` describes, members first (when the mixture has several), then the largest tasks."""
  tasks, members = report["tasks"], report["members"]
  count = f"{len(tasks)} task" + ("s" if len(tasks) != 1 else "")
  lines = [f"mixture {report['mixture']!r}: {count}; rate, and realised over the first {report['realised_over']} "
           "examples drawn"]
  if len(members) > 1:
    lines += [f"  member {name:40s} {m['rate']:7.4f} ({m['realised']:.4f})" for name, m in members.items()]
  order = sorted(tasks, key=lambda t: -tasks[t]["rate"])
  lines += [f"  task   {name:40s} {tasks[name]['rate']:7.4f} ({tasks[name]['realised']:.4f})"
            for name in order[:max_tasks]]
  if len(order) > max_tasks:
    lines.append(f"  ... and {len(order) - max_tasks} more tasks (all of them in WORKDIR/mixture.json)")
  return "\n".join(lines)
