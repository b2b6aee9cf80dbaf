"""Meshes, the logical-axis rules table, and shardings for parameters, optimizer state and batches.

Models name every parameter dimension and main activation with a logical axis (T5X's vocabulary):

    parameters   vocab, embed, mlp, heads, kv_heads, head_dim, relpos_buckets, layers (scanned stacks),
                 lora_rank (LoRA adapters' rank dimension)
    activations  act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab

`RULES` is the one table that maps logical axes to the mesh axes (data, fsdp, tensor); a config picks a
preset by name. `logical_to_mesh` refuses a rule set that maps two dimensions of one array to the same
mesh axis, naming the array.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from instruct_jax import errors

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

_BATCH = ("data", "fsdp")
_ACTIVATIONS = {"act_batch": _BATCH, "act_length": None, "act_embed": None, "act_heads": "tensor",
                "act_mlp": "tensor", "act_vocab": "tensor"}
_REPLICATED = {"vocab": None, "embed": None, "mlp": None, "heads": None, "kv_heads": None, "head_dim": None,
               "relpos_buckets": None, "layers": None, "lora_rank": None}

RULES: dict[str, dict[str, MeshAxes]] = {
    # Parameters replicated, batch split over every device.
    "data_parallel": {**_REPLICATED, **_ACTIVATIONS},
    # Parameters and optimizer state split along embed over fsdp (ZeRO-3 style); batch over data x fsdp.
    "fsdp": {**_REPLICATED, "embed": "fsdp", **_ACTIVATIONS},
    # FSDP plus Megatron-style tensor parallelism over heads, mlp and vocab.
    "fsdp_tensor": {**_REPLICATED, "embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor",
                    "vocab": "tensor", **_ACTIVATIONS},
}


class MeshError(errors.UserError, ValueError):
  """A mesh or sharding preset that cannot be built (unknown axis, or not this many devices)."""


def get_rules(preset: str) -> dict[str, MeshAxes]:
  if preset not in RULES:
    raise MeshError(f"config.sharding={preset!r}: unknown sharding preset; choose one of {sorted(RULES)}")
  return RULES[preset]


def mesh_sizes(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor) for `shape` on `num_devices` devices (one size may be -1)."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise MeshError(f"config.mesh: unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f"config.mesh: at most one mesh axis may be -1, got {dict(shape)}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"config.mesh {dict(shape)}: {num_devices} devices do not divide into it")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"this machine has {num_devices}")
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over (data, fsdp, tensor); one size may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  return Mesh(np.asarray(devices).reshape(mesh_sizes(shape, len(devices))), MESH_AXES)


def abstract_mesh(shape: Mapping[str, int], num_devices: int) -> jax.sharding.AbstractMesh:
  """A mesh of `num_devices` that need not exist (shapes and shardings only: `--dry_run` for a pod)."""
  return jax.sharding.AbstractMesh(mesh_sizes(shape, num_devices), MESH_AXES)


def logical_to_mesh(logical: Sequence[str | None] | None, rules: Rules, *, name: str = "array") -> P:
  """PartitionSpec for an array whose dimensions carry `logical` names; rejects a reused mesh axis."""
  if logical is None:
    return P()
  spec, used = [], {}
  for dim, axis in enumerate(logical):
    if axis is not None and axis not in rules:
      raise ValueError(f"{name}: logical axis {axis!r} has no rule; known: {sorted(rules)}")
    mesh_axes = None if axis is None else rules[axis]
    for m in (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ()):
      if m in used:
        raise ValueError(f"{name}: logical axes {logical[used[m]]!r} (dim {used[m]}) and {axis!r} (dim {dim}) "
                         f"both map to mesh axis {m!r}; fix the sharding rules")
      used[m] = dim
    spec.append(mesh_axes)
  return P(*spec)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(abstract_params, mesh: Mesh, rules: Rules):
  """NamedShardings for a tree of boxed (nn.LogicallyPartitioned) abstract params; checks divisibility (key/value
  heads that do not divide over their mesh axes are replicated instead)."""
  logical = nn.get_partition_spec(abstract_params)
  shapes = nn.meta.unbox(abstract_params)

  def one(path, spec, leaf):
    name = _path_name(path)
    pspec = logical_to_mesh(tuple(spec), rules, name=name)
    for dim, axes in enumerate(pspec):
      n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else (axes or ())))
      if leaf.shape[dim] % n and spec[dim] == "kv_heads":
        # Fewer key/value heads than the tensor axis splits (Gemma 3 1B, Qwen3 with 1 kv head): each device
        # keeps them all, as MaxText does; the query heads still split.
        pspec = P(*pspec[:dim], None, *pspec[dim + 1:])
      elif leaf.shape[dim] % n:
        raise MeshError(f"{name}: dimension {dim} of size {leaf.shape[dim]} is not divisible by the {n} devices "
                        f"of mesh axes {axes!r}; choose config.mesh sizes that divide it, or a config.sharding "
                        f"preset that leaves this dimension whole")
    return NamedSharding(mesh, pspec)

  return jax.tree_util.tree_map_with_path(one, logical, shapes, is_leaf=lambda x: isinstance(x, P))


def like_params_shardings(abstract_tree, abstract_params, params_shardings, mesh: Mesh):
  """Shardings for a tree (e.g. optimizer state) that embeds params-shaped subtrees.

  Any subtree with the params' structure takes the params' shardings where the leaf shapes agree
  (Adam moments); other leaves (step counts, factored Adafactor statistics) are replicated.
  """
  params_def = jax.tree.structure(abstract_params)
  replicated = NamedSharding(mesh, P())

  def params_like(node) -> bool:
    return jax.tree.structure(node) == params_def

  def one(node):
    if not params_like(node):
      return replicated
    return jax.tree.map(lambda x, p, s: s if getattr(x, "shape", None) == p.shape else replicated,
                        node, abstract_params, params_shardings)

  return jax.tree.map(one, abstract_tree, is_leaf=params_like)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Sharding of [batch, length] inputs: batch split as act_batch says, length whole."""
  return NamedSharding(mesh, logical_to_mesh(("act_batch", None), rules, name="batch"))


# Activation constraints: the train/eval step sets the mesh and rules while it traces the model.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) of the enclosing `activation_sharding`, or None outside one."""
  return _ACTIVE.get()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside `activation_sharding`."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_mesh(logical, rules)))
