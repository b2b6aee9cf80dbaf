"""Random-access example sources: TFDS (array_record via `tfds.data_source`), JSONL, JSON, instruction files.

Every source maps a split name to a random-access sequence of dict records (`load(split)`), so grain can
shuffle, shard and resume by index. Sources read lazily and cache what they read. SuperNI task files
live in `superni.py`, the built-in generated tasks in `builtin.py`.

Bad input reports where it is. In strict mode a malformed line (bad JSON, not an object, not UTF-8)
raises `DataError` naming the file and line; in lenient mode it is skipped and counted in
`source.stats`. Instruction records with an empty output are always skipped and counted. An empty file,
or an instruction file in which no record has an output, is an error in either mode.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from instruct_jax import errors


class DataError(errors.UserError, ValueError):
  """Bad input data; the message names the file, line and field where known."""


@dataclasses.dataclass
class ReadStats:
  """What a source skipped while reading, for reports."""
  records: int = 0
  bad_lines: int = 0
  empty_outputs: int = 0
  bad_records: int = 0  # chat records that are not a usable conversation (lenient mode)
  problems: list[str] = dataclasses.field(default_factory=list)

  def skip(self, what: str, message: str) -> None:
    setattr(self, what, getattr(self, what) + 1)
    if len(self.problems) < 20:
      self.problems.append(message)


class Source(Protocol):
  """A mapping from split name to random-access records."""

  def load(self, split: str) -> Sequence[dict[str, Any]]:
    ...

  @property
  def splits(self) -> tuple[str, ...]:
    ...


class MemorySource:
  """Records already in memory, one list per split (for programmatic data and small experiments)."""

  def __init__(self, splits: Mapping[str, Sequence[dict[str, Any]]]):
    self._splits = {k: list(v) for k, v in splits.items()}

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self._splits)

  def load(self, split: str) -> list[dict[str, Any]]:
    if split not in self._splits:
      raise DataError(f"in-memory source has splits {sorted(self._splits)}, not {split!r}")
    return self._splits[split]


def _split_file(files: Mapping[str, str], split: str, what: str) -> str:
  if split not in files:
    raise DataError(f"{what} has no split {split!r}; it has {sorted(files)}")
  return os.fspath(files[split])


def read_jsonl(path: str, *, strict: bool = True, stats: ReadStats | None = None) -> list[dict[str, Any]]:
  """Reads one JSON object per line; blank lines are ignored."""
  return [record for _, record in read_jsonl_numbered(path, strict=strict, stats=stats)]


def text_lines(path: str):
  """(1-based line number, text) of a file, each line decoded as UTF-8 on its own, so bytes that are not UTF-8
  come as a DataError naming the file and line (yielded in place of the text: raise it, or skip and count it)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        yield lineno, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield lineno, DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); re-encode the file as UTF-8")


def read_jsonl_numbered(path: str, *, strict: bool = True,
                        stats: ReadStats | None = None) -> list[tuple[int, dict[str, Any]]]:
  """Like `read_jsonl`, but each record comes with its 1-based line number (`iter_jsonl_numbered`, as a list)."""
  return list(iter_jsonl_numbered(path, strict=strict, stats=stats))


def iter_jsonl_numbered(path: str, *, strict: bool = True,
                        stats: ReadStats | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, record) of each JSONL line, read as they come (memory bounded by a line).

  A malformed line (bad JSON, not an object, not UTF-8) raises DataError naming file:line in strict mode,
  and is skipped and counted in lenient mode. A file without a single line of content is an error either way.
  """
  stats = stats if stats is not None else ReadStats()
  lines = 0
  for lineno, line in text_lines(path):
    if isinstance(line, DataError):
      message = str(line)
    elif not line.strip():
      continue
    else:
      message = None
      try:
        record = errors.loads_json(line)
      except json.JSONDecodeError as e:
        message = f"{path}:{lineno}: malformed JSON line: {e.msg} at column {e.colno}"
      else:
        if not isinstance(record, dict):
          message = f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
    lines += 1
    if message is not None:
      if strict:
        raise DataError(message) from None
      stats.skip("bad_lines", message)
      continue
    stats.records += 1
    yield lineno, record
  if not lines:
    raise DataError(f"{path}: the file is empty (no records)")


def read_json(path: str, *, records_key: str | None = None) -> list[dict[str, Any]]:
  """Reads a JSON file holding a list of objects, or an object whose `records_key` holds that list."""
  data = read_json_data(path)
  if records_key is not None:
    if not isinstance(data, dict) or records_key not in data:
      raise DataError(f"{path}: expected an object with field {records_key!r}")
    data = data[records_key]
  return json_records(data, path)


def json_records(data: Any, path: str) -> list[dict[str, Any]]:
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a list of records, got {type(data).__name__}")
  for i, record in enumerate(data):
    if not isinstance(record, dict):
      raise DataError(f"{path}: record {i} is a {type(record).__name__}, expected an object")
  return data


def read_text(path: str) -> str:
  """A whole file as UTF-8 text; a missing file or bytes that are not UTF-8 are DataErrors naming the file (and line)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8") from None


def read_json_data(path: str) -> Any:
  """A JSON file's parsed content; DataErrors name the file and line."""
  text = read_text(path)
  if not text.strip():
    raise DataError(f"{path}: the file is empty (no records)")
  try:
    return errors.loads_json(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def parse_records(path: str, parse, *, strict: bool, stats: ReadStats, error: type[Exception], what: str) -> list:
  """Each record of a JSONL (or JSON list) file through `parse(record, where)`, `where` naming file:line (or the
  record's index). A record `parse` refuses with `error` raises (strict) or is skipped and counted; a file with no
  usable record is an error naming it (`what`: the records it should hold, e.g. "conversation")."""
  if path.endswith(".jsonl"):
    located = [(f"{path}:{lineno}", r) for lineno, r in read_jsonl_numbered(path, strict=strict, stats=stats)]
  else:
    located = [(f"{path}: record {i}", r) for i, r in enumerate(read_json(path))]
    stats.records += len(located)
  out = []
  for where, record in located:
    try:
      out.append(parse(record, where))
    except error as e:
      if strict:
        raise
      stats.skip("bad_records", str(e))
  if not out:
    raise error(f"{path}: no {what} could be read (see the skipped records); nothing to train on")
  return out


class _FileSource:
  """One file per split, each read once (by `_read`) and kept."""
  kind = "file"

  def __init__(self, files: Mapping[str, str | os.PathLike]):
    self.files = {k: os.fspath(v) for k, v in files.items()}
    self._cache: dict[str, list[dict[str, Any]]] = {}

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.files)

  def load(self, split: str) -> list[dict[str, Any]]:
    if split not in self._cache:
      self._cache[split] = self._read(_split_file(self.files, split, f"{self.kind} source {self.files}"))
    return self._cache[split]

  def _read(self, path: str) -> list[dict[str, Any]]:
    raise NotImplementedError


class JsonlSource(_FileSource):
  """JSONL files, one per split: `JsonlSource({"train": "a.jsonl", "validation": "b.jsonl"})`."""
  kind = "JSONL"

  def __init__(self, files: Mapping[str, str | os.PathLike], *, strict: bool = True):
    super().__init__(files)
    self.strict = strict
    self.stats = ReadStats()

  def _read(self, path: str) -> list[dict[str, Any]]:
    return read_jsonl(path, strict=self.strict, stats=self.stats)


class JsonSource(_FileSource):
  """JSON files (a list of records, or an object holding one under `records_key`), one per split."""
  kind = "JSON"

  def __init__(self, files: Mapping[str, str | os.PathLike], *, records_key: str | None = None):
    super().__init__(files)
    self.records_key = records_key

  def _read(self, path: str) -> list[dict[str, Any]]:
    return read_json(path, records_key=self.records_key)


def _text_field(record: Mapping[str, Any], field: str, where: str, *, required: bool) -> str:
  value = record.get(field)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    if required:
      raise DataError(f"{where}: missing field {field!r}")
    return ""
  if not isinstance(value, str):
    raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
  return value


# Fields that hold an example's input in other layouts. Next to an instruction, such a field would be read by nobody:
# an error, never silently dropped (an instruction record's input is "input", or each of its "instances").
# ("text" is not one: Alpaca's published file has "text", the whole formatted example, beside its fields.)
INPUT_LIKE_FIELDS = ("inputs", "input_text", "context", "question", "query", "passage", "document", "prompt", "Input",
                     "Instances", "Instance", "Definition")


def check_instruction_fields(record: Mapping[str, Any], where: str) -> None:
  """An instruction record has its input in "input" or in Self-Instruct's "instances", not both, and no other field
  that looks like an input (`INPUT_LIKE_FIELDS`); DataError naming the field otherwise."""
  if "input" in record and "instances" in record:
    raise DataError(f"{where}: both 'input' and 'instances'; a Self-Instruct record gives each instance's input in "
                    "'instances' ([{input, output}]), an Alpaca record one 'input'")
  for field in INPUT_LIKE_FIELDS:
    if field in record:
      raise DataError(f"{where}: field {field!r} looks like an input, and instruction records read theirs from 'input' "
                      "(Alpaca) or 'instances' (Self-Instruct); rename it to 'input', or drop it")


def expand_instances(record: Mapping[str, Any], where: str, *, output_required: bool = False
                     ) -> list[tuple[str, dict[str, Any]]]:
  """Self-Instruct's `{instruction, instances: [{input, output}], ...}` as one record per instance, each with the
  record's other fields, its "input", its "output" (when the instance has one) and "instance" (its position);
  `(where, record)` pairs, `where` naming the instance. A record without "instances" is returned as it is. Checked:
  `check_instruction_fields`, instances a non-empty list of objects with string fields."""
  check_instruction_fields(record, where)
  if "instances" not in record:
    return [(where, dict(record))]
  instances = record["instances"]
  if not isinstance(instances, list) or not instances:
    raise DataError(f"{where}: field 'instances' must be a non-empty list of {{input, output}} objects")
  base = {k: v for k, v in record.items() if k != "instances"}
  out = []
  for j, instance in enumerate(instances):
    at = f"{where} instance {j}"
    if not isinstance(instance, dict):
      raise DataError(f"{at}: expected an object {{input, output}}, got {type(instance).__name__}")
    unknown = sorted(set(instance) - {"input", "output"})
    if unknown:
      raise DataError(f"{at}: unknown field(s) {unknown}; an instance holds 'input' and 'output'")
    expanded = {**base, "input": _text_field(instance, "input", at, required=False), "instance": j}
    if "output" in instance or output_required:
      expanded["output"] = _text_field(instance, "output", at, required=True)
    out.append((at, expanded))
  return out


def is_superni_task(data: Any) -> bool:
  """Whether parsed JSON is a SuperNI task file (an object with "Definition" and "Instances")."""
  return isinstance(data, dict) and "Definition" in data and "Instances" in data


def superni_records(data: Mapping[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
  """A SuperNI task file's instances as instruction records, one per instance: the task's Definition as the
  instruction, the instance's input, its first reference as "output" and all of them as "references", its "id"."""
  definition = data["Definition"]
  if isinstance(definition, list) and all(isinstance(x, str) for x in definition):
    definition = "\n".join(definition)
  if not isinstance(definition, str):
    raise DataError(f"{path}: field 'Definition' must be a string or a list of strings")
  instances = data["Instances"]
  if not isinstance(instances, list):
    raise DataError(f"{path}: field 'Instances' must be a list")
  out = []
  for j, instance in enumerate(instances):
    at = f"{path}: Instances[{j}]"
    if not isinstance(instance, dict):
      raise DataError(f"{at}: expected an object {{id, input, output}}")
    references = instance.get("output")
    if isinstance(references, str):
      references = [references]
    if not isinstance(references, list) or not references or not all(isinstance(r, str) for r in references):
      raise DataError(f"{at}: field 'output' must be a non-empty list of strings")
    out.append((at, {"instruction": definition, "input": _text_field(instance, "input", at, required=True),
                     "output": references[0], "references": list(references),
                     **({"id": instance["id"]} if isinstance(instance.get("id"), str) else {})}))
  return out


def instruction_records(path: str, *, strict: bool = True, stats: ReadStats | None = None,
                        output_required: bool = True) -> list[tuple[str, dict[str, Any]]]:
  """Every example of an instruction file as `(where, record)`, exactly one per published example: Alpaca records
  as they are, Self-Instruct records one per instance (`expand_instances`), a SuperNI task file (`.json`) one per
  instance (`superni_records`); JSONL or a JSON list. A record that is not one of these is a DataError naming its
  file, line (or record, or instance) and field."""
  if path.endswith(".jsonl"):
    located = [(f"{path}:{lineno}", r) for lineno, r in read_jsonl_numbered(path, strict=strict, stats=stats)]
  else:
    data = read_json_data(path)
    if is_superni_task(data):
      return superni_records(data, path)
    located = [(f"{path}: record {i}", r) for i, r in enumerate(json_records(data, path))]
  out = []
  for where, record in located:
    out += expand_instances(record, where, output_required=output_required)
  return out


def normalise_instruction_record(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
  """Alpaca `{instruction, input, output[, system]}` or Self-Instruct seed `{instruction, instances}`.

  Returns one `{instruction, input, output, system}` record per instance.
  """
  out = []
  for at, r in expand_instances(record, where, output_required=True):
    out.append({"instruction": _text_field(r, "instruction", at, required=True),
                "input": _text_field(r, "input", at, required=False),
                "output": _text_field(r, "output", at, required=True),
                "system": _text_field(r, "system", at, required=False)})
  return out


class InstructionSource(_FileSource):
  """Alpaca / Self-Instruct records from JSON or JSONL files, one file per split.

  Missing or non-string fields raise `DataError` naming file, line (or record) and field; records
  whose output is empty are skipped and counted in `stats.empty_outputs`.
  """

  kind = "instruction"

  def __init__(self, files: Mapping[str, str | os.PathLike], *, strict: bool = True):
    super().__init__(files)
    self.strict = strict
    self.stats = ReadStats()

  def _read(self, path: str) -> list[dict[str, str]]:
    out, empty = [], []
    for loc, record in instruction_records(path, strict=self.strict, stats=self.stats):
      for r in normalise_instruction_record(record, loc):
        if not r["output"].strip():
          self.stats.skip("empty_outputs", f"{loc}: empty output")
          empty.append(loc)
          continue
        out.append(r)
    if not out:
      detail = (f"every record's output is empty ({len(empty)}, the first at {empty[0]})" if empty else
                "no record could be read (see the skipped lines)")
      raise DataError(f"{path}: {detail}; nothing to train or evaluate on")
    return out


def _decode(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
    return [_decode(v) for v in value]
  return value


class _DecodedView(Sequence):
  """Random access into a TFDS data source, with bytes decoded to str."""

  def __init__(self, data_source):
    self._ds = data_source

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if i >= len(self):  # the Sequence protocol (iteration stops here); data sources raise ValueError
      raise IndexError(f"record {i} of {len(self)}")
    return _decode(self._ds[i])


class TfdsSource:
  """A TFDS dataset read through `tfds.data_source` (array_record; no TensorFlow needed).

  `split_map` renames splits (e.g. {"validation": "validation_matched"}); the dataset must already be
  prepared under `data_dir` in array_record format.
  """

  def __init__(self, name: str, *, data_dir: str | None = None, split_map: Mapping[str, str] | None = None):
    self.name = name
    self.data_dir = data_dir
    self.split_map = dict(split_map or {})
    self._cache: dict[str, Sequence[dict[str, Any]]] = {}
    self._info = None

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.split_map) or ("train", "validation", "test")

  def load(self, split: str) -> Sequence[dict[str, Any]]:
    if split not in self._cache:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import; only when used)
      tfds_split = self.split_map.get(split, split)
      try:
        ds = tfds.data_source(self.name, split=tfds_split, data_dir=self.data_dir, download=False)  # never fetch
      except Exception as e:  # TFDS raises several types for "not prepared" / "no such split".
        raise DataError(f"TFDS dataset {self.name!r} split {tfds_split!r} is not readable from data_dir "
                        f"{self.data_dir!r} (prepare it in array_record format first): {str(e).splitlines()[0]}") from e
      self._info = ds.dataset_info
      self._cache[split] = _DecodedView(ds)
    return self._cache[split]

  def label_names(self, feature: str = "label") -> list[str]:
    """Class names of a ClassLabel feature (needs a split loaded first)."""
    if self._info is None:
      self.load(next(iter(self.splits)))
    return list(self._info.features[feature].names)
