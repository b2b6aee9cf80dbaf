"""N-gram decontamination: which training examples share an n-gram of words with an evaluation set.

    python -m instruct_jax.data.decontaminate --train alpaca.jsonl,sft_dir:train \\
        --eval ../shared/data/natural-instructions/tasks/task648_answer_generation.json --ngram 13 --out report.json

prints, per training source, how many of its examples share an n-gram (13 words by default) with any eval
set, and per eval set how many of its examples are hit by the training data, and writes the same as JSON
(its shape is in `main`'s docstring). In a program:

    index = NgramIndex.build(read_examples("eval.jsonl"), n=13)   # {eval set: texts}
    keep = ~index.contaminated(texts)          # bool per training text; which_sets(texts) names the sets
    matches = index.find(texts)                # every eval n-gram occurrence: text, start word, key
    index.eval_hits(matches.key)               # {eval set: bool per eval example hit by those texts}

Normalisation (`normalise`), as the GPT-3 paper's contamination analysis and lm-eval's decontamination do:
lowercase (`str.lower`), then every punctuation character is removed, replaced by nothing, as lm-eval does
("don't" -> "dont", "state-of-the-art" -> "stateoftheart"); punctuation is every Unicode character of category
P* (so also curly quotes, dashes, "¿", "。") plus ASCII `string.punctuation` (lm-eval's set, which adds the
symbols $ + < = > ^ ` | ~); then words are split on whitespace as `str.split()` does (any Unicode whitespace).
Other symbols (€, ©, emoji) stay part of their word.

What text an example contributes (`example_texts`): every string value of its record, recursively through
lists and objects, in order, joined with newlines, except the speaker labels of chat formats (values of keys
"role" and "from"). So Alpaca `{instruction, input, output}`, chat `{"messages": [{role, content}]}`,
ShareGPT `{"conversations": [{from, value}]}` and preference `{prompt, chosen, rejected}` records need no
special case. A record with a non-empty list `instances` of objects (Self-Instruct) gives one example per
instance: the record's other strings plus that instance's. A SuperNI task file gives one example per instance,
its input and its outputs; the task's Definition and its Positive/Negative Examples are not included in any
example (definitions share boilerplate across tasks, so on the eval side they would flag training examples of
unrelated tasks, and SuperNI scores only the instances).

Texts shorter than n words contribute no n-gram and so are never found: they are counted as "too_short" in the
report, for both sides (lower --ngram to check short eval sets; the GPT-3 paper used 8 to 13 words per set).

Inputs (`open_sources`): `.jsonl` (one record per line); `.json` (a list of records, or a SuperNI task file: an
object with "Definition" and "Instances"; a .json file holding one object per line is read as JSONL); `.parquet`
and `.arrow` files; and directories written by Hugging Face `datasets`' `save_to_disk`: a Dataset is one source,
a DatasetDict one source per split, named "DIR:SPLIT"; pass "DIR:SPLIT" to read one split. Sources are named by
the path as given. An unreadable record is an error naming the file and line (or record / row); nothing is
skipped.

Speed: words are hashed with Python's `hash()` (SipHash, salted per process but the same within one: an index is
only valid in the process that built it) and combined into 64-bit n-gram hashes by a polynomial over whole
batches of texts with numpy; n-grams that would cross from one text into the next are masked out. The eval
n-grams are kept as a sorted unique uint64 array with, for each, the eval examples and eval sets it came from;
training texts are looked up in batches with `np.searchsorted`, so memory is bounded by the eval side plus one
batch. With E eval and T training n-grams, the expected number of false matches from 64-bit collisions is about
E * T / 2**64 (1e-5 for 5 million against 60 million): negligible.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import string
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags

from instruct_jax import errors
from instruct_jax.data import sources
from instruct_jax.data.sources import DataError

NORMALISATION = ("lowercase; every Unicode punctuation character (category P*) and ASCII string.punctuation "
                 "removed (replaced by nothing); split on whitespace")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so every power of it is invertible modulo 2**64
_SPEAKER_KEYS = frozenset({"role", "from"})
_MAX_FOUND = 20
_CHUNK = 10_000


# ---------------------------------------------------------------------------------------------------------------
# Normalisation


@functools.cache
def _punctuation() -> tuple[bytes, frozenset[str]]:
  """(ASCII punctuation as bytes, the other Unicode punctuation characters): built once, in about 0.2 s."""
  chars = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}
  chars |= set(string.punctuation)
  return "".join(sorted(c for c in chars if c.isascii())).encode(), frozenset(c for c in chars if not c.isascii())


def normalise(text: str) -> list[str]:
  """The words of `text`: lowercased, punctuation removed (see the module docstring), split on whitespace.

  normalise("Don't STOP—now!  «Ça va?»") == ["dont", "stopnow", "ça", "va"]
  """
  ascii_punctuation, other_punctuation = _punctuation()
  text = text.lower()
  if not text.isascii():
    for char in other_punctuation.intersection(text):
      text = text.replace(char, "")
  # bytes.translate deletes in one C loop; ASCII bytes never occur inside a multi-byte UTF-8 character.
  return text.encode("utf-8", "surrogatepass").translate(None, ascii_punctuation).decode(
      "utf-8", "surrogatepass").split()


# ---------------------------------------------------------------------------------------------------------------
# Records -> example texts


def _strings(value: Any, out: list[str]) -> list[str]:
  if isinstance(value, str):
    out.append(value)
  elif isinstance(value, Mapping):
    for key, item in value.items():
      if not (key in _SPEAKER_KEYS and isinstance(item, str)):
        _strings(item, out)
  elif isinstance(value, (list, tuple)):
    for item in value:
      _strings(item, out)
  return out


def example_texts(record: Mapping[str, Any]) -> list[str]:
  """The text of each example a record holds: one text, every string value of the record (recursively, in order,
  joined with newlines, speaker labels "role"/"from" left out); or, for a record with a non-empty list
  `instances` of objects (Self-Instruct), one text per instance: the record's other strings and the instance's."""
  instances = record.get("instances")
  if isinstance(instances, list) and instances and all(isinstance(i, Mapping) for i in instances):
    shared = _strings({k: v for k, v in record.items() if k != "instances"}, [])
    return ["\n".join(_strings(instance, list(shared))) for instance in instances]
  return ["\n".join(_strings(record, []))]


# ---------------------------------------------------------------------------------------------------------------
# Files -> sources of (where, text)


def _datasets():
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("reading a datasets directory needs the datasets package: pip install datasets") from None
  return datasets


def _pyarrow():
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise DataError("reading .parquet and .arrow files needs pyarrow: pip install datasets") from None
  return pyarrow


def _json_kind(path: str) -> str:
  """"json" (a list of records), "superni" (a task file) or "jsonl" (one object per line) for a .json file."""
  with open(path, "rb") as f:
    head = f.read(4096).lstrip()
  if not head:
    raise DataError(f"{path}: the file is empty (no records)")
  if head.startswith(b"["):
    return "json"
  text = sources.read_text(path)
  try:
    data = errors.loads_json(text)
  except json.JSONDecodeError as e:
    if e.msg == "Extra data" and head.startswith(b"{"):
      return "jsonl"
    raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
  if sources.is_superni_task(data):
    return "superni"
  raise DataError(f"{path}: expected a list of records or a SuperNI task file (an object with \"Definition\" and "
                  f"\"Instances\"), got {'an object without them' if isinstance(data, dict) else type(data).__name__}"
                  f"; a file of one JSON object per line should be named .jsonl")


@dataclasses.dataclass(frozen=True)
class Source:
  """One named set of examples: a file, or a Dataset (or one split of a DatasetDict) saved with `save_to_disk`."""
  name: str  # the path as the user gave it; "DIR:SPLIT" for a split of a DatasetDict
  path: str
  kind: str  # "jsonl", "json", "superni", "parquet", "arrow", "datasets"
  split: str | None = None

  def examples(self) -> Iterator[tuple[str, str]]:
    """(where, text) of every example, streamed; `where` names the file and line, record, instance or row."""
    if self.kind == "jsonl":
      yield from self._jsonl()
    elif self.kind == "json":
      for i, record in enumerate(sources.read_json(self.path)):
        yield from _located(f"{self.name}: record {i}", example_texts(record))
    elif self.kind == "superni":
      yield from self._superni()
    else:
      for i, record in enumerate(self._rows()):
        yield from _located(f"{self.name}: row {i}", example_texts(record))

  def texts(self) -> Iterator[str]:
    """The text of every example, streamed."""
    return (text for _, text in self.examples())

  def _jsonl(self) -> Iterator[tuple[str, str]]:
    for lineno, record in sources.iter_jsonl_numbered(self.path):  # streamed: memory bounded by a line
      yield from _located(f"{self.path}:{lineno}", example_texts(record))

  def _superni(self) -> Iterator[tuple[str, str]]:
    """Each instance's input and references (the instances as `sources.superni_records` reads them)."""
    for where, record in sources.superni_records(sources.read_json_data(self.path), self.path):
      yield where, "\n".join([record["input"], *record["references"]])

  def _rows(self) -> Iterator[dict[str, Any]]:
    if self.kind == "datasets":
      dataset = _datasets().load_from_disk(self.path)
      if self.split is not None:
        dataset = dataset[self.split]
      for table in dataset.with_format("arrow").iter(batch_size=1000):
        yield from table.to_pylist()
      return
    pa = _pyarrow()
    try:
      if self.kind == "parquet":
        batches = pa.parquet.ParquetFile(self.path).iter_batches(batch_size=1000)
      else:
        try:
          reader = pa.ipc.open_file(pa.memory_map(self.path))
          batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:  # datasets writes the stream format
          batches = pa.ipc.open_stream(pa.memory_map(self.path))
      for batch in batches:
        yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
      raise DataError(f"{self.path}: not a readable {self.kind} file: {errors.one_line(str(e))}") from None


def _located(where: str, texts: list[str]) -> Iterator[tuple[str, str]]:
  if len(texts) == 1:
    yield where, texts[0]
  else:
    for j, text in enumerate(texts):
      yield f"{where} instances[{j}]", text


def open_sources(spec: str) -> list[Source]:
  """The sources a --train / --eval entry names (see the module docstring), checked to exist and to be of a
  known format; their records are read later, by `Source.examples`."""
  path, split = spec, None
  if not os.path.exists(spec) and ":" in spec and os.path.isdir(spec.rsplit(":", 1)[0]):
    path, split = spec.rsplit(":", 1)
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
      splits = list(_datasets().load_from_disk(path))
      if split is not None and split not in splits:
        raise DataError(f"{path}: the saved DatasetDict has splits {splits}, not {split!r}")
      return [Source(f"{path}:{s}", path, "datasets", s) for s in ([split] if split is not None else splits)]
    if os.path.isfile(os.path.join(path, "state.json")):
      if split is not None:
        raise DataError(f"{spec}: {path} is a saved Dataset, which has no splits; pass {path}")
      return [Source(path, path, "datasets")]
    raise DataError(f"{path}: a directory that datasets' save_to_disk did not write (no dataset_dict.json or "
                    f"state.json in it)")
  if not os.path.isfile(path):
    raise DataError(f"{spec}: no such file or directory")
  extension = os.path.splitext(path)[1].lower()
  kinds = {".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
  if extension == ".json":
    return [Source(spec, path, _json_kind(path))]
  if extension not in kinds:
    raise DataError(f"{path}: unknown format {extension or '(no extension)'!r}; expected .jsonl, .json, .parquet, "
                    f".arrow or a directory written by datasets' save_to_disk")
  return [Source(spec, path, kinds[extension])]


def read_examples(spec: str) -> dict[str, list[str]]:
  """{source name: example texts} of a --train / --eval entry, all in memory."""
  return {source.name: list(source.texts()) for source in open_sources(spec)}


# ---------------------------------------------------------------------------------------------------------------
# Hashing and the index


def _batches(items: Iterable, size: int) -> Iterator[list]:
  iterator = iter(items)
  while batch := list(itertools.islice(iterator, size)):
    yield batch


@dataclasses.dataclass(frozen=True)
class _Grams:
  """The n-grams of a batch of texts that lie within one text."""
  lengths: np.ndarray  # int64 [texts]: words per text
  hashes: np.ndarray  # uint64 [grams]
  text: np.ndarray  # int64 [grams]: which text
  start: np.ndarray  # int64 [grams]: position of its first word within its text


def _grams(texts: Sequence[str], n: int) -> _Grams:
  words = list(map(normalise, texts))
  lengths = np.fromiter(map(len, words), np.int64, len(words))
  flat = list(itertools.chain.from_iterable(words))
  word_hashes = np.fromiter(map(hash, flat), np.int64, len(flat)).view(np.uint64)
  count = len(flat) - n + 1
  if count <= 0:
    empty = np.zeros(0, np.int64)
    return _Grams(lengths, np.zeros(0, np.uint64), empty, empty)
  hashes = word_hashes[:count].copy()
  for j in range(1, n):
    hashes *= _MULTIPLIER
    hashes += word_hashes[j:j + count]
  ends = np.cumsum(lengths)
  text_of_word = np.repeat(np.arange(len(texts)), lengths)
  first = np.flatnonzero(np.arange(count) + n <= ends[text_of_word[:count]])  # the n-gram ends within its text
  text = text_of_word[first]
  return _Grams(lengths, hashes[first], text, first - (ends - lengths)[text])


@dataclasses.dataclass(frozen=True)
class Matches:
  """The eval n-grams found in a batch of texts, one entry per occurrence, in text order."""
  lengths: np.ndarray  # int64 [texts]: normalised words per text (a text of fewer than n words cannot match)
  text: np.ndarray  # int64 [matches]: which text of the batch
  start: np.ndarray  # int64 [matches]: the n-gram's first word: normalise(texts[text])[start:start + n]
  key: np.ndarray  # int64 [matches]: which distinct eval n-gram (an index into NgramIndex.keys)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
  """Concatenation of arange(start, stop) for each pair, vectorised."""
  counts = stops - starts
  offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
  return offsets + np.arange(int(counts.sum()))


class NgramIndex:
  """The n-grams of named eval sets: look texts up against it (`contaminated`, `which_sets`, `find`), and tell which
  eval examples a set of matched n-grams covers (`eval_hits`). Build it with `NgramIndex.build`."""

  def __init__(self, n: int, set_sizes: Mapping[str, int], too_short: Mapping[str, int], hashes: np.ndarray,
               owners: np.ndarray):
    """From every (n-gram hash, global eval example id) pair; ids run through the sets in order."""
    self.n = n
    self.set_names = tuple(set_sizes)
    self.set_sizes = dict(set_sizes)  # examples per eval set
    self.too_short = dict(too_short)  # examples per eval set with fewer than n words (no n-gram, never matched)
    self._set_of_example = np.repeat(np.arange(len(set_sizes), dtype=np.int32),
                                     np.fromiter(set_sizes.values(), np.int64, len(set_sizes)))
    order = np.lexsort((owners, hashes))
    hashes, owners = hashes[order], owners[order]
    keep = np.ones(len(hashes), bool)
    keep[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])  # an n-gram repeated within one example
    hashes, owners = hashes[keep], owners[keep]
    new_key = np.ones(len(hashes), bool)
    new_key[1:] = hashes[1:] != hashes[:-1]
    self.keys = hashes[new_key]  # uint64 [K]: the distinct eval n-gram hashes, sorted
    self._owner_starts = np.append(np.flatnonzero(new_key), len(hashes))  # key k's examples: owners[starts[k]:..]
    self._owners = owners  # global eval example ids, grouped by key
    sets = self._set_of_example[owners]  # sorted within each key, since ids run through the sets in order
    new_set = new_key.copy()
    new_set[1:] |= sets[1:] != sets[:-1]
    self._sets = sets[new_set]  # the eval sets of each key, grouped by key
    self._set_starts = np.searchsorted(np.flatnonzero(new_set), self._owner_starts)  # key k's: _sets[s[k]:s[k+1]]

  @classmethod
  def build(cls, eval_sets: Mapping[str, Iterable[str]], n: int = 13, *, batch_size: int = _CHUNK) -> NgramIndex:
    """The index of every n-gram of every text of each named eval set (texts are read in batches)."""
    if n < 1:
      raise errors.UserError(f"n-gram length must be at least 1, got {n}")
    sizes, too_short, hashes, owners = {}, {}, [], []
    offset = 0
    for name, texts in eval_sets.items():
      sizes[name] = too_short[name] = 0
      for batch in _batches(texts, batch_size):
        grams = _grams(batch, n)
        hashes.append(grams.hashes)
        owners.append(grams.text + offset + sizes[name])
        sizes[name] += len(batch)
        too_short[name] += int((grams.lengths < n).sum())
      offset += sizes[name]
    return cls(n, sizes, too_short, np.concatenate(hashes or [np.zeros(0, np.uint64)]),
               np.concatenate(owners or [np.zeros(0, np.int64)]))

  @property
  def num_ngrams(self) -> int:
    """Distinct eval n-grams."""
    return len(self.keys)

  def find(self, texts: Sequence[str]) -> Matches:
    """Every occurrence of an eval n-gram in `texts` (n-grams never run from one text into the next)."""
    grams = _grams(texts, self.n)
    found = np.zeros(len(grams.hashes), bool)
    at = np.zeros(len(grams.hashes), np.int64)
    if len(self.keys):
      # Looking sorted queries up is ~10x faster than unsorted ones (the binary searches share cached paths).
      order = np.argsort(grams.hashes)
      queries = grams.hashes[order]
      position = np.minimum(np.searchsorted(self.keys, queries), len(self.keys) - 1)
      at[order] = position
      found[order] = self.keys[position] == queries
    return Matches(grams.lengths, grams.text[found], grams.start[found], at[found])

  def sets_matched(self, matches: Matches) -> np.ndarray:
    """bool [texts, eval sets] (columns in `set_names` order): whether each text shares an n-gram with each set."""
    out = np.zeros((len(matches.lengths), len(self.set_names)), bool)
    starts, stops = self._set_starts[matches.key], self._set_starts[matches.key + 1]
    out[np.repeat(matches.text, stops - starts), self._sets[_ranges(starts, stops)]] = True
    return out

  def overlaps(self, texts: Sequence[str]) -> np.ndarray:
    """bool [texts, eval sets]: `sets_matched(find(texts))`."""
    return self.sets_matched(self.find(texts))

  def contaminated(self, texts: Sequence[str]) -> np.ndarray:
    """bool [texts]: whether each text shares an n-gram with any eval set."""
    out = np.zeros(len(texts), bool)
    out[self.find(texts).text] = True
    return out

  def which_sets(self, texts: Sequence[str]) -> list[frozenset[str]]:
    """For each text, the eval sets it shares an n-gram with (empty for a clean text)."""
    names = np.array(self.set_names, dtype=object)
    return [frozenset(names[row]) for row in self.overlaps(texts)]

  def eval_hits(self, key_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{eval set: bool per example}: whether any n-gram of the example is among `key_ids` (indices into `keys`,
    e.g. every `Matches.key` of the training data)."""
    hit_key = np.zeros(len(self.keys), bool)
    hit_key[key_ids] = True
    hit = np.zeros(len(self._set_of_example), bool)
    hit[self._owners[np.repeat(hit_key, np.diff(self._owner_starts))]] = True
    bounds = np.cumsum([0, *self.set_sizes.values()])
    return {name: hit[bounds[i]:bounds[i + 1]] for i, name in enumerate(self.set_names)}


# ---------------------------------------------------------------------------------------------------------------
# The report


def _unique_names(found: list[Source], flag: str) -> list[Source]:
  names = [s.name for s in found]
  twice = sorted({name for name in names if names.count(name) > 1})
  if twice:
    raise errors.UserError(f"--{flag}: {', '.join(twice)} given more than once")
  return found


def report(train_files: Sequence[str], eval_files: Sequence[str], n: int = 13, *,
           batch_size: int = _CHUNK) -> dict[str, Any]:
  """The decontamination report (the shape is in `main`'s docstring) of training files against eval files."""
  began = time.perf_counter()
  if n < 1:
    raise errors.UserError(f"--ngram must be at least 1, got {n}")
  if not train_files or not eval_files:
    raise errors.UserError("give at least one training file (--train) and one eval file (--eval)")
  trains = _unique_names([s for spec in train_files for s in open_sources(spec)], "train")
  evals = _unique_names([s for spec in eval_files for s in open_sources(spec)], "eval")
  index = NgramIndex.build({s.name: s.texts() for s in evals}, n, batch_size=batch_size)
  out: dict[str, Any] = {"ngram": n, "normalisation": NORMALISATION, "train": {}, "eval": {}}
  hit_by_source = {}
  for source in trains:
    examples = contaminated = too_short = 0
    by_eval = np.zeros(len(index.set_names), np.int64)
    hit_keys = np.zeros(len(index.keys), bool)
    found = []
    for batch in _batches(source.examples(), batch_size):
      texts = [text for _, text in batch]
      matches = index.find(texts)
      sets = index.sets_matched(matches)
      hit_keys[matches.key] = True
      rows = np.flatnonzero(sets.any(axis=1))
      for i in rows[:_MAX_FOUND - len(found)]:
        start = matches.start[np.searchsorted(matches.text, i)]
        found.append({"index": examples + int(i), "where": batch[i][0],
                      "eval": [index.set_names[s] for s in np.flatnonzero(sets[i])],
                      "ngram": " ".join(normalise(texts[i])[start:start + n])})
      examples += len(batch)
      contaminated += len(rows)
      too_short += int((matches.lengths < n).sum())
      by_eval += sets.sum(axis=0)
    hit_by_source[source.name] = index.eval_hits(np.flatnonzero(hit_keys))
    out["train"][source.name] = {"examples": examples, "contaminated": contaminated, "too_short": too_short,
                                 "by_eval": dict(zip(index.set_names, map(int, by_eval))), "examples_found": found}
  for name in index.set_names:
    hit = np.zeros(index.set_sizes[name], bool)
    for hits in hit_by_source.values():
      hit |= hits[name]
    out["eval"][name] = {"examples": index.set_sizes[name], "contaminated": int(hit.sum()),
                         "too_short": index.too_short[name],
                         "by_train": {source: int(hits[name].sum()) for source, hits in hit_by_source.items()}}
  out["seconds"] = round(time.perf_counter() - began, 2)
  return out


def _percent(part: int, whole: int) -> str:
  return f"{part:,} ({100 * part / whole:.2f}%)" if whole else "0"


def table(result: Mapping[str, Any]) -> str:
  """The report as a short human-readable table."""
  width = max([24, *(len(name) for side in ("train", "eval") for name in result[side])])
  lines = [f"{result['ngram']}-gram overlap ({result['seconds']} s)", "",
           f"{'training source':<{width}}  {'examples':>11}  {'contaminated':>20}  too short"]
  lines += [f"{name:<{width}}  {r['examples']:>11,}  {_percent(r['contaminated'], r['examples']):>20}  "
            f"{r['too_short']:,}" for name, r in result["train"].items()]
  lines += ["", f"{'eval set':<{width}}  {'examples':>11}  {'hit by training':>20}  too short (never hit)"]
  lines += [f"{name:<{width}}  {r['examples']:>11,}  {_percent(r['contaminated'], r['examples']):>20}  "
            f"{r['too_short']:,}" for name, r in result["eval"].items()]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  """Prints the table and writes --out, the report as JSON:

    {"ngram": 13, "normalisation": "...", "seconds": 12.3,
     "train": {SOURCE: {"examples": N, "contaminated": K, "too_short": S, "by_eval": {EVAL_SET: K},
                        "examples_found": [up to 20 {"index": i, "where": "file:line", "eval": [EVAL_SET...],
                                                     "ngram": "the first shared n-gram, normalised"}]}},
     "eval": {EVAL_SET: {"examples": N, "contaminated": K, "too_short": S, "by_train": {SOURCE: K}}}}

  "contaminated" counts a training source's examples that share an n-gram with any eval set, and an eval set's
  examples that share one with any training source; "index" counts a source's examples (instances) from 0.
  """
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.out and not os.path.isdir(os.path.dirname(os.path.abspath(f.out))):
    raise errors.UserError(f"--out: the directory of {f.out} does not exist")
  result = report(f.train, f.eval, f.ngram)
  print(table(result))
  if f.out:
    errors.write_atomically(f.out, json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"\nreport written to {f.out}")


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module defines none)."""
  flags.DEFINE_list("train", None, "Training files, comma-separated: .jsonl, .json (records or a SuperNI task "
                    "file), .parquet, .arrow, a datasets save_to_disk directory, or DIR:SPLIT.", required=True)
  flags.DEFINE_list("eval", None, "Eval files, comma-separated, in the same formats.", required=True)
  flags.DEFINE_integer("ngram", 13, "Words per n-gram.", lower_bound=1)
  flags.DEFINE_string("out", None, "Write the report here as JSON (optional).")
  errors.local_path_flags("out")


if __name__ == "__main__":
  define_flags()
  errors.run(main)
