"""Orbax checkpoints of the train state together with the data iterator, verified by checksums.

A checkpoint step holds two items: `state` (params, optimizer state, step; restored straight into their
shardings) and `data` (the grain iterator's state, so a resumed run sees the same batches in the same
order). Orbax writes each step to a temporary directory and renames it when complete; once it is, the
trainer writes `<step>/checksums.json`, the size and SHA-256 of every file of the step (and a digest of
that list). A step counts as good only when every file it lists is there with its size and hash:

* the trainer restores the newest good step; a step that fails (a truncated, missing or changed file, a
  manifest that does not match itself) is moved to `<checkpoints>_corrupt/` (never deleted), reported on
  one line, and the run resumes from the step before, so the retrained step is saved again;
* a step without a manifest (saved before checksums existed, or killed between orbax's save and the
  manifest) cannot be checked: the trainer restores it if orbax can read it and writes its manifest,
  else sets it aside; readers use it with a warning;
* readers (generate, evaluate, convert, init_from) skip a bad step with a one-line warning and never
  move anything (a trainer may be writing next to them);
* a good step that does not fit the run's state is an error, never a silent restart from step 0.

Hashing reads every byte of a step once at save and once per restore (figures in BENCHMARKS.md).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from instruct_jax import errors

MANIFEST = "checksums.json"
NO_MANIFEST = f"no {MANIFEST}"  # what `verify` says of a step without one (see the module docstring)
_CHUNK = 1 << 22


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint that cannot be used as asked (none good, or one that does not fit the run)."""


# ---------------------------------------------------------------- checksums

def _sha256(file: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(file, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _sha256_all(files: list[pathlib.Path]) -> list[str]:
  """SHA-256 of each file, on several threads (hashlib releases the GIL while it hashes)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(_sha256, files))


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp"))


def _digest(files: dict) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(step_dir: str | os.PathLike) -> None:
  """`step_dir/checksums.json`: size and SHA-256 of every file under the step (written whole, then renamed)."""
  step_dir = pathlib.Path(step_dir)
  paths = _files(step_dir)
  files = {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, "sha256": h}
           for p, h in zip(paths, _sha256_all(paths))}
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps({"version": 1, "files": files, "digest": _digest(files)}, indent=1))
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, step_dir / MANIFEST)


def verify(step_dir: str | os.PathLike, *, hashes: bool = True) -> str | None:
  """None if every file `step_dir/checksums.json` lists is there with its size (and hash), else what is wrong.

  hashes=False checks presence and sizes only (cheap; for listings).
  """
  step_dir = pathlib.Path(step_dir)
  manifest = step_dir / MANIFEST
  if not step_dir.is_dir():
    return "the step directory is gone"
  try:
    blob = json.loads(manifest.read_text())
    files = blob["files"]
    if blob.get("digest") != _digest(files):
      return f"{MANIFEST} does not match its own digest (the manifest was changed)"
  except FileNotFoundError:
    return NO_MANIFEST
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    return f"{MANIFEST} is unreadable ({type(e).__name__})"
  for name, expected in files.items():
    file = step_dir / name
    if not file.is_file():
      return f"{name} is missing"
    size = file.stat().st_size
    if size != expected["size"]:
      return f"{name} has {size} bytes, {expected['size']} when saved"
  if hashes:
    names = list(files)
    for name, digest in zip(names, _sha256_all([step_dir / n for n in names])):
      if digest != files[name]["sha256"]:
        return f"{name} changed since it was saved (SHA-256 mismatch)"
  return None


def numeric_steps(directory: str | os.PathLike) -> list[int]:
  """Step directories (names that are integers) under a checkpoint directory, oldest first."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def good_step(directory: str | os.PathLike, step: int | None = None, *, warn: bool = True,
              hashes: bool = True) -> int | None:
  """The newest step of `directory` that passes `verify` (or `step`, checked), for readers.

  Steps that fail are skipped with a one-line warning and left in place; a step without a manifest (saved
  before checksums existed, or cut short between orbax's save and its manifest) is used with a warning,
  since nothing can be checked. Returns None if no step is usable; raises CheckpointError if the requested
  `step` fails.
  """
  directory = pathlib.Path(directory)
  candidates = [step] if step is not None else list(reversed(numeric_steps(directory)))
  for s in candidates:
    problem = verify(directory / str(s), hashes=hashes)
    if problem == NO_MANIFEST:
      if warn:
        print(f"WARNING: checkpoint step {s} in {directory} has no {MANIFEST}; its contents cannot be checked",
              flush=True)
      return s
    if problem is None:
      return s
    if step is not None:
      raise CheckpointError(f"checkpoint step {step} in {directory} is corrupt: {problem}")
    if warn:
      print(f"WARNING: skipping checkpoint step {s} in {directory}: {problem}", flush=True)
  return None


def set_aside(step_dir: pathlib.Path, problem: str) -> pathlib.Path:
  """Moves a bad step to `<checkpoints>_corrupt/<step>-<time>` and says so on one line."""
  aside_root = step_dir.parent.with_name(step_dir.parent.name + "_corrupt")
  aside_root.mkdir(exist_ok=True)
  target = aside_root / f"{step_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}"
  n = 0
  while target.exists():
    n += 1
    target = aside_root / f"{step_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}.{n}"
  shutil.move(str(step_dir), str(target))
  print(f"WARNING: checkpoint step {step_dir.name} is corrupt ({problem}); moved to {target}", flush=True)
  return target


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _on_process_0(name: str, fn, *args) -> Any:
  """fn(*args) on process 0, its result (a small int) on every process; a failure there is raised on every
  process after the barrier, so no process waits forever for another."""
  result, failure = 0, None
  if jax.process_index() == 0:
    try:
      result = fn(*args)
    except Exception as e:  # noqa: BLE001 - re-raised below, on every process
      failure, result = e, -1
  if jax.process_count() > 1:
    result = int(multihost_utils.broadcast_one_to_all(np.int32(result)))
  if failure is not None:
    raise failure
  if result == -1:
    raise CheckpointError(f"{name} failed on process 0 (see its log)")
  return result


# ---------------------------------------------------------------- the trainer's checkpointer

_GOOD, _UNCHECKED, _BAD = 0, 1, 2


class Checkpointer:
  """Saves every `every` steps (and on demand) with a checksum manifest, keeps the newest `keep` good steps,
  restores the newest good step.

  orbax's own max_to_keep is off: it deletes old steps as a save finishes, before the new step's manifest is
  written, so a kill at that moment could leave no good step. Old steps are pruned here, after the manifest.
  Process 0 verifies and decides; the other processes follow its verdict.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self.every = every
    self.keep = keep
    self._verified: set[int] = set()  # steps saved or verified by this process: not hashed again
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def _step_dir(self, step: int) -> pathlib.Path:
    return pathlib.Path(self.directory) / str(step)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def newest_good(self) -> int | None:
    """The newest step that passes its checksums' sizes ("the last good checkpoint", for messages)."""
    return good_step(self.directory, warn=False, hashes=False)

  def _verdict(self, step: int) -> tuple[int, str]:
    """(_GOOD | _UNCHECKED | _BAD, problem) of a step, decided on process 0."""
    problem = [""]

    def check() -> int:
      problem[0] = verify(self._step_dir(step)) or ""
      return _GOOD if not problem[0] else _UNCHECKED if problem[0] == NO_MANIFEST else _BAD
    return _on_process_0("verifying a checkpoint", check), problem[0] or "see process 0's log"

  def save(self, step: int, state: Any, data_iterator: Any | None, *, force: bool = False) -> bool:
    """Saves if `step` is due (or force); returns whether it saved. A bad step of that number is set aside."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self._manager.all_steps():
      if step in self._verified:
        return False
      verdict, problem = self._verdict(step)
      if verdict != _BAD:
        return False
      self._set_aside(step, problem)
    self._check_space(step, state)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a full or read-only disk becomes one line; anything else is re-raised
      cause = errors.storage_cause(e)
      if cause is None:
        raise
      raise CheckpointError(f"{self._step_dir(step)}: the checkpoint could not be written ({cause}); "
                            f"{self._intact()}") from None
    _sync("checkpoint-saved")
    _on_process_0("writing checksums.json", lambda: write_manifest(self._step_dir(step)) or 0)
    self._verified.add(step)
    self._prune()
    return True

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save that cannot fit: the state's bytes (a lower bound of what orbax writes) over the free space."""
    needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointError(f"{self._step_dir(step)}: No space left on device (the checkpoint needs at least "
                            f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free); {self._intact()}")

  def _intact(self) -> str:
    good = self.newest_good()
    return ("the checkpoints already written are intact (newest: step %d)" % good if good is not None else
            "no checkpoint had been written yet") + "; free space, or restart with another --workdir"

  def _prune(self) -> None:
    """Deletes steps older than the newest `keep` (after the newest one's manifest exists)."""
    if self.keep <= 0:
      return
    for old in self.steps()[:-self.keep]:
      self._manager.delete(old)
      self._verified.discard(old)

  def _set_aside(self, step: int, problem: str) -> None:
    _on_process_0("moving a corrupt checkpoint aside", lambda: set_aside(self._step_dir(step), problem) and 0)
    self._manager.close()
    self._manager = self._open()  # forget the step

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None) -> tuple[Any, int] | None:
    """(state, step) from the newest good checkpoint (data_iterator restored in place), or None if there is none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings, so arrays land on their devices.
    Bad steps are set aside on the way. A step without a manifest is restored if orbax can read it, and then
    gets one (else it is set aside). A good step that cannot be restored raises CheckpointError: the config
    no longer describes the checkpoint, and starting again would be wrong.
    """
    for step in reversed(self.steps()):
      verdict, problem = self._verdict(step)
      if verdict == _BAD:
        self._set_aside(step, problem)
        continue
      try:
        state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        if data_iterator is not None:
          self._manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # noqa: BLE001 - an unchecked step that cannot be read is set aside; a good one is not
        detail = f"{type(e).__name__}: {errors.one_line(str(e))[:300]}"
        if verdict == _UNCHECKED:
          self._set_aside(step, f"no {MANIFEST}, and it cannot be read: {detail}")
          continue
        raise CheckpointError(f"checkpoint step {step} in {self.directory} passes its checksums but could not be "
                              f"restored into this run's state ({detail}); use the config it was saved with, or a "
                              "new workdir") from None
      if verdict == _UNCHECKED:
        _on_process_0("writing checksums.json", lambda: write_manifest(self._step_dir(step)) or 0)
        if jax.process_index() == 0:
          print(f"Checkpoint step {step} had no {MANIFEST} (saved before checksums, or just before a kill); it "
                "was read and now has one", flush=True)
      self._verified.add(step)
      return state["state"], step
    return None

  def close(self):
    self._manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int) -> Any:
  """Only the parameters of `step` (for init_from, evaluation, decoding); check the step first with
  `good_step` (readers go through `workdir.resolve_step`, which does)."""
  manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), item_names=("state", "data"))
  abstract = {"params": abstract_params}
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract), partial_restore=True)))
  finally:
    manager.close()
  return restored["state"]["params"]


def _restore_args(abstract):
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
                      abstract)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings for `tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
