"""Mixtures: tasks (or other mixtures) with sampling rates, and the mixture catalogue.

A member's rate within its mixture is, by the mixture's `rate`:

    "examples"     min(size, cap): examples-proportional with a per-member cap (Flan: 3,000 in 2021)
    "temperature"  min(size, cap) ** (1 / temperature) (temperature 1 is "examples")
    "weights"      the mixture's explicit `weights`, one per member
    "equal"        1 for every member

The size of a task is its number of training examples; the size of a nested mixture is the sum of its
members' capped sizes. A nested mixture's share is split among its tasks by its own rates, so
`task_rates` always returns one probability per task, summing to 1. The catalogues are plain dicts:
`task_catalogue(paths)` every task the paths make available (built-in, Flan 2021 from TFDS, SuperNI, instruction and
chat files), `catalogue(tasks)` the mixtures over them.

A mixture may also be written where a name is expected (`config.data.mixture`, `--mixture`), as members separated
by commas (or "+"), each a task or mixture name:

    "instructions:0.5,chat:0.3,flan2021:0.2"   explicit weights (normalised to sum to 1; every member weighted)
    "instructions,chat,flan2021"               examples-proportional (`config.data.mixing_cap` caps each member's
                                               size: Flan's "examples-proportional with a cap")
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

from absl import logging

from instruct_jax import errors
from instruct_jax.data import builtin
from instruct_jax.data import flan2021
from instruct_jax.data import hf_datasets
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib

RATES = ("examples", "temperature", "weights", "equal")


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Members (task or mixture names) and how they are weighted; see the module docstring."""
  name: str
  members: tuple[str, ...]
  rate: str = "examples"
  weights: tuple[float, ...] | None = None
  cap: int | None = None
  temperature: float = 1.0

  def __post_init__(self):
    object.__setattr__(self, "members", tuple(self.members))
    if not self.members:
      raise ValueError(f"mixture {self.name!r} has no members")
    if self.rate not in RATES:
      raise ValueError(f"mixture {self.name!r}: rate must be one of {RATES}, got {self.rate!r}")
    if self.rate == "weights":
      if self.weights is None or len(self.weights) != len(self.members):
        raise ValueError(f"mixture {self.name!r}: rate 'weights' needs one weight per member")
      if any(w <= 0 for w in self.weights):
        raise ValueError(f"mixture {self.name!r}: weights must be positive, got {self.weights}")
    if self.cap is not None and self.cap < 1:
      raise ValueError(f"mixture {self.name!r}: cap must be >= 1, got {self.cap}")
    if self.temperature <= 0:
      raise ValueError(f"mixture {self.name!r}: temperature must be > 0, got {self.temperature}")


class MixtureSpecError(errors.UserError, ValueError):
  """A mixture written in the config ("a:0.5,b:0.5") that cannot be read; the message names the member."""


SPEC_SEPARATORS = ",+"


def is_spec(name: str) -> bool:
  """Whether `name` is a mixture written out ("a:0.5,b:0.5", "a,b", "a+b") rather than a catalogue name."""
  return any(c in name for c in SPEC_SEPARATORS + ":")


def parse_spec(spec: str) -> Mixture:
  """The Mixture a written-out mixture stands for (see the module docstring); its name is the spec itself."""
  items = [x.strip() for x in re.split(f"[{re.escape(SPEC_SEPARATORS)}]", spec)]
  if any(not x for x in items):
    raise MixtureSpecError(f"mixture {spec!r}: an empty member (two separators in a row, or one at an end)")
  members, weights = [], []
  for item in items:
    name, sep, weight = item.rpartition(":") if ":" in item else (item, "", "")
    name = name.strip()
    if sep:
      try:
        w = float(weight)
      except ValueError:
        raise MixtureSpecError(f"mixture {spec!r}: member {item!r}: the weight {weight.strip()!r} is not a number "
                               "(write NAME:WEIGHT, e.g. instructions:0.5)") from None
      if not math.isfinite(w) or w <= 0:
        raise MixtureSpecError(f"mixture {spec!r}: member {item!r}: a weight must be a positive number, got {w}")
      weights.append(w)
    if not name:
      raise MixtureSpecError(f"mixture {spec!r}: member {item!r} has no name")
    if name in members:
      raise MixtureSpecError(f"mixture {spec!r}: {name!r} is named twice")
    members.append(name)
  if weights and len(weights) != len(members):
    unweighted = [m for m, x in zip(members, items) if ":" not in x]
    raise MixtureSpecError(f"mixture {spec!r}: weight every member or none ({', '.join(map(repr, unweighted))} "
                           "has no weight)")
  if weights:
    return Mixture(spec, tuple(members), rate="weights", weights=tuple(weights))
  return Mixture(spec, tuple(members), rate="examples")


@dataclasses.dataclass(frozen=True)
class _Overrides:
  cap: int | None
  temperature: float | None
  split: str


def _size(name: str, tasks, mixtures, ov: _Overrides, stack: tuple[str, ...]) -> float:
  if name in tasks:
    return float(tasks[name].num_examples(ov.split))
  mixture = _get(name, tasks, mixtures, stack)
  cap = ov.cap if ov.cap is not None else mixture.cap
  return sum(min(s, cap) if cap else s
             for s in (_size(m, tasks, mixtures, ov, stack + (name,)) for m in mixture.members))


def _get(name: str, tasks, mixtures, stack: tuple[str, ...]) -> Mixture:
  if name in stack:
    raise ValueError(f"mixture cycle: {' -> '.join(stack + (name,))}")
  if name not in mixtures and is_spec(name):
    return parse_spec(name)
  if name not in mixtures:
    if (name == "niv2" or name.startswith(("niv2_", "niv2/"))) and not any(t.startswith("niv2/") for t in tasks):
      raise tasks_lib.UnknownName(f"{name!r} is a SuperNI mixture or task, and no SuperNI task files were given: set "
                                  "config.data_paths.superni_dir (--superni_dir for evaluate and preview) to the "
                                  "natural-instructions directory")
    tasks_lib.lookup({**tasks, **mixtures}, name, "task or mixture")
  return mixtures[name]


def _flatten(name: str, tasks, mixtures, ov: _Overrides, stack: tuple[str, ...]) -> dict[str, float]:
  if name in tasks:
    return {name: 1.0}
  mixture = _get(name, tasks, mixtures, stack)
  out: dict[str, float] = {}
  for member, share in _shares(mixture, tasks, mixtures, ov, stack).items():
    for task, p in _flatten(member, tasks, mixtures, ov, stack + (name,)).items():
      out[task] = out.get(task, 0.0) + p * share
  return out


def _shares(mixture: Mixture, tasks, mixtures, ov: _Overrides, stack: tuple[str, ...]) -> dict[str, float]:
  """Each member's share of `mixture` (summing to 1)."""
  cap = ov.cap if ov.cap is not None else mixture.cap
  temperature = ov.temperature if ov.temperature is not None else mixture.temperature
  raw = []
  for i, member in enumerate(mixture.members):
    if mixture.rate == "weights":
      raw.append(float(mixture.weights[i]))
    elif mixture.rate == "equal":
      raw.append(1.0)
    else:
      size = _size(member, tasks, mixtures, ov, stack + (mixture.name,))
      size = min(size, cap) if cap else size
      raw.append(size ** (1.0 / temperature) if mixture.rate == "temperature" else size)
  total = sum(raw)
  if total <= 0:
    raise ValueError(f"mixture {mixture.name!r}: every member is empty")
  return {member: r / total for member, r in zip(mixture.members, raw)}


def member_rates(name: str, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Mixture], *,
                 cap: int | None = None, temperature: float | None = None,
                 split: str = "train") -> dict[str, float]:
  """The share of each member of mixture `name` (its members, not flattened; {} for a task), e.g. {"instructions":
  0.5, "chat": 0.3, "flan2021": 0.2} for "instructions:0.5,chat:0.3,flan2021:0.2"."""
  if name in tasks:
    return {}
  return _shares(_get(name, tasks, mixtures, ()), tasks, mixtures, _Overrides(cap, temperature, split), ())


def task_rates(name: str, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Mixture], *,
               cap: int | None = None, temperature: float | None = None,
               split: str = "train") -> dict[str, float]:
  """Sampling probability of every task in mixture (or task) `name`, nested mixtures flattened.

  `cap` and `temperature`, when given, override those of every mixture involved (ablation knobs).
  """
  rates = _flatten(name, tasks, mixtures, _Overrides(cap, temperature, split), ())
  return {k: v for k, v in rates.items() if v > 0}


def leaf_tasks(name: str, tasks: Mapping[str, tasks_lib.Task], mixtures: Mapping[str, Mixture],
               _stack: tuple[str, ...] = ()) -> list[str]:
  """The tasks mixture (or task) `name` draws from, nested mixtures flattened, without reading any data."""
  if name in tasks:
    return [name]
  mixture = _get(name, tasks, mixtures, _stack)
  out: list[str] = []
  for member in mixture.members:
    out += [t for t in leaf_tasks(member, tasks, mixtures, _stack + (name,)) if t not in out]
  return out


def without_tasks(mixtures: Mapping[str, Mixture], drop: set[str]) -> dict[str, Mixture]:
  """The mixtures with the tasks in `drop` removed from their members (a mixture left empty is removed too)."""
  out: dict[str, Mixture] = {}
  pending = dict(mixtures)
  while pending:  # members first, so a nested mixture left empty disappears from its parents
    progress = False
    for name, m in list(pending.items()):
      if any(x in pending for x in m.members if x != name):
        continue
      keep = [i for i, x in enumerate(m.members) if x not in drop and (x in out or x not in mixtures)]
      if keep:
        weights = tuple(m.weights[i] for i in keep) if m.weights is not None else None
        out[name] = dataclasses.replace(m, members=tuple(m.members[i] for i in keep), weights=weights)
      del pending[name]
      progress = True
    if not progress:  # a cycle: leave the rest for task_rates to report
      out.update(pending)
      break
  return out


def format_rates(rates: Mapping[str, float], realised: Sequence[float] | None = None) -> str:
  w = max([len(n) for n in rates] + [10])
  lines = [f"{'task':{w}s} {'rate':>8s}" + (f" {'realised':>9s}" if realised is not None else "")]
  for i, (name, p) in enumerate(rates.items()):
    line = f"{name:{w}s} {p:8.4f}"
    if realised is not None:
      line += f" {realised[i]:9.4f}"
    lines.append(line)
  return "\n".join(lines)


def log_rates(mixture: str, rates: Mapping[str, float]) -> None:
  logging.info("mixture %r: %d tasks\n%s", mixture, len(rates), format_rates(rates))


def catalogue(tasks: Mapping[str, tasks_lib.Task], superni_dir: str | None = None) -> dict[str, Mixture]:
  """Mixtures over the tasks in `tasks` (those over absent tasks are left out)."""
  out: dict[str, Mixture] = {}

  def add(m: Mixture) -> None:
    if all(x in tasks or x in out for x in m.members):
      out[m.name] = m

  all_builtin = [f"builtin/{n}" for n in builtin.TASKS]
  add(Mixture("builtin", all_builtin))
  for cluster, names in builtin.CLUSTERS.items():
    add(Mixture(f"builtin_{cluster}", [f"builtin/{n}" for n in names]))
    add(Mixture(f"builtin_no_{cluster}", [f"builtin/{n}" for n in builtin.TASKS if n not in names]))
  add(Mixture("tfds_nlu", tasks_lib.TFDS_NLU, cap=3000))
  for name, members, cap in flan2021.mixtures():
    add(Mixture(name, members, cap=cap))
  add(Mixture("builtin_and_tfds", ["builtin", "tfds_nlu"], rate="weights", weights=(0.7, 0.3)))
  niv2 = [n for n in tasks if n.startswith("niv2/")]
  if niv2:
    add(Mixture("niv2", niv2, cap=100))
    if superni_dir:
      for split in ("train", "test"):
        members = [n for n in tasks_lib.superni_split(superni_dir, split) if n in tasks]
        if members:
          add(Mixture(f"niv2_{split}", members, cap=100))
  instruction = [n for n, t in tasks.items() if t.cluster == "instructions"]
  if instruction:
    add(Mixture("instructions", instruction))
  conversations = [n for n, t in tasks.items() if t.cluster == "chat"]
  if conversations:
    add(Mixture("chat", conversations))
  pairs = [n for n, t in tasks.items() if t.cluster == "preferences"]
  if pairs:
    add(Mixture("preferences", pairs))
  hf = [n for n, t in tasks.items() if isinstance(t.source, hf_datasets.HFDatasetSource)]
  if hf:
    add(Mixture("hf_datasets", hf))  # every config.data_paths.hf_datasets task, whatever its cluster
  return out


FILE_MIXTURES = ("instructions", "chat", "preferences", "hf_datasets")  # the mixtures of every instruction, chat,
#                                                                      preference file and Hugging Face dataset


def task_catalogue(paths: tasks_lib.DataPaths = tasks_lib.DataPaths()) -> dict[str, tasks_lib.Task]:
  """Every task the given paths make available."""
  tasks = tasks_lib.builtin_tasks(paths.builtin_seed)
  tasks.update(flan2021.tasks(paths.tfds_data_dir))
  if paths.superni_dir:
    tasks.update(tasks_lib.superni_tasks(paths.superni_dir, train_instances=paths.superni_train_instances,
                                         eval_instances=paths.superni_eval_instances))
  for section, files_of, make in (("instruction_files", paths.instruction_files, tasks_lib.instruction_task),
                                   ("chat_files", paths.chat_files, tasks_lib.chat_task),
                                   ("preference_files", paths.preference_files, tasks_lib.preference_task),
                                   ("hf_datasets", paths.hf_datasets, tasks_lib.hf_dataset_task)):
    for name, files in files_of.items():
      if name in tasks or name in FILE_MIXTURES:
        raise sources.DataError(f"config.data_paths.{section}.{name}: the name {name!r} is taken by "
                                f"{'a catalogue task or file' if name in tasks else 'a mixture'}; choose another")
      tasks[name] = make(name, files, strict=paths.strict, chat_format=paths.chat_format)
  return tasks


def catalogues(paths: tasks_lib.DataPaths = tasks_lib.DataPaths()
               ) -> tuple[dict[str, tasks_lib.Task], dict[str, Mixture]]:
  """The task catalogue for `paths` and the mixture catalogue over it."""
  tasks = task_catalogue(paths)
  return tasks, catalogue(tasks, paths.superni_dir)
