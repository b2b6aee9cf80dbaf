"""A training run's directory: what the trainer writes, and what generate, evaluate, convert and init_from read.

    W/config.json           the run's config as it started, every key (`read_config` lays it over configs.base())
    W/resume_history.jsonl  one line per restart: the step it resumed from and the RESUMABLE keys it changed
    W/model_config.json     the model: {kind, config, source, hf_config}, the format of an imported directory
    W/tokenizer/            the run's tokenizer (a copy of the one it was given, or the one trained here)
    W/checkpoints/<step>/   orbax: `state` (params, optimizer state, step) and `data` (the iterator)
    W/metrics.jsonl, W/tensorboard/, W/eval_results.csv (every evaluation, one row per metric)
    W/eval.json, W/predictions.jsonl (and eval_<name>.json, predictions_<name>.jsonl per config.evals entry)
    W/lock                  who trains here now: {pid, host, started}; held with flock while a trainer runs

A workdir describes itself: the model (whatever checkpoint it started from) and the tokenizer come from
it, so programs that load one need nothing but its path. A LoRA run's model_config.json holds its `lora`
settings and its checkpoints the adapters, so generate and evaluate load the adapted model. This module reads
and writes those files; `plan.load` builds a usable model from them (or from an init_from checkpoint).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator, Sequence

import ml_collections
from absl import logging

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import configs, errors, sharding
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.models import attention, build

CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
RESUME_HISTORY = "resume_history.jsonl"
LOCK = "lock"

# Keys a restart may change: how long to train, how often to log, save and evaluate, what to evaluate (every
# config.evals entry too: evaluators may be added, changed or removed), and how the same computation is laid out or
# carried out (mesh, sharding, remat, microbatches, compute dtype, attention kernel, reader threads). Every other key
# changes the model, the tokenizer, the data order or the optimisation, so a restart with another value is refused.
RESUMABLE = (
    "total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "preemption_exit_code",
    "num_microbatches", "model.dtype", "model.attention",
    "eval.tasks", "eval.split", "eval.seen_templates", "eval.unseen_templates", "eval.num_examples",
    "eval.max_new_tokens", "eval.num_beams", "eval.batch_size", "eval.before_training", "eval.rank_classification",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "sharding", "model.remat_policy", "data.read_threads",
    "data.prefetch", "data.strict", "data.truncation_warning", "metrics.wandb", "metrics.wandb_mode",
)


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


@contextlib.contextmanager
def lock(path: str | os.PathLike, *, primary: bool = True) -> Iterator[pathlib.Path]:
  """Holds `path`/lock while a trainer runs there, so a second trainer on the same workdir is refused at once.

  The lock is an flock on W/lock, which records the holder (pid, host, start time) for the refusal's message; the
  kernel drops it when its process dies, so a lock left by a killed run is simply taken over. Where the filesystem
  has no flock (some FUSE mounts) the record alone decides: a holder on this host whose pid is gone is stale and
  taken over; one on another host is refused (delete W/lock once that run is known dead). Only the primary process
  (process 0 of a multi-host run) takes the lock. A directory made here that ends up holding nothing but the lock
  (a config refused before anything was written) is removed again.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir {path} is a file, not a directory")
  if not primary:
    yield path
    return
  created = not path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"--workdir {path}: cannot create it or its lock ({e.strerror or e})") from None
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  try:
    holder = _read_lock(fd)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirError(_in_use(path, holder)) from None
    except OSError as e:  # no flock on this filesystem: the record alone decides
      if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
        raise
      if holder and not holder.get("released") and not _dead_here(holder):
        raise WorkdirError(_in_use(path, holder) + f" (no flock here: if it is dead, delete {path / LOCK})") from None
    if holder and not holder.get("released"):
      print(f"note: {path} was last locked by pid {holder.get('pid')} on {holder.get('host')}, which is no longer "
            "running; taking the lock over", flush=True)
    _write_lock(fd, me)
    yield path
  finally:
    _release(fd, me)
    if created and {p.name for p in path.iterdir()} == {LOCK}:
      (path / LOCK).unlink()
      path.rmdir()


def _read_lock(fd: int) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    holder = json.loads(raw) if raw.strip() else None
  except ValueError:
    return None  # half-written by a process killed at that instant: nobody's
  return holder if isinstance(holder, dict) else None


def _write_lock(fd: int, record: dict) -> None:
  blob = (json.dumps(record) + "\n").encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, blob, 0)


def _release(fd: int, me: dict) -> None:
  try:
    if _read_lock(fd) == me:
      _write_lock(fd, {**me, "released": True})
  except OSError as e:  # a full disk: the flock still goes with the descriptor; the error that got us here counts
    logging.warning("could not mark the workdir lock released (%s); the next trainer takes it over", e)
  finally:
    os.close(fd)  # drops the flock


def _dead_here(holder: dict) -> bool:
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder.get("pid", -1)), 0)
  except ProcessLookupError:
    return True
  except (OSError, ValueError):
    return False
  return False


def _in_use(path: pathlib.Path, holder: dict | None) -> str:
  who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder else
         "a process that has not yet written its name")
  return f"--workdir {path} is in use by another trainer ({who}): wait for it to end or use another workdir"


def read_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  return _config_file(_require(path))


def _config_file(path: pathlib.Path) -> ml_collections.ConfigDict:
  try:
    return configs.from_json(errors.loads_json((path / CONFIG).read_text()))
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path / CONFIG}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _comparable(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{dotted key: JSON text} of every key, the open maps' entries one by one."""
  out = {}
  for key, value in configs.leaves(config).items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f"{key}.{k}": json.dumps(v, sort_keys=True) for k, v in value.to_dict().items()})
    else:
      out[key] = json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)
  return out


def check_restart(path: str | os.PathLike, config: ml_collections.ConfigDict,
                  flag_keys: Sequence[str] = ()) -> dict[str, list]:
  """Checks a restart's config against the one the workdir recorded; returns the RESUMABLE keys it changes
  ({key: [recorded, now]}; empty for a new workdir). Raises WorkdirError, naming every other differing key,
  before anything is written."""
  path = pathlib.Path(path)
  if not (path / CONFIG).is_file():
    return {}
  recorded, now = _comparable(_config_file(path)), _comparable(config)
  differ = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
  refused = [k for k in differ if k not in RESUMABLE and not k.startswith("evals.")]  # evaluators may change
  if refused:
    shown = ", ".join(f"{'--config.' if k in set(flag_keys) else ''}{k} {recorded.get(k, '(absent)')} -> "
                      f"{now.get(k, '(absent)')}" for k in refused[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    raise WorkdirError(f"{path} was started with other settings ({shown}{more}); a restart may change only the "
                       "keys in instruct_jax/workdir.py RESUMABLE (steps, logging, saving, evaluation except "
                       "eval.held_out_cluster, mesh and layout). Use a new workdir, or the settings it was started "
                       "with" + (
                           "" if checkpoint_steps(path) else " (it has no checkpoint yet: remove it to start over)"))
  return {k: [json.loads(recorded[k]) if k in recorded else None, json.loads(now[k]) if k in now else None]
          for k in differ}


def write_config(path: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """config.json, once: a restart keeps the settings the run started with (see `record_resume`)."""
  file = pathlib.Path(path) / CONFIG
  if not file.is_file():
    write_atomically(file, config.to_json_best_effort(indent=2))


def record_resume(path: str | os.PathLike, *, step: int, changed: dict[str, list]) -> None:
  """Appends a restart (the step it resumed from, the RESUMABLE keys it changed) to resume_history.jsonl."""
  with open(pathlib.Path(path) / RESUME_HISTORY, "a", encoding="utf-8") as f:
    f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from_step": step,
                        "changed": changed}) + "\n")


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


def runnable_here(model: build.Model) -> build.Model:
  """`model`, or with attention "auto" when the kernel it was trained with does not run on this machine (a run
  trained with pallas_tpu, evaluated on a GPU): the attention kernel is a runtime choice, never the weights'."""
  cfg = model.config
  try:
    attention.resolve(cfg.attention, dtype=cfg.dtype, head_dim=cfg.head_dim, dropout_active=False, dense_mask=False)
    return model
  except attention.AttentionError as e:
    logging.warning("%s; using attention 'auto' here", e)
    return build.Model(dataclasses.replace(cfg, attention="auto"))


def write_model(path: str | os.PathLike, model: build.Model, *, source: str, hf_config: dict | None) -> None:
  """model_config.json (written once, before the first checkpoint; `source` is config.init_from or "")."""
  blob = {**build.config_to_json(model.config), "source": source, "hf_config": hf_config}
  write_atomically(pathlib.Path(path) / MODEL_CONFIG, json.dumps(blob, indent=2) + "\n")


write_atomically = errors.write_atomically  # (in the base layer, for the data layer's commands too)


def tokenizer(path: str | os.PathLike) -> tokenizer_lib.Tokenizer:
  directory = pathlib.Path(path) / TOKENIZER
  if not directory.is_dir():
    raise WorkdirError(f"{path}: no {TOKENIZER}/ directory (the run's tokenizer)")
  return tokenizer_lib.load(directory)


def checkpoint_steps(path: str | os.PathLike) -> list[int]:
  """Every checkpoint step directory of the workdir, good or not (see `resolve_step`)."""
  return ckpt_lib.numeric_steps(pathlib.Path(path) / CHECKPOINTS)


def resolve_step(path: str | os.PathLike, step: int | None) -> int:
  """`step`, checked to exist and to pass its checksums, or the newest good checkpoint step of the workdir.

  A bad step is skipped with a one-line warning (and left where it is: the trainer sets it aside).
  """
  steps = checkpoint_steps(path)
  directory = pathlib.Path(path) / CHECKPOINTS
  if not steps:
    raise WorkdirError(f"{path} has no checkpoints yet ({directory} is empty or absent); train it first")
  if step is not None and step not in steps:
    raise WorkdirError(f"{path} has no checkpoint of step {step}; it has steps {steps}")
  try:
    good = ckpt_lib.good_step(directory, step)
  except ckpt_lib.CheckpointError as e:
    raise WorkdirError(str(e)) from None
  if good is None:
    raise WorkdirError(f"{path}: none of its checkpoints {steps} passes its checksums (see the warnings above)")
  return good


def restore_params(path: str | os.PathLike, model: build.Model, mesh, rules, step: int | None = None):
  """(params of `step`, or of the newest good checkpoint, laid out on `mesh`; the step)."""
  step = resolve_step(path, step)
  return restore_step(path, model, mesh, rules, step), step


def restore_step(path, model: build.Model, mesh, rules, step: int):
  """The params of a step `resolve_step` returned (verified already), laid out on `mesh`."""
  return ckpt_lib.restore_params(pathlib.Path(path) / CHECKPOINTS, model.abstract_params(mesh, rules), step)


def inference_mesh(config: ml_collections.ConfigDict):
  """The run's mesh and rules if this machine has its devices, else FSDP over every local device."""
  try:
    return sharding.make_mesh(dict(config.mesh)), sharding.get_rules(config.sharding)
  except sharding.MeshError:
    return sharding.make_mesh({"fsdp": -1}), sharding.get_rules("fsdp")
