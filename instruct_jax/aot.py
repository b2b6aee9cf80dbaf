"""Ahead-of-time compilation of the two programs a run starts with: the sharded state init and the train step.

    python -m instruct_jax.train --config configs/recipes/flan_t5.py:large --dry_run --compile

compiles both for the config's mesh, model, optimizer and batch shapes on this machine's devices, before any
data is read or any weight exists, and reports how long lowering and compiling took and the memory XLA plans
to hold per device. It catches what only the compiler sees (a sharding that does not partition; a step whose
plan exceeds the memory of a device that reports its size, as GPUs and TPUs do and a CPU does not) without a
run, and it is how this project times compilation (benchmarks/compile_time.py).

The programs are the trainer's own: `step.jit_init_state` and `step.jit_train_step`, given the shapes the
objective's `batch_spec` describes, so a config that compiles here compiles in `train`. Compile times and memory
are those of this machine's backend: on a CPU stand-in for an accelerator mesh
(XLA_FLAGS=--xla_force_host_platform_device_count=N) they indicate, and do not equal, the accelerator's.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from instruct_jax import objectives, sharding, step
from instruct_jax.models import build

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program: its lowering and compile seconds, and XLA's per-device memory plan (bytes)."""
  name: str
  lower_s: float
  compile_s: float
  arguments: int
  outputs: int
  aliased: int  # output bytes that reuse donated argument buffers
  temporaries: int
  executable: Any = dataclasses.field(default=None, repr=False, compare=False)  # jax's Compiled: callable

  @property
  def peak(self) -> int:
    """Bytes held at once at most: what comes in, what goes out in buffers of its own, and the scratch."""
    return self.arguments + self.outputs - self.aliased + self.temporaries

  @classmethod
  def timed(cls, name: str, jitted, *args) -> Program:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    if m is None:  # a backend without memory statistics
      return cls(name, t1 - t0, t2 - t1, 0, 0, 0, 0, compiled)
    return cls(name, t1 - t0, t2 - t1, m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
               m.temp_size_in_bytes, compiled)

  def line(self) -> str:
    return (f"{self.name}: lowered in {self.lower_s:.1f} s, compiled in {self.compile_s:.1f} s; per device "
            f"arguments {self.arguments / GIB:.2f} GiB, outputs {self.outputs / GIB:.2f} GiB "
            f"({self.aliased / GIB:.2f} GiB of them in donated buffers), temporaries {self.temporaries / GIB:.2f} "
            f"GiB; at most {self.peak / GIB:.2f} GiB at once")


def abstract_batch(objective: objectives.Objective, model_kind: str, batch_size: int, inputs_length: int,
                   targets_length: int, batch_sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the train step receives (the objective's `batch_spec`), sharded."""
  spec = objective.batch_spec(model_kind, batch_size, inputs_length, targets_length)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for k, (shape, dtype) in spec.items()}


def compile_run(model: build.Model, tx: optax.GradientTransformation, objective: objectives.Objective,
                schedule: Callable, mesh: Mesh, rules, *, batch_size: int, inputs_length: int, targets_length: int,
                num_microbatches: int = 1, packed: bool = True, seed: int = 0) -> list[Program]:
  """Lowers and compiles the state init and the train step on `mesh` (concrete devices); nothing is allocated."""
  rng = jax.random.key(seed)
  abstract, state_sh = step.abstract_train_state(model, tx, mesh, rules, rng)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  batch = abstract_batch(objective, model.kind, batch_size, inputs_length, targets_length,
                         sharding.batch_sharding(mesh, rules))
  train_step = step.jit_train_step(model, tx, objective, schedule, mesh, rules, state_sh,
                                   num_microbatches=num_microbatches, packed=packed)
  with jax.set_mesh(mesh):
    init = Program.timed("state init", step.jit_init_state(model, tx, state_sh), rng)
    train = Program.timed("train step", train_step, state, batch, rng)
  return [init, train]


def device_summary(mesh: Mesh) -> str:
  kinds = sorted({d.device_kind for d in np.asarray(mesh.devices).flat})
  return f"{mesh.devices.size} {jax.default_backend()} device(s) ({', '.join(kinds)})"


def report(programs: Sequence[Program]) -> list[str]:
  """The dry run's lines: one per program, then the total a run waits before its first step."""
  total = sum(p.lower_s + p.compile_s for p in programs)
  return [p.line() for p in programs] + [f"total {total:.1f} s of lowering and compiling before the first step"]


def too_big(programs: Sequence[Program], mesh: Mesh) -> list[str]:
  """Problems for the programs whose plan exceeds the memory of a device of `mesh` (where it reports its size)."""
  stats = np.asarray(mesh.devices).flat[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    return []
  return [f"compile: the {p.name} plans {p.peak / GIB:.2f} GiB per device and a device has {limit / GIB:.2f} GiB; "
          "raise config.num_microbatches, set config.model.remat_policy, or shard over more devices"
          for p in programs if p.peak > limit]
