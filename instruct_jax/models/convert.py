"""Pre-trained checkpoints in and out: Hugging Face and T5X import, Hugging Face export, imported dirs.

    pretrained = import_hf("flan-t5-base/", mesh, rules)        # config.json + safetensors
    pretrained = import_t5x("flan_t5_base/checkpoint_1184000", mesh, rules)
    save_imported(pretrained, "imported/", tokenizer_src="flan-t5-base/")
    pretrained = load_pretrained(path, mesh, rules)             # an imported, HF or T5X directory
    export_hf(pretrained.config, params, "out_hf/")             # loads with transformers' from_pretrained

Supported: T5 v1.1 / Flan-T5 / mT5 (model_type t5, mt5) and LLaMA / Llama-2 / Llama-3 / Mistral
(model_type llama, mistral). Imports place each parameter on the mesh as they read it, in the unrolled
or the scanned layout (`scan_layers=True`). The command line is `python -m instruct_jax.convert`.

An imported directory holds `model_config.json` (the instruct_jax config, plus the source config.json
for a later export), `params/` (an orbax checkpoint of the parameters) and the tokenizer files.
Tokenizers: SentencePiece `spiece.model` (T5) and `tokenizer.model` (LLaMA-2, Mistral) are supported;
Llama-3's `tokenizer.json` (byte-level BPE for the `tokenizers` library) is not.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh
from safetensors.numpy import save_file

from instruct_jax import sharding
from instruct_jax.models import convert_io, convert_llama, convert_t5, convert_t5x, decoder, t5
from instruct_jax.models.convert_io import ConversionError
from instruct_jax.models.layers import RopeScaling

ModelConfig = t5.T5Config | decoder.DecoderConfig
FAMILIES = {"t5": convert_t5, "mt5": convert_t5, "llama": convert_llama, "mistral": convert_llama}
MODEL_CONFIG = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "dropout_rate")  # free to change after import


@dataclasses.dataclass
class Pretrained:
  config: ModelConfig
  params: Any  # None when loaded with weights=False (the config alone)
  source: str
  hf_config: dict | None = None  # the source's config.json, reused by export_hf
  bytes_read: int = 0  # checkpoint payload bytes read while placing (imports only)


def model_for(config: ModelConfig) -> nn.Module:
  return t5.T5(config) if isinstance(config, t5.T5Config) else decoder.Decoder(config)


def param_shapes(config: ModelConfig):
  """The model's parameters as ShapeDtypeStructs in their logical-axis boxes (nothing is allocated)."""
  from instruct_jax import step  # pylint: disable=g-import-not-at-top  # step imports the models
  model = model_for(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), **step.dummy_batch(model, length=1))["params"])


def abstract_params(config: ModelConfig, mesh: Mesh, rules) -> Any:
  """ShapeDtypeStructs of the parameters, each with its NamedSharding."""
  boxed = param_shapes(config)
  shardings = sharding.param_shardings(boxed, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed),
                      shardings)


def _normalise(overrides: dict) -> dict:
  return {k: (jnp.dtype(v) if k in ("dtype", "param_dtype") else v) for k, v in overrides.items()}


def _check_paths(maps, shapes, what: str) -> None:
  if set(maps) != set(shapes):
    extra, missing = sorted(set(maps) - set(shapes)), sorted(set(shapes) - set(maps))
    raise ConversionError(f"{what}: tensor maps and model parameters differ (maps only: {extra[:3]}, "
                          f"params only: {missing[:3]})")


def _place(source, config: ModelConfig, maps, mesh: Mesh, rules, ignorable) -> Any:
  abstract = abstract_params(config, mesh, rules)
  shapes = convert_io.param_paths(abstract)
  _check_paths(maps, shapes, str(source.directory))
  convert_io.check_tensors(source, maps, shapes)
  convert_io.check_unused(source, maps, ignorable)
  return convert_io.place_params(source, maps, abstract, jax.tree.map(lambda a: a.sharding, abstract))


def read_hf_config(src: str | os.PathLike) -> dict:
  path = pathlib.Path(src) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{src}: no config.json; not a Hugging Face checkpoint directory")
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
  if hf.get("model_type") not in FAMILIES:
    raise ConversionError(f"{path}: model_type {hf.get('model_type')!r} is not supported; supported model "
                          f"types: {sorted(FAMILIES)}")
  return hf


def import_hf(src: str | os.PathLike, mesh: Mesh, rules, *, allow_pickle: bool = False,
              allow_unknown_fields: bool = False, weights: bool = True, **overrides) -> Pretrained:
  """Reads a Hugging Face checkpoint directory into parameters placed sharded on `mesh`.

  `overrides` set T5Config / DecoderConfig fields the checkpoint does not fix: dtype, param_dtype (the
  dtype parameters are stored in; default float32), scan_layers, remat_policy, dropout_rate.
  With weights=False only the config (and the tensor names it needs) is read; params is None.
  """
  hf = read_hf_config(src)
  family = FAMILIES[hf["model_type"]]
  source = convert_io.TensorSource(src, allow_pickle=allow_pickle)
  names = source.names()
  config = family.config_from_hf(hf, names, str(pathlib.Path(src) / "config.json"),
                                 allow_unknown_fields=allow_unknown_fields, **_normalise(overrides))
  if not weights:
    return Pretrained(config, None, str(src), hf)
  params = _place(source, config, family.tensor_maps(config, hf, names), mesh, rules, family.ignorable)
  return Pretrained(config, params, str(src), hf, source.bytes_read)


def import_t5x(src: str | os.PathLike, mesh: Mesh, rules, *, weights: bool = True, **overrides) -> Pretrained:
  """Reads a T5X T5 v1.1 / Flan-T5 checkpoint (see convert_t5x) into sharded parameters."""
  source = convert_t5x.T5XSource(src)
  config = convert_t5x.config_from_t5x(source, **_normalise(overrides))
  if not weights:
    return Pretrained(config, None, str(src))
  params = _place(source, config, convert_t5x.tensor_maps(config), mesh, rules, lambda name: False)
  return Pretrained(config, params, str(src), None, source.bytes_read)


# ---------------------------------------------------------------- imported directories

def config_to_json(config: ModelConfig) -> dict:
  fields = {}
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if f.name in ("dtype", "param_dtype"):
      v = jnp.dtype(v).name
    elif isinstance(v, RopeScaling):
      v = dataclasses.asdict(v)
    fields[f.name] = v
  return {"kind": config.kind, "config": fields}


def config_from_json(blob: dict, where: str) -> ModelConfig:
  classes = {"encoder_decoder": t5.T5Config, "decoder": decoder.DecoderConfig}
  if blob.get("kind") not in classes:
    raise ConversionError(f"{where}: kind {blob.get('kind')!r}; expected one of {sorted(classes)}")
  cls = classes[blob["kind"]]
  fields = dict(blob.get("config", {}))
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise ConversionError(f"{where}: unknown config field(s) {unknown} for {cls.__name__}")
  for k in ("dtype", "param_dtype"):
    if k in fields:
      fields[k] = jnp.dtype(fields[k])
  if isinstance(fields.get("rope_scaling"), dict):
    try:
      fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    except TypeError as e:
      raise ConversionError(f"{where}: rope_scaling: {e}") from e
  return cls(**fields)


def _copy_tokenizer(src, dst: pathlib.Path) -> None:
  if src is None:
    return
  for name in TOKENIZER_FILES:
    if (pathlib.Path(src) / name).is_file():
      shutil.copyfile(pathlib.Path(src) / name, dst / name)


def save_imported(pretrained: Pretrained, dst: str | os.PathLike, *, tokenizer_src=None) -> None:
  """Writes `pretrained` as an imported directory (orbax params + model_config.json + tokenizer files)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  dst = pathlib.Path(dst).absolute()
  if (dst / PARAMS_DIR).exists():
    raise ConversionError(f"{dst / PARAMS_DIR} already exists; refusing to overwrite it")
  dst.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(dst / PARAMS_DIR, pretrained.params)
  checkpointer.wait_until_finished()
  blob = {**config_to_json(pretrained.config), "source": pretrained.source, "hf_config": pretrained.hf_config}
  (dst / MODEL_CONFIG).write_text(json.dumps(blob, indent=2) + "\n")
  _copy_tokenizer(tokenizer_src, dst)


def load_imported(path: str | os.PathLike, mesh: Mesh, rules, *, weights: bool = True, **overrides) -> Pretrained:
  """Restores an imported directory onto `mesh`; only dtype, param_dtype, remat and dropout may change."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).absolute()
  where = str(path / MODEL_CONFIG)
  try:
    blob = json.loads((path / MODEL_CONFIG).read_text())
  except FileNotFoundError as e:
    raise ConversionError(f"{path}: no {MODEL_CONFIG}; not an imported checkpoint directory") from e
  except json.JSONDecodeError as e:
    raise ConversionError(f"{where}: line {e.lineno}: invalid JSON ({e.msg})") from e
  config = config_from_json(blob, where)
  fixed = sorted(k for k, v in overrides.items() if k not in _RUNTIME_FIELDS and getattr(config, k, None) != v)
  if fixed:
    raise ConversionError(f"{where}: {fixed} are fixed by the imported checkpoint (re-import the source to "
                          f"change them); changeable: {list(_RUNTIME_FIELDS)}")
  config = dataclasses.replace(config, **_normalise(overrides))
  if not weights:
    return Pretrained(config, None, str(path), blob.get("hf_config"))
  params = ocp.StandardCheckpointer().restore(path / PARAMS_DIR, abstract_params(config, mesh, rules))
  return Pretrained(config, params, str(path), blob.get("hf_config"))


def load_pretrained(path: str | os.PathLike, mesh: Mesh, rules, *, allow_pickle: bool = False,
                    allow_unknown_fields: bool = False, weights: bool = True, **overrides) -> Pretrained:
  """An imported directory, a Hugging Face directory or a T5X checkpoint, whichever `path` is.

  This is what a trainer's `config.init_from` points at; `overrides` are config fields (dtype,
  param_dtype, scan_layers, remat_policy, dropout_rate, ...) as the chosen loader accepts them.
  weights=False reads only the model config (params is None): the trainer does that first and reads the
  weights only when it is not resuming from its own checkpoint.
  """
  path = pathlib.Path(path)
  if (path / MODEL_CONFIG).is_file():
    return load_imported(path, mesh, rules, weights=weights, **overrides)
  if (path / "config.json").is_file():
    return import_hf(path, mesh, rules, allow_pickle=allow_pickle, allow_unknown_fields=allow_unknown_fields,
                     weights=weights, **overrides)
  if convert_t5x.is_t5x(path):
    return import_t5x(path, mesh, rules, weights=weights, **overrides)
  raise ConversionError(f"{path}: neither an imported directory ({MODEL_CONFIG}), a Hugging Face directory "
                        "(config.json) nor a T5X checkpoint ('checkpoint' file)")


# ---------------------------------------------------------------- export

def _to_tensor(layer: np.ndarray, tmap: convert_io.TensorMap) -> np.ndarray:
  """One layer of a parameter -> its checkpoint tensor (the inverse of the import mapping)."""
  if tmap.split is None:
    flat = layer.reshape(-1)
  else:
    flat = layer.reshape(math.prod(layer.shape[:tmap.split]), -1)
  if tmap.transpose:
    flat = flat.T
  return np.ascontiguousarray(flat / tmap.scale if tmap.scale != 1.0 else flat)


def _export_tensors(params, maps, dtype) -> Iterator[tuple[str, Callable[[], np.ndarray], int]]:
  """(tensor name, producer, bytes) for every checkpoint tensor, grouped by parameter.

  A producer fetches its parameter to the host once and keeps it while that parameter's layers are written.
  """
  flat = dict(zip(convert_io.param_paths(params), jax.tree.leaves(params)))
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
        return _to_tensor(value[i] if tmap.stacked else value, tmap).astype(dtype)
      yield name, produce, size


def _write_safetensors(out_dir: pathlib.Path, tensors, max_shard_bytes: int) -> list[str]:
  """model.safetensors, or model-0000k-of-0000n.safetensors + index; one shard in host memory at a time."""
  shards, sizes = [[]], [0]
  for name, produce, size in tensors:
    if shards[-1] and sizes[-1] + size > max_shard_bytes:
      shards.append([])
      sizes.append(0)
    shards[-1].append((name, produce))
    sizes[-1] += size
  n = len(shards)
  files = [convert_io.SAFETENSORS_SINGLE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                                                          for k in range(n)]
  weight_map = {}
  for filename, shard in zip(files, shards):
    save_file({name: produce() for name, produce in shard}, out_dir / filename, metadata={"format": "pt"})
    weight_map.update({name: filename for name, _ in shard})
    logging.info("wrote %s (%d tensors)", out_dir / filename, len(shard))
  if n > 1:
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / convert_io.SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    files.append(convert_io.SAFETENSORS_INDEX)
  return files


def export_hf(config: ModelConfig, params, dst: str | os.PathLike, *, hf_base: dict | None = None,
              dtype=None, max_shard_bytes: int = 2 * 1024**3, tokenizer_src=None) -> list[str]:
  """Writes config.json + safetensors (sharded above `max_shard_bytes`) that transformers loads.

  `hf_base` (the imported config.json) keeps token ids and the model type (e.g. mistral); `dtype`
  defaults to the parameters' dtype. Host memory: one parameter plus one output shard at a time.
  """
  family = convert_t5 if isinstance(config, t5.T5Config) else convert_llama
  dst = pathlib.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  maps = family.tensor_maps(config)
  _check_paths(maps, convert_io.param_paths(params), str(dst))
  np_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else jax.tree.leaves(params)[0].dtype))
  files = _write_safetensors(dst, _export_tensors(params, maps, np_dtype), max_shard_bytes)
  hf = family.hf_config(config, hf_base, np_dtype.name)
  (dst / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  _copy_tokenizer(tokenizer_src, dst)
  return files + ["config.json"]


# ---------------------------------------------------------------- tokenizer

def load_tokenizer(path: str | os.PathLike):
  """The model's own SentencePiece tokenizer from a Hugging Face or imported directory."""
  from instruct_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  for name in ("spiece.model", "tokenizer.model"):
    if (path / name).is_file():
      return tokenizer.Tokenizer(path / name)
  if (path / "tokenizer.json").is_file():
    raise ConversionError(
        f"{path}: only tokenizer.json was found. That is a byte-level BPE for the Hugging Face `tokenizers` "
        "library (what Llama-3 ships), which instruct_jax does not support: its pipeline tokenizes with "
        "SentencePiece (spiece.model, tokenizer.model). The weights import fine; the tokenizer does not.")
  raise ConversionError(f"{path}: no tokenizer (looked for spiece.model, tokenizer.model, tokenizer.json)")
