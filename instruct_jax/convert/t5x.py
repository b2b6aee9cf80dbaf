"""T5X checkpoints (the format of the public T5 v1.1 and Flan-T5 releases) -> instruct_jax T5.

A T5X checkpoint directory `checkpoint_<step>/` holds:

    checkpoint        msgpack (flax.serialization) of {"version": 3, "optimizer": {"target": params, "state": ...}}
    target.encoder.layers_0.attention.key.kernel/ ...   one zarr array per large parameter

Each leaf of `target` is either a small array stored inline in the msgpack or a tensorstore spec
({"driver": "zarr", "kvstore": {"driver": "file" | "gcs", "path": <name relative to the directory>},
"metadata": {...}}). Both are read here with tensorstore and flax, slice by slice, so T5X imports place
parameters sharded exactly as Hugging Face imports do. Before version 3, T5X stored bfloat16 arrays as
uint16 bit patterns; those are reinterpreted. Scanned T5X layouts and the original T5 (ReLU MLP) are
refused. Copy a gs:// checkpoint to local disk first (e.g. `gsutil -m cp -r`).

T5X names and layouts: attention kernels are stored flat, query/key/value [D, H*K] and out [H*K, D];
relative position tables are [H, buckets] (instruct_jax: [buckets, H]); no config travels with the
checkpoint, so the shapes give the config (relpos_max_distance: T5X's default 128, overridable).
"""
from __future__ import annotations

import copy
import pathlib
import re

import numpy as np

from instruct_jax.convert import tensors
from instruct_jax.convert.tensors import ConversionError, TensorMap
from instruct_jax.models.t5 import T5Config

_ATTENTION = {("query", "kernel"): ("query/kernel", False, 1), ("key", "kernel"): ("key/kernel", False, 1),
              ("value", "kernel"): ("value/kernel", False, 1), ("out", "kernel"): ("out/kernel", False, 2)}
_MLP = {("mlp", n, "kernel"): (f"mlp/{n}/kernel", False, 1) for n in ("wi_0", "wi_1", "wo")}


def _sub(t5x: str, name: str) -> dict:
  return {(name,) + k: (f"{t5x}/{s}", t, sp) for k, (s, t, sp) in _ATTENTION.items()}


ENCODER_LAYER = {**_sub("attention", "attention"), **_MLP,
                 ("pre_attention_norm", "scale"): ("pre_attention_layer_norm/scale", False, None),
                 ("pre_mlp_norm", "scale"): ("pre_mlp_layer_norm/scale", False, None)}
DECODER_LAYER = {**_sub("self_attention", "self_attention"), **_sub("encoder_decoder_attention", "cross_attention"),
                 **_MLP,
                 ("pre_self_attention_norm", "scale"): ("pre_self_attention_layer_norm/scale", False, None),
                 ("pre_cross_attention_norm", "scale"): ("pre_cross_attention_layer_norm/scale", False, None),
                 ("pre_mlp_norm", "scale"): ("pre_mlp_layer_norm/scale", False, None)}


def find_checkpoint_file(path: str | pathlib.Path) -> pathlib.Path:
  """The msgpack `checkpoint` file of a T5X checkpoint dir, of the latest step in a model dir, or itself."""
  path = pathlib.Path(path)
  if path.is_file():
    return path
  if (path / "checkpoint").is_file():
    return path / "checkpoint"
  steps = sorted((int(m.group(1)), p) for p in path.glob("checkpoint_*")
                 if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and (p / "checkpoint").is_file())
  if not steps:
    raise ConversionError(f"{path}: not a T5X checkpoint (no 'checkpoint' file, no checkpoint_<step>/ dirs)")
  return steps[-1][1] / "checkpoint"


def is_t5x(path: str | pathlib.Path) -> bool:
  try:
    find_checkpoint_file(path)
  except ConversionError:
    return False
  return True


class T5XSource:
  """The `target` parameters of a T5X checkpoint: names ("encoder/layers_0/..."), shapes, slice reads."""

  def __init__(self, path: str | pathlib.Path):
    from flax import serialization  # pylint: disable=g-import-not-at-top
    ckpt = find_checkpoint_file(path)
    self.directory = ckpt.parent
    self.bytes_read = 0
    try:
      contents = serialization.msgpack_restore(ckpt.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on a corrupt file
      raise ConversionError(f"{ckpt}: cannot be read as a T5X msgpack checkpoint ({e})") from e
    self.version = contents.get("version", 0) if isinstance(contents, dict) else 0
    state = contents.get("optimizer", {}) if self.version > 0 else contents
    if not isinstance(state, dict) or "target" not in state:
      raise ConversionError(f"{ckpt}: no optimizer 'target' (the parameters) in the checkpoint")
    self._leaves: dict[str, object] = {}
    self._flatten(state["target"], "")
    self._stores: dict[str, object] = {}

  def _flatten(self, node, prefix: str) -> None:
    if isinstance(node, dict) and {"driver", "kvstore"} <= set(node):
      self._leaves[prefix] = node
    elif isinstance(node, dict):
      for k, v in node.items():
        self._flatten(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(node, np.ndarray):
      self._leaves[prefix] = node

  def names(self) -> set[str]:
    return set(self._leaves)

  def shape(self, name: str) -> tuple[int, ...]:
    leaf = self._leaves[name]
    return tuple(leaf.shape) if isinstance(leaf, np.ndarray) else tuple(leaf["metadata"]["shape"])

  def file(self, name: str) -> str:
    leaf = self._leaves[name]
    return "checkpoint (inline)" if isinstance(leaf, np.ndarray) else self._spec(leaf)["kvstore"]["path"]

  def _spec(self, leaf: dict) -> dict:
    spec = copy.deepcopy(leaf)
    kv = spec["kvstore"]
    if "path" in spec and "path" not in kv:  # tensorstore < 0.1.14 kept the path at the top level
      kv["path"] = spec.pop("path")
    if kv.get("driver") not in ("file", "gfile", "gcs"):
      raise ConversionError(f"{self.directory}: unsupported tensorstore kvstore driver {kv.get('driver')!r}")
    spec["kvstore"] = {"driver": "file", "path": str(self.directory / kv["path"])}
    return spec

  def _store(self, name: str):
    if name not in self._stores:
      import tensorstore as ts  # pylint: disable=g-import-not-at-top
      try:
        self._stores[name] = ts.open(self._spec(self._leaves[name]), open=True, read=True).result()
      except ValueError as e:
        raise ConversionError(f"{self.directory}: cannot open the array of {name!r} ({e})") from e
    return self._stores[name]

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    leaf = self._leaves[name]
    out = np.asarray(leaf[index] if isinstance(leaf, np.ndarray) else self._store(name)[index].read().result())
    if self.version < 3 and out.dtype == np.uint16:
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      out = out.view(ml_dtypes.bfloat16)
    self.bytes_read += out.nbytes
    return out


def _count_layers(names: set[str], stack: str) -> int:
  found = {int(m.group(1)) for n in names if (m := re.match(rf"{stack}/layers_(\d+)/", n))}
  if found != set(range(len(found))):
    raise ConversionError(f"{stack} layers are not numbered 0..n-1: {sorted(found)}")
  return len(found)


def config_from_t5x(source: T5XSource, **overrides) -> T5Config:
  """T5Config read off the parameter shapes (T5X checkpoints carry no config)."""
  names = source.names()
  where = str(source.directory)
  need = lambda n: source.shape(n) if n in names else _fail(f"{where}: missing tensor {n!r}; not a T5 v1.1 "
                                                            "T5X checkpoint")
  if any(n.startswith(("encoder/layers/", "decoder/layers/")) for n in names):
    raise ConversionError(f"{where}: scanned T5X layouts (encoder/layers/...) are not supported")
  if "encoder/layers_0/mlp/wi/kernel" in names:
    raise ConversionError(f"{where}: an original-T5 (ReLU MLP, 'mlp/wi') checkpoint; instruct_jax's T5 is "
                          "T5 v1.1 / Flan-T5 (gated-GELU)")
  vocab, d_model = need("token_embedder/embedding")
  heads, buckets = need("encoder/relpos_bias/rel_embedding")
  fields = dict(vocab_size=vocab, d_model=d_model, num_heads=heads, relpos_buckets=buckets,
                head_dim=need("encoder/layers_0/attention/query/kernel")[1] // heads,
                d_ff=need("encoder/layers_0/mlp/wi_0/kernel")[1],
                num_encoder_layers=_count_layers(names, "encoder"), num_decoder_layers=_count_layers(names, "decoder"),
                tie_embeddings="decoder/logits_dense/kernel" not in names)
  return T5Config(**{**fields, **overrides})


def _fail(msg: str):
  raise ConversionError(msg)


def tensor_maps(cfg: T5Config) -> dict:
  maps = {("token_embedder", "embedding"): TensorMap(("token_embedder/embedding",))}
  for stack, table, n in (("encoder", ENCODER_LAYER, cfg.num_encoder_layers),
                          ("decoder", DECODER_LAYER, cfg.num_decoder_layers)):
    maps[(stack, "relpos_bias", "rel_embedding")] = TensorMap((f"{stack}/relpos_bias/rel_embedding",),
                                                              transpose=True)
    maps[(stack, "final_norm", "scale")] = TensorMap((f"{stack}/{stack}_norm/scale",), split=None)
    tensors.add_layers(maps, (stack, "stack"), n, cfg.scan_layers, table, stack + "/layers_{i}/")
  if not cfg.tie_embeddings:
    maps[("decoder", "logits_dense", "kernel")] = TensorMap(("decoder/logits_dense/kernel",))
  return maps
