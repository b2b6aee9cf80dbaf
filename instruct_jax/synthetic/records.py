"""Synthetic records: the output schema, input readers and a crash-safe append-only JSONL file.

The schema is documented in the package docstring (`instruct_jax/synthetic/__init__.py`).
`AppendOnlyJsonl` is the one piece of durable state a synthetic run has (its output file and its
request cache are both built on it): every line is written with a single `write` and flushed, and a
half-written last line left by a process killed mid-write is cut off the next time the file is opened.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from instruct_jax.data import sources

PROVENANCE_KEYS = ("method", "round", "parent_id", "backend", "model", "prompt_version")
TEXT_FIELDS = ("instruction", "input", "output", "system")


def make_record(record_id: str, *, instruction: str, input: str, output: str,  # pylint: disable=redefined-builtin
                system: str = "", provenance: Mapping[str, Any]) -> dict[str, Any]:
  """Builds one output record; raises ValueError when a provenance key is missing."""
  missing = [k for k in PROVENANCE_KEYS if k not in provenance]
  if missing:
    raise ValueError(f"record {record_id!r}: provenance lacks {missing}")
  return {"id": record_id, "instruction": instruction, "input": input, "output": output,
          "system": system, "provenance": dict(provenance)}


def validate_record(record: Any, where: str) -> None:
  """Checks one record against the schema; the error names `where` (file:line) and the field."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if not isinstance(record.get("id"), str) or not record["id"]:
    raise ValueError(f"{where}: field 'id' must be a non-empty string")
  for field in TEXT_FIELDS:
    value = record.get(field, "" if field == "system" else None)
    if not isinstance(value, str):
      raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
  prov = record.get("provenance")
  if not isinstance(prov, dict):
    raise ValueError(f"{where}: field 'provenance' must be an object")
  for key in PROVENANCE_KEYS:
    if key not in prov:
      raise ValueError(f"{where}: provenance lacks {key!r}")


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (1-based line number, object) for each non-blank line; bad JSON names file and line."""
  for lineno, line in sources.text_lines(path):
    if isinstance(line, sources.DataError):  # bytes that are not UTF-8 (a ValueError naming file and line)
      raise line
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
      raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    yield lineno, obj


def text_field(obj: Mapping[str, Any], field: str, where: str, *, required: bool = True,
               default: str = "") -> str:
  """Returns obj[field] as a string, or raises ValueError naming `where` and the field."""
  if field not in obj or obj[field] is None:
    if required:
      raise ValueError(f"{where}: missing field {field!r}")
    return default
  value = obj[field]
  if not isinstance(value, str):
    raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
  return value


def instruction_triples(obj: Mapping[str, Any], where: str) -> list[tuple[str, str, str]]:
  """(instruction, input, output) from an Alpaca-style record or a 175-task-format seed task
  (one triple per instance)."""
  instruction = text_field(obj, "instruction", where)
  if "output" not in obj and isinstance(obj.get("instances"), list):
    return [(instruction, text_field(x, "input", f"{where} instance {j}", required=False),
             text_field(x, "output", f"{where} instance {j}"))
            for j, x in enumerate(obj["instances"]) if isinstance(x, dict)]
  return [(instruction, text_field(obj, "input", where, required=False),
           text_field(obj, "output", where))]


def _repair_tail(path: str) -> int:
  """Cuts a trailing partial line (no final newline) off `path`; returns the bytes removed."""
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return 0
    # Walk back to the last newline in blocks.
    pos, block = size, 1 << 16
    keep = 0
    while pos > 0:
      start = max(0, pos - block)
      f.seek(start)
      chunk = f.read(pos - start)
      nl = chunk.rfind(b"\n")
      if nl >= 0:
        keep = start + nl + 1
        break
      pos = start
    f.truncate(keep)
    return size - keep


class AppendOnlyJsonl:
  """A JSONL file of objects keyed by one field, appended to line by line and flushed.

  Opening repairs a torn last line and loads every complete line into `entries` (key -> object).
  `append` is thread-safe. Lines are flushed to the OS at once, which survives SIGKILL (not power
  loss: there is no fsync).
  """

  def __init__(self, path: str, key_field: str):
    self.path = path
    self.key_field = key_field
    self.entries: dict[str, dict[str, Any]] = {}
    self.repaired_bytes = 0
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
      self.repaired_bytes = _repair_tail(path)
      for lineno, obj in read_jsonl(path):
        key = obj.get(key_field)
        if not isinstance(key, str):
          raise ValueError(f"{path}:{lineno}: field {key_field!r} must be a string")
        self.entries.setdefault(key, obj)
    self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def __contains__(self, key: str) -> bool:
    return key in self.entries

  def get(self, key: str) -> dict[str, Any] | None:
    return self.entries.get(key)

  def append(self, obj: dict[str, Any]) -> None:
    line = json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"
    with self._lock:
      self._file.write(line)
      self._file.flush()
      self.entries.setdefault(obj[self.key_field], obj)

  def close(self) -> None:
    with self._lock:
      self._file.close()
