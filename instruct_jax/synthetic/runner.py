"""The run directory shared by every synthetic method: settings, output, cache, counts, report.

Layout of `--out`:

    <method>.jsonl         accepted records, append-only, one flushed line each
    cache/requests.jsonl   the request cache (see cache.py)
    settings.json          the settings of the first run; later runs must match (except the target N)
    .lock                  held (flock) while a run is writing, so two runs cannot share a --out
    report.json            kept / filtered counts by stage and reason, rewritten at the end of a run

How resume works. A method is a deterministic function of its settings and of the model's answers:
every random choice is seeded from (seed, position) and every batch is processed in order. A
restarted run therefore replays the same requests, gets the answers from the cache, reaches the same
decisions and produces the same records; `emit` skips records already in the output (checking that
they are identical, so a changed model or prompt cannot silently mix into an old run) and appends
the rest. A larger target N replays the first N and carries on.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
from collections.abc import Mapping
from typing import Any

import tqdm
from absl import logging

from instruct_jax.lm.backends import Backend
from instruct_jax.synthetic.cache import CachedBackend, RequestCache
from instruct_jax.synthetic.records import AppendOnlyJsonl, validate_record


class ResumeError(ValueError):
  """The output directory holds a run that this run cannot continue."""


class Tally:
  """Counts by (stage, reason); "kept" is a reason like any other."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  def add(self, stage: str, reason: str, n: int = 1) -> None:
    if n:
      self.counts[(stage, reason)] += n

  def get(self, stage: str, reason: str) -> int:
    return self.counts[(stage, reason)]

  def as_dict(self) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (stage, reason), n in sorted(self.counts.items()):
      out.setdefault(stage, {})[reason] = n
    return out

  def format(self) -> str:
    lines = []
    for stage, reasons in self.as_dict().items():
      kept = reasons.get("kept")
      rest = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])
                       if r != "kept")
      head = f"  {stage}: kept {kept}" if kept is not None else f"  {stage}:"
      lines.append(head + (f"; {rest}" if rest else ""))
    return "\n".join(lines)


class RunDir:
  """One method's output directory; see the module docstring."""

  def __init__(self, out_dir: str, method: str, settings: Mapping[str, Any],
               growable: tuple[str, ...] = ("num_instructions",)):
    if not out_dir:
      raise ValueError("an output directory is required (--out)")
    self.out_dir = out_dir
    self.method = method
    os.makedirs(out_dir, exist_ok=True)
    self._lock = open(os.path.join(out_dir, ".lock"), "w")  # pylint: disable=consider-using-with
    try:  # released by the kernel when the process dies, SIGKILL included
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._lock.close()
      raise ResumeError(f"another run is writing to {out_dir}") from None
    try:
      self._check_settings(json.loads(json.dumps(dict(settings))), growable)
      self.output = AppendOnlyJsonl(os.path.join(out_dir, f"{method}.jsonl"), key_field="id")
      self.cache = RequestCache(os.path.join(out_dir, "cache", "requests.jsonl"))
    except BaseException:
      self._lock.close()
      raise
    self.new_records = 0
    self.replayed_records = 0
    if self.output.repaired_bytes:
      logging.warning("%s: cut a torn last line (%d bytes) left by an interrupted run",
                      self.output.path, self.output.repaired_bytes)

  def _check_settings(self, settings: dict[str, Any], growable: tuple[str, ...]) -> None:
    path = os.path.join(self.out_dir, "settings.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
      diffs = [f"{k}: was {old.get(k)!r}, now {settings.get(k)!r}"
               for k in sorted(set(old) | set(settings))
               if k not in growable and old.get(k) != settings.get(k)]
      if diffs:
        raise ResumeError(f"{self.out_dir} holds a run with other settings ({'; '.join(diffs)}); "
                          "use a new --out, or the same settings to continue that run")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(settings, f, indent=2, sort_keys=True)
    os.replace(tmp, path)

  def cached(self, backend: Backend) -> CachedBackend:
    return CachedBackend(backend, self.cache)

  def emit(self, record: dict[str, Any]) -> bool:
    """Appends `record` unless the output already has it; returns whether it was new."""
    validate_record(record, f"record {record.get('id')!r}")
    plain = json.loads(json.dumps(record))
    old = self.output.get(record["id"])
    if old is not None:
      if old != plain:
        raise ResumeError(f"{self.output.path}: record {record['id']!r} differs from the one this "
                          "run produced; the cache or settings changed since it was written. "
                          "Use a new --out.")
      self.replayed_records += 1
      return False
    self.output.append(plain)
    self.new_records += 1
    return True

  def finish(self, tally: Tally, **extra: Any) -> dict[str, Any]:
    """Writes report.json, logs the kept/filtered table and closes the files."""
    report = {"method": self.method, "output": self.output.path,
              "records_total": len(self.output.entries), "records_new": self.new_records,
              "records_replayed": self.replayed_records, "cache_hits": self.cache.hits,
              "cache_misses": self.cache.misses, "counts": tally.as_dict(), **extra}
    path = os.path.join(self.out_dir, "report.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    logging.info("%s: %d records in %s (%d new this run); requests: %d cached, %d sent\n%s",
                 self.method, report["records_total"], self.output.path, self.new_records,
                 self.cache.hits, self.cache.misses, tally.format())
    self.close()
    return report

  def close(self) -> None:
    """Closes the files and releases the lock (safe to call twice)."""
    self.output.close()
    self.cache.close()
    self._lock.close()

  def __enter__(self) -> "RunDir":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm.tqdm:
  return tqdm.tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
