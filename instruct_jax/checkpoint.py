"""Orbax checkpoints of the train state together with the data iterator, and the resume logic.

A checkpoint step holds two items: `state` (params, optimizer state, step; restored straight into their
shardings) and `data` (the grain iterator's state, so a resumed run sees the same batches in the same
order). Orbax writes each step to a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint that looks valid. If the newest checkpoint cannot be read, the one
before it is used and the failure is reported.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`, restores the newest readable."""

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any | None, *, force: bool = False) -> bool:
    """Saves if `step` is due (or force); returns whether it saved."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()
    return True

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None) -> tuple[Any, int] | None:
    """(state, step) from the newest readable checkpoint (data_iterator restored in place), or None.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings, so arrays land on their devices.
    """
    for step in reversed(self.steps()):
      try:
        return self.restore(step, abstract_state, data_iterator), step
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
        logging.error("checkpoint %s/%d could not be read (%s: %s); trying the one before it",
                      self.directory, step, type(e).__name__, e)
        print(f"WARNING: checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: {e}); "
              "falling back to the previous checkpoint", flush=True)
    return None

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def close(self):
    self._manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None) -> Any:
  """Only the parameters of a checkpoint written by `Checkpointer` (for init_from, evaluation, decoding)."""
  directory = os.path.abspath(os.fspath(directory))
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint found in {directory}")
  abstract = {"params": abstract_params}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract), partial_restore=True)))
  manager.close()
  return restored["state"]["params"]


def _restore_args(abstract):
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
                      abstract)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings for `tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
