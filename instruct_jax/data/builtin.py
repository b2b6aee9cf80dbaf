"""The built-in task family: procedurally generated tasks whose answer depends on the instruction.

Every example holds a short list of 3-6 items, single digits or three-letter animal words. Example `i` of a
split has the same items in every task that accepts that kind of item, so one input is sorted, reversed,
counted, filtered, transformed or checked depending only on what the instruction asks. A small T5 can
learn these in minutes on a CPU; held-out templates and a held-out cluster then measure instruction
following rather than memorised prompts.

Clusters (task: what the answer is):

    order      sort_ascending, sort_descending, reverse
    select     first_k (first k items), last_k, item_at (the k-th item, counting from 1)
    count      count_items, count_occurrences (of a named item), count_even (even digits)
    filter     filter_even, filter_greater (digits above a threshold), remove_item
    transform  uppercase (words), increment (digits plus one), repeat_each (every item twice)
    check      contains, is_sorted, all_even            (answers "yes"/"no"; answer options given)

Example fields for templates: items, kind ("numbers" or "words"), k, item, threshold, answer, and for the
count cluster a rationale (for chain-of-thought templates); the check cluster also has options. Empty
answers read "none".
Generation is a pure function of (seed, split, index, task), so any example is addressable by index.
"""
from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

DIGITS = tuple(str(d) for d in range(10))
WORDS = ("ant", "bat", "cat", "cow", "dog", "eel", "elk", "fox", "gnu", "hen", "owl", "pig", "ram", "rat",
         "yak", "emu")
CLUSTERS: dict[str, tuple[str, ...]] = {
    "order": ("sort_ascending", "sort_descending", "reverse"),
    "select": ("first_k", "last_k", "item_at"),
    "count": ("count_items", "count_occurrences", "count_even"),
    "filter": ("filter_even", "filter_greater", "remove_item"),
    "transform": ("uppercase", "increment", "repeat_each"),
    "check": ("contains", "is_sorted", "all_even"),
}
YES_NO = ("yes", "no")
SPLIT_SIZES = {"train": 20_000, "validation": 500, "test": 500}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def _join(items: Sequence[str]) -> str:
  return " ".join(items) if items else "none"


def _yes(b: bool) -> str:
  return "yes" if b else "no"


def _even(d: str) -> bool:
  return int(d) % 2 == 0


def _listing(items: Sequence[str]) -> str:
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def _count_occurrences(items, p):
  where = [str(i + 1) for i, x in enumerate(items) if x == p["item"]]
  p["rationale"] = (f"{p['item']} is at position {_listing(where)}." if where
                    else f"{p['item']} is not in the list.")
  return str(len(where))


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def _count_items(items, p):
  p["rationale"] = "Counting: " + ", ".join(f"{_ORDINALS[i]} {x}" for i, x in enumerate(items)) + "."
  return str(len(items))


def _count_even(items, p):
  evens = [x for x in items if _even(x)]
  p["rationale"] = f"The even ones are {_listing(evens)}." if evens else "None of them is even."
  return str(len(evens))


@dataclasses.dataclass(frozen=True)
class BuiltinTask:
  name: str
  cluster: str
  kinds: tuple[str, ...]  # "digits" and/or "words"
  answer: Callable[[list[str], dict[str, Any]], str]  # may add fields (e.g. rationale) to its dict
  params: tuple[str, ...] = ()  # which of k, item, threshold the instruction names
  options: tuple[str, ...] | None = None


def _sort_key(x: str):
  return (int(x), x) if x.isdigit() else (0, x)


TASKS: dict[str, BuiltinTask] = {t.name: t for t in (
    BuiltinTask("sort_ascending", "order", ("digits", "words"), lambda xs, p: _join(sorted(xs, key=_sort_key))),
    BuiltinTask("sort_descending", "order", ("digits", "words"),
                lambda xs, p: _join(sorted(xs, key=_sort_key, reverse=True))),
    BuiltinTask("reverse", "order", ("digits", "words"), lambda xs, p: _join(xs[::-1])),
    BuiltinTask("first_k", "select", ("digits", "words"), lambda xs, p: _join(xs[:p["k"]]), ("k",)),
    BuiltinTask("last_k", "select", ("digits", "words"), lambda xs, p: _join(xs[-p["k"]:]), ("k",)),
    BuiltinTask("item_at", "select", ("digits", "words"), lambda xs, p: xs[p["k"] - 1], ("k",)),
    BuiltinTask("count_items", "count", ("digits", "words"), _count_items),
    BuiltinTask("count_occurrences", "count", ("digits", "words"), _count_occurrences, ("item",)),
    BuiltinTask("count_even", "count", ("digits",), _count_even),
    BuiltinTask("filter_even", "filter", ("digits",), lambda xs, p: _join([x for x in xs if _even(x)])),
    BuiltinTask("filter_greater", "filter", ("digits",),
                lambda xs, p: _join([x for x in xs if int(x) > p["threshold"]]), ("threshold",)),
    BuiltinTask("remove_item", "filter", ("digits", "words"),
                lambda xs, p: _join([x for x in xs if x != p["item"]]), ("item",)),
    BuiltinTask("uppercase", "transform", ("words",), lambda xs, p: _join([x.upper() for x in xs])),
    BuiltinTask("increment", "transform", ("digits",), lambda xs, p: _join([str(int(x) + 1) for x in xs])),
    BuiltinTask("repeat_each", "transform", ("digits", "words"), lambda xs, p: _join([y for x in xs for y in (x, x)])),
    BuiltinTask("contains", "check", ("digits", "words"), lambda xs, p: _yes(p["item"] in xs), ("item",), YES_NO),
    BuiltinTask("is_sorted", "check", ("digits", "words"),
                lambda xs, p: _yes(xs == sorted(xs, key=_sort_key)), (), YES_NO),
    BuiltinTask("all_even", "check", ("digits",), lambda xs, p: _yes(all(_even(x) for x in xs)), (), YES_NO),
)}
assert all(TASKS[n].cluster == c for c, names in CLUSTERS.items() for n in names)
assert sorted(TASKS) == sorted(n for names in CLUSTERS.values() for n in names)


def _shared_items(seed: int, split: str, index: int) -> tuple[str, list[str], list[str]]:
  """The items of example `index`: (preferred kind, digit list, word list); shared by every task."""
  rng = random.Random(f"items:{seed}:{_SPLIT_IDS[split]}:{index}")
  n = rng.randint(3, 6)
  # Draw from a small pool so items repeat often (count_occurrences, remove_item need repeats).
  digit_pool = rng.sample(DIGITS, 5)
  word_pool = rng.sample(WORDS, 5)
  digits = [rng.choice(digit_pool) for _ in range(n)]
  words = [rng.choice(word_pool) for _ in range(n)]
  return rng.choice(("digits", "words")), digits, words


def generate(task: str | BuiltinTask, index: int, *, split: str = "train", seed: int = 0) -> dict[str, Any]:
  """Example `index` of `task` in `split`: a dict of template fields, including `answer`."""
  spec = TASKS[task] if isinstance(task, str) else task
  if split not in _SPLIT_IDS:
    raise ValueError(f"built-in tasks have splits {sorted(_SPLIT_IDS)}, not {split!r}")
  preferred, digits, words = _shared_items(seed, split, index)
  kind = preferred if preferred in spec.kinds else spec.kinds[0]
  items = list(digits if kind == "digits" else words)
  rng = random.Random(f"params:{seed}:{_SPLIT_IDS[split]}:{index}:{zlib.crc32(spec.name.encode())}")
  vocab = DIGITS if kind == "digits" else WORDS
  # Tasks whose answer is yes/no get balanced classes by adjusting the input half of the time.
  if spec.name == "is_sorted" and rng.random() < 0.5:
    items.sort(key=_sort_key)
  if spec.name == "all_even" and rng.random() < 0.5:
    items = [str(int(x) // 2 * 2) for x in items]
  p: dict[str, Any] = {"items": _join(items), "kind": "numbers" if kind == "digits" else "words"}
  p["k"] = rng.randint(1, len(items) - 1) if spec.name != "item_at" else rng.randint(1, len(items))
  present = rng.random() < (0.5 if spec.name == "contains" else 0.85)
  absent = [v for v in vocab if v not in items]
  p["item"] = rng.choice(items) if present or not absent else rng.choice(absent)
  if spec.name == "remove_item":
    p["item"] = rng.choice(items)
  p["threshold"] = rng.randint(2, 7)
  p["answer"] = spec.answer(items, p)
  if spec.options:
    p["options"] = list(spec.options)
  return p


class BuiltinSource:
  """A built-in task as a random-access source; sizes are nominal (any index can be generated)."""

  def __init__(self, task: str, *, seed: int = 0, sizes: dict[str, int] | None = None):
    if task not in TASKS:
      raise KeyError(task)
    self.task = TASKS[task]
    self.seed = seed
    self.sizes = dict(SPLIT_SIZES if sizes is None else sizes)

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.sizes)

  def load(self, split: str) -> _Split:
    if split not in self.sizes:
      raise ValueError(f"built-in task {self.task.name!r} has splits {sorted(self.sizes)}, not {split!r}")
    return _Split(self.task, split, self.seed, self.sizes[split])


class _Split(Sequence):
  """The examples of one split of a built-in task, generated on access."""

  def __init__(self, task: BuiltinTask, split: str, seed: int, size: int):
    self._task, self._split, self._seed, self._size = task, split, seed, size

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(self._size))]
    if not -self._size <= i < self._size:
      raise IndexError(i)
    return generate(self._task, i % self._size, split=self._split, seed=self._seed)
