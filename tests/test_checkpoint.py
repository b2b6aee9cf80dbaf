"""Checkpoint integrity, fault by fault: every kind of file of a step truncated, deleted or bit-flipped.

Each case corrupts the newest of two saved steps, then checks that the trainer's Checkpointer restores the
step before (the bad one moved aside, never deleted), that the retrained step is saved again, and that
readers (`good_step`, `workdir.resolve_step`) skip the bad step or refuse it by name.
"""
import pathlib
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import workdir as workdir_lib

# One representative of every kind of file orbax and the trainer write into a step directory.
KINDS = {
    "array data": lambda d: max((d / "state").rglob("d/*"), key=lambda p: p.stat().st_size),
    "ocdbt manifest": lambda d: d / "state" / "manifest.ocdbt",
    "tree metadata": lambda d: d / "state" / "_METADATA",
    "sharding": lambda d: d / "state" / "_sharding",
    "array metadata": lambda d: next((d / "state" / "array_metadatas").iterdir()),
    "data iterator": lambda d: next((d / "data").glob("process_*.json")),
    "step metadata": lambda d: d / "_CHECKPOINT_METADATA",
    "commit marker": lambda d: d / "commit_success.txt",
    "checksum manifest": lambda d: d / ckpt_lib.MANIFEST,
}
FAULTS = ("truncate", "delete", "bitflip")


def _state(scale: float):
  return {"params": {"w": jnp.full((64, 32), scale), "b": jnp.arange(32.0) * scale}, "step": jnp.int32(scale)}


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0.0))


def _iterator(skip: int):
  it = iter(grain.MapDataset.range(1000).to_iter_dataset())
  for _ in range(skip):
    next(it)
  return it


def inject(file: pathlib.Path, fault: str) -> None:
  if fault == "delete":
    file.unlink()
  elif fault == "truncate":
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
  else:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint directory with good steps 1 and 2 (state scaled by the step; iterator advanced 10 * step)."""
  root = tmp_path_factory.mktemp("saved") / "checkpoints"
  ckpt = ckpt_lib.Checkpointer(root, every=1, keep=5)
  for step in (1, 2):
    assert ckpt.save(step, _state(float(step)), _iterator(10 * step))
  ckpt.close()
  return root


def test_a_saved_step_carries_a_manifest_that_verifies(saved):
  for step in (1, 2):
    assert (saved / str(step) / ckpt_lib.MANIFEST).is_file()
    assert ckpt_lib.verify(saved / str(step)) is None
  assert ckpt_lib.good_step(saved) == 2


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_corrupt_newest_step_is_set_aside_and_the_one_before_restored(saved, tmp_path, kind, fault):
  if (kind, fault) == ("checksum manifest", "delete"):
    pytest.skip("a step without a manifest cannot be checked: see test_a_step_without_a_manifest_is_adopted")
  root = tmp_path / "checkpoints"
  shutil.copytree(saved, root)
  inject(KINDS[kind](root / "2"), fault)
  problem = ckpt_lib.verify(root / "2")
  assert problem is not None and problem != ckpt_lib.NO_MANIFEST, (kind, fault)

  # Readers skip the bad step (and leave it where it is), or refuse it by name when asked for it.
  assert ckpt_lib.good_step(root) == 1
  assert (root / "2").is_dir()
  with pytest.raises(ckpt_lib.CheckpointError, match="checkpoint step 2 .* is corrupt"):
    ckpt_lib.good_step(root, 2)

  # The trainer restores step 1 (state and iterator) and moves step 2 aside.
  ckpt = ckpt_lib.Checkpointer(root, every=1, keep=5)
  it = _iterator(0)
  state, step = ckpt.restore_latest(_abstract(), it)
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"], np.full((64, 32), 1.0))
  assert next(it) == 10  # the iterator continues where step 1 left it
  assert not (root / "2").exists()
  aside = list((tmp_path / "checkpoints_corrupt").iterdir())
  assert [p.name.split("-")[0] for p in aside] == ["2"]

  # Training on, the retrained step 2 is saved (not skipped because a step 2 once existed) and is good.
  assert ckpt.save(2, _state(20.0), it)
  ckpt.close()
  assert ckpt_lib.verify(root / "2") is None and ckpt_lib.good_step(root) == 2
  state, step = ckpt_lib.Checkpointer(root, every=1).restore_latest(_abstract(), None)
  assert step == 2 and float(state["params"]["w"][0, 0]) == 20.0


def test_a_step_without_a_manifest_is_adopted_if_orbax_reads_it(saved, tmp_path, capsys):
  """Saved before checksums existed, or killed between orbax's save and the manifest: restored, then given one."""
  root = tmp_path / "checkpoints"
  shutil.copytree(saved, root)
  (root / "2" / ckpt_lib.MANIFEST).unlink()
  assert ckpt_lib.good_step(root) == 2 and "has no checksums.json" in capsys.readouterr().out
  state, step = ckpt_lib.Checkpointer(root, every=1).restore_latest(_abstract(), None)
  assert step == 2 and float(state["params"]["w"][0, 0]) == 2.0
  assert ckpt_lib.verify(root / "2") is None  # it has a manifest now
  # Without a manifest and unreadable by orbax: set aside like any bad step.
  (root / "2" / ckpt_lib.MANIFEST).unlink()
  (root / "2" / "state" / "_METADATA").write_bytes(b"{not json")
  state, step = ckpt_lib.Checkpointer(root, every=1).restore_latest(_abstract(), None)
  assert step == 1 and not (root / "2").exists()


def test_old_steps_are_pruned_only_after_the_new_manifest(tmp_path):
  root = tmp_path / "checkpoints"
  ckpt = ckpt_lib.Checkpointer(root, every=1, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(float(step)), None)
    assert all(ckpt_lib.verify(root / str(s)) is None for s in ckpt.steps())
  ckpt.close()
  assert ckpt_lib.numeric_steps(root) == [2, 3]


def test_when_every_step_is_bad_the_trainer_starts_over_and_nothing_is_deleted(saved, tmp_path):
  root = tmp_path / "checkpoints"
  shutil.copytree(saved, root)
  for step in (1, 2):
    inject(KINDS["array data"](root / str(step)), "bitflip")
  assert ckpt_lib.good_step(root) is None
  assert ckpt_lib.Checkpointer(root, every=1).restore_latest(_abstract(), None) is None
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints_corrupt").iterdir()) == ["1", "2"]


def test_a_good_step_that_does_not_fit_the_state_is_an_error_not_a_restart(saved, tmp_path):
  root = tmp_path / "checkpoints"
  shutil.copytree(saved, root)
  other = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7,) + x.shape, x.dtype, sharding=x.sharding), _abstract())
  with pytest.raises(ckpt_lib.CheckpointError, match="passes its checksums but could not be restored"):
    ckpt_lib.Checkpointer(root, every=1).restore_latest(other, None)
  assert ckpt_lib.verify(root / "2") is None  # left in place: it is not corrupt


def test_workdir_readers_use_only_good_steps(saved, tmp_path):
  shutil.copytree(saved, tmp_path / workdir_lib.CHECKPOINTS)
  inject(KINDS["array data"](tmp_path / workdir_lib.CHECKPOINTS / "2"), "bitflip")
  assert workdir_lib.resolve_step(tmp_path, None) == 1
  with pytest.raises(workdir_lib.WorkdirError, match="step 2 .* is corrupt: .*SHA-256 mismatch"):
    workdir_lib.resolve_step(tmp_path, 2)
  assert workdir_lib.resolve_step(tmp_path, 1) == 1
