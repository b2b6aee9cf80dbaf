"""Shared machinery of the checkpoint importers: tensor sources, sharded placement, config.json checks.

A `TensorMap` says how one instruct_jax parameter is made from checkpoint tensors. Per layer, the
parameter is the checkpoint tensor (transposed when `transpose`) reshaped to the parameter's shape: its
first `split` dimensions flatten into the tensor's first (post-transpose) dimension and the rest into the
second, e.g. a Hugging Face q_proj weight [H*K, D] transposed is [D, H*K] = query kernel [D, H, K] with
split 1. A scanned parameter stacks one tensor per layer on a leading axis.

`place_params` builds each parameter from the blocks its devices hold: each distinct block is read once
(only its rows and columns), sent raw to its devices, and transposed / reshaped / cast there, so a
checkpoint is never held whole in host memory: beyond the placed parameters the host holds one raw
block of one tensor.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from instruct_jax import errors
from instruct_jax.models.families.base import (  # noqa: F401 (the families' declarations, re-exported)
    GENERIC_FIELDS, ConversionError, Path, TensorMap, add_layers, check_fields, require)


SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"


class TensorSource:
  """The tensors of a checkpoint directory: names, shapes, and reads of slices.

  Reads safetensors (one file, or shards listed by model.safetensors.index.json). Pickled PyTorch files
  (pytorch_model.bin) run code when unpickled, so they are refused unless `allow_pickle`, and then read
  with torch.load(weights_only=True, mmap=True). `bytes_read` counts the payload bytes handed out.
  """

  def __init__(self, directory: str | os.PathLike, *, allow_pickle: bool = False):
    self.directory = pathlib.Path(directory)
    self.bytes_read = 0
    self._files: dict[str, pathlib.Path] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._nbytes: dict[str, int] = {}
    self._pickled = False
    self._torch_cache: tuple[pathlib.Path, dict] | None = None
    d = self.directory
    if (d / SAFETENSORS_INDEX).is_file():
      self._scan_safetensors(self._files_from_index(d / SAFETENSORS_INDEX))
    elif (d / SAFETENSORS_SINGLE).is_file():
      self._scan_safetensors({None: d / SAFETENSORS_SINGLE})
    elif len(found := sorted(d.glob("*.safetensors"))) == 1:
      self._scan_safetensors({None: found[0]})
    elif found:
      raise ConversionError(f"{d}: {len(found)} .safetensors files but no {SAFETENSORS_INDEX} saying which "
                            "tensor lives where")
    elif (d / PICKLE_INDEX).is_file() or (d / PICKLE_SINGLE).is_file():
      if not allow_pickle:
        raise ConversionError(
            f"{d} holds only pickled PyTorch weights ({PICKLE_SINGLE}); unpickling can run arbitrary code, "
            "so it is refused. Convert them to safetensors, or import them once with `python -m instruct_jax.convert "
            "--from hf --allow_pickle` (torch.load(weights_only=True)) and use that import")
      self._pickled = True
      index = d / PICKLE_INDEX
      self._scan_pickled(self._files_from_index(index) if index.is_file() else {None: d / PICKLE_SINGLE})
    else:
      raise ConversionError(f"{d}: no model weights found (looked for {SAFETENSORS_SINGLE}, "
                            f"{SAFETENSORS_INDEX}, *.safetensors and {PICKLE_SINGLE})")

  def _files_from_index(self, index_path: pathlib.Path) -> dict[str | None, pathlib.Path]:
    try:
      weight_map = errors.loads_json(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ConversionError(f"{index_path}: not a checkpoint index with a 'weight_map' ({e})") from e
    files = {}
    for name, filename in weight_map.items():
      path = self.directory / filename
      if not path.is_file():
        raise ConversionError(f"{index_path}: tensor {name!r} is listed in {filename}, which does not exist")
      files[name] = path
    return files

  def _scan_safetensors(self, files: Mapping[str | None, pathlib.Path]) -> None:
    listed = {n for n in files if n is not None}
    for path in sorted(set(files.values())):
      try:
        with safe_open(path, framework="numpy") as f:
          for name in f.keys():
            if listed and name not in listed:
              continue
            tensor = f.get_slice(name)
            self._files[name] = path
            self._shapes[name] = tuple(tensor.get_shape())
            self._nbytes[name] = math.prod(self._shapes[name]) * _ITEMSIZE.get(tensor.get_dtype(), 0)
      except SafetensorError as e:  # a corrupt header, or a file cut short
        raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
    missing = listed - set(self._files)
    if missing:
      name = sorted(missing)[0]
      raise ConversionError(f"{SAFETENSORS_INDEX} lists {len(missing)} tensor(s) absent from their files, "
                            f"e.g. {name!r} in {files[name].name}")

  def _scan_pickled(self, files: Mapping[str | None, pathlib.Path]) -> None:
    for path in sorted(set(files.values())):
      for name, tensor in self._torch_state(path).items():
        self._files[name] = path
        self._shapes[name] = tuple(tensor.shape)
        self._nbytes[name] = tensor.numel() * tensor.element_size()

  def _torch_state(self, path: pathlib.Path) -> dict:
    if self._torch_cache is None or self._torch_cache[0] != path:
      import torch  # pylint: disable=g-import-not-at-top  # only for the opt-in pickled path
      self._torch_cache = (path, torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return self._torch_cache[1]

  def names(self) -> set[str]:
    return set(self._shapes)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._shapes[name]

  def file(self, name: str) -> str:
    return self._files[name].name

  def payload_bytes(self, names: Iterable[str]) -> int:
    """Bytes the named tensors occupy in their files."""
    return sum(self._nbytes[n] for n in names)

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """The slice `index` of tensor `name`; only that slice is read from disk."""
    if self._pickled:
      out = _torch_to_numpy(self._torch_state(self._files[name])[name][index])
    else:
      # Open per read: the memory map is dropped as soon as the slice is copied out.
      try:
        with safe_open(self._files[name], framework="numpy") as f:
          out = f.get_slice(name)[index]
      except SafetensorError as e:
        raise ConversionError(f"{self._files[name]}: tensor {name!r} cannot be read ({e})") from None
    self.bytes_read += out.nbytes
    return out


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _torch_to_numpy(t) -> np.ndarray:
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  t = t.contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
  return t.numpy().copy()


def check_tensors(source, maps: Mapping[Path, TensorMap], shapes: Mapping[Path, tuple[int, ...]]) -> None:
  """Raises one ConversionError listing every missing tensor and every shape mismatch."""
  problems = []
  available = source.names()
  for path, tmap in maps.items():
    want, param = tmap.source_shape(shapes[path]), "/".join(path)
    for name in tmap.names:
      if name not in available:
        problems.append(f"missing tensor {name!r} (for {param})")
      elif tuple(source.shape(name)) != want:
        problems.append(f"tensor {name!r} in {source.file(name)} has shape {list(source.shape(name))}, "
                        f"expected {list(want)} for {param} {list(shapes[path])}")
  if problems:
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    raise ConversionError(f"{source.directory}: the checkpoint does not fit the config:\n  "
                          + "\n  ".join(problems[:12]) + more)


def _concrete(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
  return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))


@dataclasses.dataclass(frozen=True)
class _Plan:
  """How to read one device block of a parameter and turn the raw tensor slice into it."""
  src_index: tuple[slice, ...]  # slice of the checkpoint tensor, in its own layout
  block_shape: tuple[int, ...]  # the read slice (transposed if needed) reshaped, per layer
  inner: tuple[tuple[int, int] | None, ...]  # cuts of dims read whole; None keeps a dim as read


def _plan(tmap: TensorMap, layer_shape: tuple[int, ...], index: tuple[slice, ...]) -> _Plan:
  """The tensor slice one block needs, and how to cut it.

  Within each group of parameter dims that flatten into one tensor dim, the tensor range follows the
  group's leading dim; inner dims of a group (e.g. head_dim) are read whole and cut on the device.
  """
  split = len(layer_shape) if tmap.split is None else tmap.split
  groups = [g for g in (range(0, split), range(split, len(layer_shape))) if len(g)]
  src_index, block_shape = [], []
  for g in groups:
    inner = math.prod(layer_shape[d] for d in g[1:])
    lead = index[g[0]]
    src_index.append(slice(lead.start * inner, lead.stop * inner))
    block_shape += [lead.stop - lead.start] + [layer_shape[d] for d in g[1:]]
  leads = {g[0] for g in groups}
  cuts = tuple(None if d in leads or (index[d].start, index[d].stop) == (0, layer_shape[d])
               else (index[d].start, index[d].stop) for d in range(len(layer_shape)))
  return _Plan(tuple(src_index[::-1] if tmap.transpose else src_index), tuple(block_shape), cuts)


@functools.partial(jax.jit, static_argnames=("stacked", "transpose", "block_shape", "inner", "dtype", "scale"))
def _finish(raw, *, stacked: bool, transpose: bool, block_shape, inner, dtype, scale: float):
  """On the device: raw tensor slice(s) ([layers,] rows[, cols]) -> the parameter block."""
  lead = raw.shape[:1] if stacked else ()
  x = jnp.swapaxes(raw, -1, -2) if transpose else raw
  x = x.reshape(lead + block_shape)
  x = x[(slice(None),) * len(lead) + tuple(slice(None) if c is None else slice(*c) for c in inner)]
  if scale != 1.0:
    x = x.astype(jnp.float32) * scale
  return x.astype(dtype)


def place_param(source, tmap: TensorMap, shape: tuple[int, ...], dtype, sharding) -> jax.Array:
  """One parameter, built block by block on the devices of `sharding` from the checkpoint tensors.

  Each distinct block is read once (replicas share it) as a raw slice in the checkpoint's layout and sent
  to its devices, which transpose, reshape and cast it; the host holds one raw block at a time.
  """
  layer_shape = shape[1:] if tmap.stacked else shape
  by_block: dict[tuple, list] = {}
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    index = _concrete(index, shape)
    by_block.setdefault(tuple((s.start, s.stop) for s in index), []).append(device)
  shards = {}
  for key, devices in by_block.items():
    plan = _plan(tmap, layer_shape, tuple(slice(*k) for k in (key[1:] if tmap.stacked else key)))
    if tmap.stacked:
      first = source.read(tmap.names[key[0][0]], plan.src_index)
      raw = np.empty((key[0][1] - key[0][0],) + first.shape, first.dtype)
      raw[0] = first
      del first
      for j, i in enumerate(range(key[0][0] + 1, key[0][1]), start=1):
        raw[j] = source.read(tmap.names[i], plan.src_index)
    else:
      raw = source.read(tmap.names[0], plan.src_index)
    lead = raw.shape[:1] if tmap.stacked else ()
    as_read = (not tmap.transpose and tmap.scale == 1.0 and raw.dtype == dtype and raw.shape == lead + plan.block_shape
               and all(c is None for c in plan.inner))
    for device in devices:
      x = jax.device_put(raw, device)
      shards[device] = x if as_read else _finish(
          x, stacked=tmap.stacked, transpose=tmap.transpose, block_shape=plan.block_shape, inner=plan.inner,
          dtype=np.dtype(dtype), scale=float(tmap.scale))
    del raw
  arrays = [shards[d] for d in sharding.addressable_devices_indices_map(shape)]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def place_params(source, maps: Mapping[Path, TensorMap], abstract_params, shardings) -> dict:
  """The parameter tree of `abstract_params` (ShapeDtypeStructs), every leaf placed from `maps`."""
  def one(path, leaf, sh):
    key = tuple(str(getattr(k, "key", k)) for k in path)
    return place_param(source, maps[key], tuple(leaf.shape), leaf.dtype, sh)

  return jax.tree_util.tree_map_with_path(one, abstract_params, shardings)


def param_paths(abstract_params) -> dict[Path, tuple[int, ...]]:
  """{key path: shape} of every leaf."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  return {tuple(str(getattr(k, "key", k)) for k in p): tuple(leaf.shape) for p, leaf in flat}


def check_unused(source, maps: Mapping[Path, TensorMap], ignorable: Callable[[str], bool]) -> None:
  """Refuses a checkpoint holding tensors the model would not use (a bias, an extra layer ...)."""
  used = {n for m in maps.values() for n in m.names}
  unused = sorted(n for n in source.names() - used if not ignorable(n))
  if unused:
    raise ConversionError(f"{source.directory}: {len(unused)} checkpoint tensor(s) have no place in the model, "
                          f"e.g. {unused[:5]}; the checkpoint's architecture differs from what its config says")


# ---------------------------------------------------------------- config.json fields

# Fields of a Hugging Face config.json that do not change the forward pass of the weights: bookkeeping,
# token ids, and generation defaults that older configs carried.


def check_paths(maps, shapes, what: str) -> None:
  """Every parameter has a tensor map and every map a parameter (`what` names the checkpoint in the error)."""
  if set(maps) != set(shapes):
    extra, missing = sorted(set(maps) - set(shapes)), sorted(set(shapes) - set(maps))
    raise ConversionError(f"{what}: tensor maps and model parameters differ (maps only: {extra[:3]}, "
                          f"params only: {missing[:3]})")


# ---------------------------------------------------------------- export

def to_tensor(layer: np.ndarray, tmap: TensorMap) -> np.ndarray:
  """One layer of a parameter -> its checkpoint tensor (the inverse of the import mapping)."""
  if tmap.split is None:
    flat = layer.reshape(-1)
  else:
    flat = layer.reshape(math.prod(layer.shape[:tmap.split]), -1)
  if tmap.transpose:
    flat = flat.T
  return np.ascontiguousarray(flat / tmap.scale if tmap.scale != 1.0 else flat)


def export_tensors(params, maps, dtype) -> Iterator[tuple[str, Callable[[], np.ndarray], int]]:
  """(tensor name, producer, bytes) for every checkpoint tensor, grouped by parameter.

  A producer fetches its parameter to the host once and keeps it while that parameter's layers are written.
  """
  flat = dict(zip(param_paths(params), jax.tree.leaves(params)))
  fetched: dict[str, Any] = {}

  def host(path) -> np.ndarray:
    if fetched.get("path") != path:
      x = flat[path]
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise ConversionError(f"{'/'.join(path)} spans several processes; export from a single process")
      fetched.clear()  # drop the previous parameter before fetching the next
      fetched.update(path=path, value=np.asarray(jax.device_get(x)))
    return fetched["value"]

  for path, tmap in maps.items():
    size = math.prod(tmap.source_shape(tuple(flat[path].shape))) * dtype.itemsize
    for i, name in enumerate(tmap.names):
      def produce(path=path, tmap=tmap, i=i):
        value = host(path)
        return to_tensor(value[i] if tmap.stacked else value, tmap).astype(dtype)
      yield name, produce, size
