"""What checksum manifests cost: save time with and without the manifest, and verification time.

    python -m benchmarks.checkpoint_integrity --mib 512

Saves a tree of `--mib` MiB of float32 arrays with `instruct_jax.checkpoint.Checkpointer` (orbax,
synchronous, then the manifest), and times `write_manifest` alone and `verify` (SHA-256 over every file).
"""
from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from instruct_jax import checkpoint as ckpt_lib

_MIB = flags.DEFINE_integer("mib", 512, "Size of the saved state in MiB.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (the best is reported).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  n = _MIB.value * 2**20 // 4 // 8
  keys = jax.random.split(jax.random.key(0), 8)  # random values: orbax compresses constant arrays to nothing
  state = {f"w{i}": jax.random.normal(k, (n,), jnp.float32) for i, k in enumerate(keys)}
  jax.block_until_ready(state)
  saves, manifests, verifies = [], [], []
  for r in range(_REPEATS.value):
    with tempfile.TemporaryDirectory() as tmp:
      ckpt = ckpt_lib.Checkpointer(f"{tmp}/checkpoints", every=1)
      t0 = time.perf_counter()
      assert ckpt.save(1, state, None)  # orbax, then the manifest
      t1 = time.perf_counter()
      ckpt_lib.write_manifest(f"{tmp}/checkpoints/1")  # the manifest alone, again
      t2 = time.perf_counter()
      assert ckpt_lib.verify(f"{tmp}/checkpoints/1") is None
      t3 = time.perf_counter()
      ckpt.close()
      saves.append(t1 - t0 - (t2 - t1))
      manifests.append(t2 - t1)
      verifies.append(t3 - t2)
    print(f"repeat {r}: orbax save {saves[-1]:.2f} s, manifest {manifests[-1]:.2f} s, verify {verifies[-1]:.2f} s")
  mib = _MIB.value
  print(f"{mib} MiB: orbax save {min(saves):.2f} s; manifest +{min(manifests):.2f} s "
        f"({mib / min(manifests):.0f} MiB/s); verify {min(verifies):.2f} s ({mib / min(verifies):.0f} MiB/s)")


if __name__ == "__main__":
  app.run(main)
