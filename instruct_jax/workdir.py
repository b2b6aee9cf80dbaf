"""A training run's directory: what the trainer writes, and what generate, evaluate, convert and init_from read.

    W/config.json           the run's config, every key (`read_config` lays it over configs.base())
    W/model_config.json     the model: {kind, config, source, hf_config}, the format of an imported directory
    W/tokenizer/            the run's tokenizer (a copy of the one it was given, or the one trained here)
    W/checkpoints/<step>/   orbax: `state` (params, optimizer state, step) and `data` (the iterator)
    W/metrics.jsonl, W/tensorboard/, W/eval.json, W/predictions.jsonl

A workdir describes itself: the model (whatever checkpoint it started from) and the tokenizer come from
it, so programs that load one need nothing but its path. This module is that loader; it never imports
the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import ml_collections

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import configs, errors, sharding
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import build

CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"


class WorkdirError(errors.UserError, ValueError):
  """A directory that is not a workdir, or lacks what was asked of it (a checkpoint, a step)."""


def is_workdir(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / CONFIG).is_file() and (path / MODEL_CONFIG).is_file()


def _require(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_dir():
    raise WorkdirError(f"{path}: no such directory")
  for name in (CONFIG, MODEL_CONFIG):
    if not (path / name).is_file():
      raise WorkdirError(f"{path} is not a workdir written by instruct_jax.train (it has no {name})")
  return path


def read_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  path = _require(path)
  try:
    return configs.from_json(json.loads((path / CONFIG).read_text()))
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path / CONFIG}: line {e.lineno}: invalid JSON ({e.msg})") from None


def read_model_blob(path: str | os.PathLike) -> dict:
  file = pathlib.Path(path) / MODEL_CONFIG
  try:
    return json.loads(file.read_text())
  except FileNotFoundError:
    raise WorkdirError(f"{path}: no {MODEL_CONFIG}") from None
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from None


def read_model(path: str | os.PathLike) -> build.Model:
  """The run's model (shape and runtime settings) from model_config.json."""
  return build.Model(build.config_from_json(read_model_blob(path), str(pathlib.Path(path) / MODEL_CONFIG)))


def write_model(path: str | os.PathLike, model: build.Model, *, source: str, hf_config: dict | None) -> None:
  """model_config.json (written once, before the first checkpoint; `source` is config.init_from or "")."""
  blob = {**build.config_to_json(model.config), "source": source, "hf_config": hf_config}
  _write_atomically(pathlib.Path(path) / MODEL_CONFIG, json.dumps(blob, indent=2) + "\n")


def _write_atomically(file: pathlib.Path, text: str) -> None:
  tmp = file.with_name(file.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, file)


def tokenizer(path: str | os.PathLike) -> tokenizer_lib.Tokenizer:
  directory = pathlib.Path(path) / TOKENIZER
  if not directory.is_dir():
    raise WorkdirError(f"{path}: no {TOKENIZER}/ directory (the run's tokenizer)")
  return tokenizer_lib.load(directory)


def checkpoint_steps(path: str | os.PathLike) -> list[int]:
  directory = pathlib.Path(path) / CHECKPOINTS
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_step(path: str | os.PathLike, step: int | None) -> int:
  """`step`, checked to exist, or the newest checkpoint step of the workdir."""
  steps = checkpoint_steps(path)
  if not steps:
    raise WorkdirError(f"{path} has no checkpoints yet ({pathlib.Path(path) / CHECKPOINTS} is empty or absent); "
                       "train it first")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise WorkdirError(f"{path} has no checkpoint of step {step}; it has steps {steps}")
  return step


def restore_params(path: str | os.PathLike, model: build.Model, mesh, rules, step: int | None = None):
  """(params of `step`, or of the newest checkpoint, laid out on `mesh`; the step)."""
  step = resolve_step(path, step)
  abstract = model.abstract_params(mesh, rules)
  return ckpt_lib.restore_params(pathlib.Path(path) / CHECKPOINTS, abstract, step), step


def inference_mesh(config: ml_collections.ConfigDict):
  """The run's mesh and rules if this machine has its devices, else FSDP over every local device."""
  try:
    return sharding.make_mesh(dict(config.mesh)), sharding.get_rules(config.sharding)
  except sharding.MeshError:
    return sharding.make_mesh({"fsdp": -1}), sharding.get_rules("fsdp")


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  model: build.Model
  params: object
  tokenizer: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: dict
  step: int


def load(path: str | os.PathLike, *, step: int | None = None) -> Loaded:
  """A workdir's model, tokenizer and the parameters of `step` (default: its newest checkpoint)."""
  config = read_config(path)
  resolve_step(path, step)  # fail on a missing checkpoint before building anything
  model = read_model(path)
  tok = tokenizer(path)
  mesh, rules = inference_mesh(config)
  params, step = restore_params(path, model, mesh, rules, step)
  return Loaded(config, model, params, tok, mesh, rules, step)
