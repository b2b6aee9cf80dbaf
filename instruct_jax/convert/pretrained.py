"""Pre-trained checkpoints in and out: Hugging Face and T5X import, Hugging Face export, imported dirs.

    pretrained = import_hf("flan-t5-base/", mesh, rules)        # config.json + safetensors
    pretrained = import_t5x("flan_t5_base/checkpoint_1184000", mesh, rules)
    save_imported(pretrained, "imported/", tokenizer_src="flan-t5-base/")
    pretrained = load_pretrained(path, mesh, rules)             # imported, HF or T5X dir, or a run's workdir
    export_hf(pretrained.config, params, "out_hf/", tokenizer=tok)   # loads with transformers' from_pretrained

Supported: the families of `instruct_jax.models.families`: T5 v1.1 / Flan-T5 / mT5 (model_type t5, mt5),
LLaMA / Llama-2 / Llama-3 / Mistral / SmolLM2 (llama, mistral), Qwen2 / Qwen2.5 / Qwen3 (qwen2, qwen3) and
Gemma 2 / Gemma 3 text (gemma2, gemma3_text). Imports place each parameter on the mesh as they read it, in
the unrolled or the scanned layout (`scan_layers=True`). The command line is `python -m instruct_jax.convert`.

An imported directory holds `model_config.json` (the instruct_jax config, plus the source config.json
for a later export), `params/` (an orbax checkpoint of the parameters) and the tokenizer files. A
training workdir (`instruct_jax.workdir`) has the same model_config.json and keeps its parameters in
`checkpoints/<step>/`. Tokenizers: SentencePiece (`spiece.model`, `tokenizer.model`) and Hugging Face
`tokenizer.json` (Llama-3), read by `instruct_jax.data.tokenizer`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh
from safetensors.numpy import save_file

from instruct_jax import errors
from instruct_jax import workdir as workdir_lib
from instruct_jax.convert import outdir, t5x, tensors
from instruct_jax.convert.tensors import ConversionError
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import build, families, lora as lora_lib

ModelConfig = build.ModelConfig
FAMILIES = families.BY_MODEL_TYPE
MODEL_CONFIG = workdir_lib.MODEL_CONFIG
PARAMS_DIR = "params"
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json", tokenizer_lib.CHAT_TEMPLATE_FILENAME)


@dataclasses.dataclass
class Pretrained:
  config: ModelConfig
  params: Any  # None when loaded with weights=False (the config alone)
  source: str
  hf_config: dict | None = None  # the source's config.json, reused by export_hf
  bytes_read: int = 0  # checkpoint payload bytes read while placing (imports only)
  step: int | None = None  # the checkpoint step, when the source is a training workdir


def _normalise(overrides: dict) -> dict:
  return {k: (jnp.dtype(v) if k in ("dtype", "param_dtype") else v) for k, v in overrides.items()}


def _place(source, config: ModelConfig, maps, mesh: Mesh, rules, ignorable) -> Any:
  abstract = build.Model(config).abstract_params(mesh, rules)
  shapes = tensors.param_paths(abstract)
  tensors.check_paths(maps, shapes, str(source.directory))
  tensors.check_tensors(source, maps, shapes)
  tensors.check_unused(source, maps, ignorable)
  return tensors.place_params(source, maps, abstract, jax.tree.map(lambda a: a.sharding, abstract))


def read_hf_config(src: str | os.PathLike) -> dict:
  path = pathlib.Path(src) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{src}: no config.json; not a Hugging Face checkpoint directory")
  try:
    hf = errors.loads_json(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
  families.by_model_type(hf.get("model_type"), str(path))
  return hf


def import_hf(src: str | os.PathLike, mesh: Mesh, rules, *, allow_pickle: bool = False,
              allow_unknown_fields: bool = False, weights: bool = True, **overrides) -> Pretrained:
  """Reads a Hugging Face checkpoint directory into parameters placed sharded on `mesh`.

  `overrides` set T5Config / DecoderConfig fields the checkpoint does not fix: dtype, param_dtype (the
  dtype parameters are stored in; default float32), scan_layers, remat_policy, dropout_rate.
  With weights=False only the config (and the tensor names it needs) is read; params is None.
  """
  hf = read_hf_config(src)
  family = families.by_model_type(hf["model_type"], str(src))
  source = tensors.TensorSource(src, allow_pickle=allow_pickle)
  names = source.names()
  config = family.config_from_hf(hf, names, str(pathlib.Path(src) / "config.json"),
                                 allow_unknown_fields=allow_unknown_fields, **_normalise(overrides))
  if not weights:
    return Pretrained(config, None, str(src), hf)
  params = _place(source, config, family.tensor_maps(config, hf, names), mesh, rules, family.ignorable)
  return Pretrained(config, params, str(src), hf, source.bytes_read)


def import_t5x(src: str | os.PathLike, mesh: Mesh, rules, *, weights: bool = True, **overrides) -> Pretrained:
  """Reads a T5X T5 v1.1 / Flan-T5 checkpoint (see convert.t5x) into sharded parameters."""
  source = t5x.T5XSource(src)
  config = t5x.config_from_t5x(source, **_normalise(overrides))
  if not weights:
    return Pretrained(config, None, str(src))
  params = _place(source, config, t5x.tensor_maps(config), mesh, rules, lambda name: False)
  return Pretrained(config, params, str(src), None, source.bytes_read)


# ---------------------------------------------------------------- imported directories and workdirs

def _copy_tokenizer(src, dst: pathlib.Path) -> None:
  """Copies the tokenizer files of `src` (none when it is None), each checked first (outdir.checked_source_file,
  outdir.validate_tokenizer_file)."""
  if src is None:
    return
  for name in TOKENIZER_FILES:
    path = outdir.checked_source_file(src, name)
    if path is not None:
      outdir.validate_tokenizer_file(path)
      shutil.copyfile(path, dst / name)


def save_imported(pretrained: Pretrained, dst: str | os.PathLike, *, tokenizer_src=None) -> None:
  """Writes `pretrained` as an imported directory (orbax params + model_config.json + tokenizer files)."""
  with outdir.replacing(dst, to="instruct_jax", src=pretrained.source) as tmp:
    _save_imported(pretrained, tmp, tokenizer_src)


def _save_imported(pretrained: Pretrained, dst: pathlib.Path, tokenizer_src) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(dst / PARAMS_DIR, pretrained.params)
  checkpointer.wait_until_finished()
  blob = {**build.config_to_json(pretrained.config), "source": pretrained.source, "hf_config": pretrained.hf_config}
  (dst / MODEL_CONFIG).write_text(json.dumps(blob, indent=2) + "\n")
  if tokenizer_src is not None and workdir_lib.is_workdir(tokenizer_src):
    workdir_lib.tokenizer(tokenizer_src).save(dst)
  else:
    _copy_tokenizer(tokenizer_src, dst)


def _with_runtime(config: ModelConfig, where: str, overrides: dict) -> ModelConfig:
  """`config` with the runtime fields of `overrides`; any other field that differs is an error."""
  fixed = sorted(k for k, v in overrides.items()
                 if k not in build.RUNTIME_FIELDS and getattr(config, k, None) != v)
  if fixed:
    raise ConversionError(f"{where}: {fixed} are fixed by the checkpoint (re-import the source to change them); "
                          f"changeable: {list(build.RUNTIME_FIELDS)}")
  return dataclasses.replace(config, **_normalise(overrides))


def _restore_relaid(stored: ModelConfig, wanted: ModelConfig, mesh: Mesh, rules, restore: Callable) -> Any:
  """Parameters restored in the stored layer layout, then (if it differs) relaid out as `wanted` says."""
  if stored.scan_layers == wanted.scan_layers:
    return restore(build.Model(wanted).abstract_params(mesh, rules))
  as_stored = dataclasses.replace(wanted, scan_layers=stored.scan_layers)
  params = restore(build.Model(as_stored).abstract_params(mesh, rules))
  relaid = build.relayout(params, as_stored, scan_layers=wanted.scan_layers)
  target = build.Model(wanted).abstract_params(mesh, rules)
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), relaid, target)


def load_imported(path: str | os.PathLike, mesh: Mesh, rules, *, weights: bool = True, **overrides) -> Pretrained:
  """Restores an imported directory onto `mesh`; only the runtime fields (build.RUNTIME_FIELDS) may change
  (a different scan_layers relays the parameters out)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).absolute()
  where = str(path / MODEL_CONFIG)
  try:
    blob = errors.loads_json((path / MODEL_CONFIG).read_text())
  except FileNotFoundError as e:
    raise ConversionError(f"{path}: no {MODEL_CONFIG}; not an imported checkpoint directory") from e
  except json.JSONDecodeError as e:
    raise ConversionError(f"{where}: line {e.lineno}: invalid JSON ({e.msg})") from e
  stored = build.config_from_json(blob, where)
  config = _with_runtime(stored, where, overrides)
  if not weights:
    return Pretrained(config, None, str(path), blob.get("hf_config"))
  params = _restore_relaid(stored, config, mesh, rules,
                           lambda abstract: ocp.StandardCheckpointer().restore(path / PARAMS_DIR, abstract))
  return Pretrained(config, params, str(path), blob.get("hf_config"))


def load_workdir(path: str | os.PathLike, mesh: Mesh, rules, *, weights: bool = True, step: int | None = None,
                 **overrides) -> Pretrained:
  """The model of a training workdir and the parameters of `step` (default: its newest checkpoint)."""
  path = pathlib.Path(path).absolute()
  stored = workdir_lib.read_model(path).config
  config = _with_runtime(stored, str(path / MODEL_CONFIG), overrides)
  hf_config = workdir_lib.read_model_blob(path).get("hf_config")
  step = workdir_lib.resolve_step(path, step)
  if not weights:
    return Pretrained(config, None, str(path), hf_config, step=step)
  from instruct_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  params = _restore_relaid(stored, config, mesh, rules, lambda abstract: ckpt_lib.restore_params(
      path / workdir_lib.CHECKPOINTS, abstract, step))
  return Pretrained(config, params, str(path), hf_config, step=step)


def source_kind(path: str | os.PathLike) -> str:
  """"workdir", "imported", "hf" or "t5x": what kind of checkpoint `path` is (ConversionError if none)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ConversionError(f"{path}: no such file or directory")
  if workdir_lib.is_workdir(path):
    return "workdir"
  if (path / MODEL_CONFIG).is_file():
    return "imported"
  if (path / "config.json").is_file():
    return "hf"
  if t5x.is_t5x(path):
    return "t5x"
  raise ConversionError(f"{path}: neither a training workdir, an imported directory ({MODEL_CONFIG}), a Hugging "
                        "Face directory (config.json) nor a T5X checkpoint ('checkpoint' file)")


def load_pretrained(path: str | os.PathLike, mesh: Mesh, rules, *, allow_pickle: bool = False,
                    allow_unknown_fields: bool = False, weights: bool = True, step: int | None = None,
                    **overrides) -> Pretrained:
  """A training workdir, an imported directory, a Hugging Face directory or a T5X checkpoint, whichever
  `path` is: what `config.init_from` and `convert --src` point at.

  `overrides` are runtime config fields (dtype, param_dtype, scan_layers, remat_policy, dropout_rate); the
  shape is the checkpoint's. weights=False reads only the model config (params is None): the trainer does
  that first and reads the weights only when it is not resuming from its own checkpoint. `step` picks a
  workdir's checkpoint (default: the newest).
  """
  kind = source_kind(path)
  if kind == "workdir":
    return load_workdir(path, mesh, rules, weights=weights, step=step, **overrides)
  if step is not None:
    raise ConversionError(f"{path}: a step can only be chosen for a training workdir, not a {kind} checkpoint")
  if kind == "imported":
    return load_imported(path, mesh, rules, weights=weights, **overrides)
  if kind == "hf":
    return import_hf(path, mesh, rules, allow_pickle=allow_pickle, allow_unknown_fields=allow_unknown_fields,
                     weights=weights, **overrides)
  return import_t5x(path, mesh, rules, weights=weights, **overrides)


# ---------------------------------------------------------------- export

def _write_safetensors(out_dir: pathlib.Path, items, max_shard_bytes: int) -> list[str]:
  """model.safetensors, or model-0000k-of-0000n.safetensors + index; one shard in host memory at a time."""
  shards, sizes = [[]], [0]
  for name, produce, size in items:
    if shards[-1] and sizes[-1] + size > max_shard_bytes:
      shards.append([])
      sizes.append(0)
    shards[-1].append((name, produce))
    sizes[-1] += size
  n = len(shards)
  files = [tensors.SAFETENSORS_SINGLE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                                                          for k in range(n)]
  weight_map = {}
  for filename, shard in zip(files, shards):
    save_file({name: produce() for name, produce in shard}, out_dir / filename, metadata={"format": "pt"})
    weight_map.update({name: filename for name, _ in shard})
    logging.info("wrote %s (%d tensors)", out_dir / filename, len(shard))
  if n > 1:
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / tensors.SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    files.append(tensors.SAFETENSORS_INDEX)
  return files


def export_hf(config: ModelConfig, params, dst: str | os.PathLike, *, hf_base: dict | None = None,
              dtype=None, max_shard_bytes: int = 2 * 1024**3, tokenizer: tokenizer_lib.Tokenizer | None = None,
              tokenizer_src=None, chat_template: str | None = None, stop_id: int | None = None) -> list[str]:
  """Writes config.json + safetensors (sharded above `max_shard_bytes`) that transformers loads.

  `hf_base` (the imported config.json) keeps bookkeeping fields and the model type (e.g. mistral); `dtype`
  defaults to the parameters' dtype. With `tokenizer`, its files go beside the weights (in the form
  `AutoTokenizer.from_pretrained` reads: `Tokenizer.save_for_hf`) and config.json and
  generation_config.json carry its special token ids; `tokenizer_src` (a source directory) contributes its
  generation_config.json when it has one; `chat_template` (a run's named chat format) goes into
  tokenizer_config.json, so `apply_chat_template` renders prompts as the run did; `stop_id` (the chat format's
  end-of-turn id) joins generation_config.json's eos_token_id, so `generate` stops at the end of a turn. Host
  memory: one parameter plus one output shard at a time. A model with LoRA adapters is exported merged (kernel +
  alpha/rank * A @ B; `export_peft` writes the adapters). `dst` is written whole or not at all (outdir.replacing).
  """
  with outdir.replacing(dst, to="hf") as tmp:
    return _export_hf(config, params, tmp, hf_base=hf_base, dtype=dtype, max_shard_bytes=max_shard_bytes,
                      tokenizer=tokenizer, tokenizer_src=tokenizer_src, chat_template=chat_template, stop_id=stop_id)


def _export_hf(config: ModelConfig, params, dst: pathlib.Path, *, hf_base, dtype, max_shard_bytes, tokenizer,
               tokenizer_src, chat_template, stop_id) -> list[str]:
  config, params = lora_lib.merge(config, params)
  family = families.of_config(config)
  maps = family.tensor_maps(config)
  tensors.check_paths(maps, tensors.param_paths(params), str(dst))
  np_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else jax.tree.leaves(params)[0].dtype))
  files = _write_safetensors(dst, tensors.export_tensors(params, maps, np_dtype), max_shard_bytes)
  ids = family.token_ids(tokenizer) if tokenizer is not None else {}
  hf = family.hf_config(config, hf_base, np_dtype.name, ids)
  (dst / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  files.append("config.json")
  if tokenizer is not None:
    files += tokenizer.save_for_hf(dst, family.ROW_FORMAT)
    if chat_template is not None:
      tokenizer_config = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
      tokenizer_config["chat_template"] = chat_template
      (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
  source_generation = (outdir.checked_source_file(tokenizer_src, "generation_config.json")
                       if tokenizer_src is not None else None)
  if source_generation is not None:
    outdir.validate_tokenizer_file(source_generation)
    shutil.copyfile(source_generation, dst / "generation_config.json")
    files.append("generation_config.json")
  elif ids:
    (dst / "generation_config.json").write_text(json.dumps({k: v for k, v in ids.items() if v is not None},
                                                           indent=2) + "\n")
    files.append("generation_config.json")
  if stop_id is not None:
    _add_stop_id(dst / "generation_config.json", stop_id)
  return sorted(set(files))


def _add_stop_id(file: pathlib.Path, stop: int) -> None:
  """generation_config.json's eos_token_id with the chat format's end-of-turn id, so generate stops there too."""
  if not file.is_file():
    return
  config = json.loads(file.read_text())
  eos = config.get("eos_token_id")
  eos = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
  config["eos_token_id"] = eos + [stop] if stop not in eos else eos
  file.write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------- tokenizer

def load_tokenizer(path: str | os.PathLike) -> tokenizer_lib.Tokenizer:
  """The tokenizer that belongs to a checkpoint: a workdir's tokenizer/, or the tokenizer files of a Hugging
  Face or imported directory (spiece.model, tokenizer.model or tokenizer.json)."""
  path = pathlib.Path(path)
  if workdir_lib.is_workdir(path):
    return workdir_lib.tokenizer(path)
  try:
    return tokenizer_lib.load(path)
  except tokenizer_lib.TokenizerNotFound as e:
    raise ConversionError(f"{path} holds no tokenizer ({e}); set config.tokenizer.path to the model's own "
                          "tokenizer file") from None


def check_tokenizer(pretrained: Pretrained, tokenizer: tokenizer_lib.Tokenizer, where: str) -> None:
  """The tokenizer must fit the checkpoint: ids within its vocabulary, special ids as its config.json says."""
  if pretrained.config.vocab_size < tokenizer.vocab_size:
    raise ConversionError(f"{where}: the model's vocabulary ({pretrained.config.vocab_size}) is smaller than the "
                          f"tokenizer's ({tokenizer.vocab_size}, {tokenizer.model_path}); use the checkpoint's own "
                          "tokenizer (leave config.tokenizer.path empty to take it from the checkpoint)")
  hf = pretrained.hf_config or {}
  for name, ours in (("eos_token_id", tokenizer.eos_id), ("bos_token_id", tokenizer.bos_id)):
    theirs = hf.get(name)
    theirs = theirs[0] if isinstance(theirs, list) and theirs else theirs
    if isinstance(theirs, int) and ours >= 0 and theirs != ours:
      raise ConversionError(f"{where}: the checkpoint's {name} is {theirs} but the tokenizer {tokenizer.model_path} "
                            f"has {ours}; use the checkpoint's own tokenizer")
