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
    """(state, step) from the newest readable checkpoint (data_iterator restored in place), or None if
    there is no checkpoint at all.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings, so arrays land on their devices.
    The model state is read first and the iterator only after it succeeds, so a failed step never moves
    the iterator. If checkpoints exist but none can be read (a corrupt directory, or a config whose
    shapes no longer match), this raises rather than silently starting again from step 0.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        state = self._restore_items(step, state=ocp.args.StandardRestore(abstract_state))["state"]
        if data_iterator is not None:
          self._restore_items(step, data=grain.checkpoint.CheckpointRestore(data_iterator))
        return state, step
      except Exception as e:  # noqa: BLE001 - an unreadable step falls back to the one before it
        failures.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
        logging.error("checkpoint %s/%d could not be read (%s)", self.directory, step, failures[-1])
        print(f"WARNING: checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
              f"{str(e)[:200]}); falling back to the previous checkpoint", flush=True)
    if failures:
      raise RuntimeError(f"no checkpoint in {self.directory} could be restored into this run's state; fix the "
                         "config (shapes must match) or move the directory away:\n  " + "\n  ".join(failures))
    return None

  def _restore_items(self, step: int, **items):
    return self._manager.restore(step, args=ocp.args.Composite(**items))

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
