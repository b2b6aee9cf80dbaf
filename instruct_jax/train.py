"""Instruction tuning: `train_and_evaluate(config, workdir)` reads top to bottom; the absl main is at the end.

    python -m instruct_jax.train --config configs/quickstart.py --workdir /tmp/quickstart \\
        [--config.total_steps=200 ...]

mesh -> tokenizer -> data -> model and optimizer born sharded -> jitted step -> resume (or init_from)
-> evaluation before training -> loop (step t+1 dispatched before step t's metrics reach the host;
metrics, checkpoints, periodic evaluation; SIGTERM saves and exits) -> final checkpoint and evaluation.
Restarting with the same workdir resumes from the newest readable checkpoint, data iterator included.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import metrics as metrics_lib
from instruct_jax import host, optim, predict, sampling, sharding, step
from instruct_jax.data import builtin
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import render as render_lib
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.evals import evaluators
from instruct_jax.models import convert, decoder, t5

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(model_cfg, vocab_size: int | None):
  """A T5 or decoder-only module from config.model ({kind, size, dtype, param_dtype, overrides})."""
  overrides = dict(model_cfg.get("overrides", {}) or {})
  overrides.update(dtype=DTYPES[model_cfg.get("dtype", "float32")],
                   param_dtype=DTYPES[model_cfg.get("param_dtype", "float32")],
                   remat_policy=model_cfg.get("remat_policy", "none"), scan_layers=model_cfg.get("scan_layers", False))
  if vocab_size is not None:
    overrides["vocab_size"] = vocab_size
  if model_cfg.kind == "t5":
    return t5.T5(t5.config_for(model_cfg.size, **overrides))
  if model_cfg.kind == "decoder":
    return decoder.Decoder(decoder.config_for(model_cfg.size, **overrides))
  raise ValueError(f"config.model.kind must be 't5' or 'decoder', got {model_cfg.kind!r}")


def model_kind(config) -> str:
  return "encoder_decoder" if config.model.kind == "t5" else "decoder"


def padded_vocab(n: int, multiple: int = 128) -> int:
  return -(-n // multiple) * multiple


def load_tokenizer(config, workdir: str, catalogues) -> tokenizer_lib.Tokenizer:
  """config.tokenizer.path, or a SentencePiece model trained once on the mixture into workdir/tokenizer."""
  if config.tokenizer.get("path"):
    return tokenizer_lib.Tokenizer(config.tokenizer.path)
  out_dir = os.path.join(workdir, "tokenizer")
  path = os.path.join(out_dir, tokenizer_lib.MODEL_FILENAME)
  if jax.process_index() == 0 and not os.path.exists(path):
    tasks, mixes = catalogues
    rates = mixtures_lib.task_rates(config.data.mixture, tasks, mixes)
    rcfg = pipeline_lib.PipelineConfig.from_config(config.data).render
    texts = render_lib.sample_texts(rates, tasks, rcfg, n=config.tokenizer.train_examples, seed=config.seed)
    if config.eval.get("held_out_cluster"):  # the tokenizer may see held-out text; the model never trains on it
      held_out = {f"builtin/{n}": 1.0 for n in builtin.CLUSTERS[config.eval.held_out_cluster]}
      texts += render_lib.sample_texts(held_out, tasks, render_lib.RenderConfig(), n=2000, seed=config.seed)
    tokenizer_lib.train(texts, vocab_size=config.tokenizer.vocab_size, out_dir=out_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  return tokenizer_lib.Tokenizer(path)


def trainer_checkpoints(path: str) -> str:
  """The checkpoints directory of a trainer workdir, or `path` itself if it is one."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def start_from_pretrained(config) -> bool:
  """True when config.init_from names an imported, Hugging Face or T5X checkpoint (not a trainer's)."""
  path = config.get("init_from")
  if not path:
    return False
  ckpts = trainer_checkpoints(path)
  return not any(name.isdigit() for name in (os.listdir(ckpts) if os.path.isdir(ckpts) else []))


def load_pretrained(config, mesh, rules, *, weights: bool = True):
  """Weights and model config from config.init_from, in this run's dtypes and shardings (weights=False:
  the config only).

  A converted directory keeps the layer layout (unrolled or scanned) it was converted with; Hugging Face
  and T5X sources are laid out as config.model.scan_layers says.
  """
  m = config.model
  overrides = dict(dtype=m.get("dtype", "float32"), param_dtype=m.get("param_dtype", "float32"),
                   remat_policy=m.get("remat_policy", "none"))
  if "dropout_rate" in (m.get("overrides") or {}):
    overrides["dropout_rate"] = m.overrides["dropout_rate"]
  if not os.path.isfile(os.path.join(config.init_from, convert.MODEL_CONFIG)):
    overrides["scan_layers"] = m.get("scan_layers", False)
  return convert.load_pretrained(config.init_from, mesh, rules, weights=weights, **overrides)


def check_tokenizer_matches(pretrained, tokenizer, init_from: str) -> None:
  """The tokenizer must be the checkpoint's own: its special ids must agree with the checkpoint config."""
  if pretrained.config.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"init_from {init_from}: the model's vocabulary ({pretrained.config.vocab_size}) is smaller "
                     f"than the tokenizer's ({tokenizer.vocab_size}); set config.tokenizer.path to the "
                     "checkpoint's own tokenizer")
  hf = pretrained.hf_config or {}
  for name, ours in (("eos_token_id", tokenizer.eos_id), ("bos_token_id", tokenizer.bos_id)):
    theirs = hf.get(name)
    theirs = theirs[0] if isinstance(theirs, list) and theirs else theirs
    if isinstance(theirs, int) and ours >= 0 and theirs != ours:
      raise ValueError(f"init_from {init_from}: the checkpoint's {name} is {theirs} but the tokenizer "
                       f"{tokenizer.model_path} has {ours}; use the checkpoint's own tokenizer")


def eval_sets(config) -> list[evaluators.EvalSet]:
  e = config.eval
  if e.get("tasks"):
    return [evaluators.EvalSet("tasks", tuple(e.tasks), None, e.get("split", "test"), e.num_examples)]
  return evaluators.builtin_eval_sets(held_out_cluster=e.get("held_out_cluster"),
                                      seen_templates=tuple(e.seen_templates),
                                      unseen_templates=tuple(e.get("unseen_templates", ())),
                                      num_examples=e.num_examples)


def run_evaluation(model, params, tokenizer, config, rows, mesh, rules):
  """Generates and scores `rows`; returns (scored rows, summary)."""
  e = config.eval
  decode_cfg = sampling.DecodeConfig(max_new_tokens=e.max_new_tokens, num_beams=e.get("num_beams", 1))
  gen = predict.make_generate_fn(model, params, tokenizer, decode_cfg, batch_size=e.batch_size,
                                 max_prompt_tokens=config.data.inputs_length, mesh=mesh, rules=rules)
  loglik = None
  if e.get("rank_classification", True):
    loglik = predict.make_loglik_fn(model, params, tokenizer, batch_size=e.batch_size,
                                    max_prompt_tokens=config.data.inputs_length, mesh=mesh, rules=rules)
  scored = evaluators.evaluate(rows, gen, loglik)
  return scored, evaluators.summarize(scored)


def _task_counts(batch: dict[str, np.ndarray], num_tasks: int) -> np.ndarray:
  """Examples per task in a (possibly packed) batch: one per (row, segment)."""
  seg, task = batch["decoder_segment_ids"], batch["task_index"]
  starts = (seg > 0) & np.concatenate([np.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  return np.bincount(task[starts], minlength=num_tasks)


def _host_rows(batch: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
  if config.get("host_input", "own_share") != "slice_of_global" or jax.process_count() == 1:
    return batch
  n = config.data.batch_size // jax.process_count()
  return {k: v[jax.process_index() * n:(jax.process_index() + 1) * n] for k, v in batch.items()}


def _token_counts(batch: dict[str, np.ndarray]) -> tuple[int, int]:
  total = nonpad = 0
  for prefix in ("encoder", "decoder"):
    if f"{prefix}_segment_ids" in batch:
      total += batch[f"{prefix}_segment_ids"].size
      nonpad += int((batch[f"{prefix}_segment_ids"] > 0).sum())
  return total, nonpad


class _Preemption:
  """Turns SIGTERM (a TPU VM preemption notice) into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): preemption handling is off
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates; returns {"before": summary|None, "after": summary, "final_step": int, ...}."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  preemption = _Preemption()

  # Mesh and sharding rules.
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.get_rules(config.sharding)
  logging.info("mesh %s, rules %s", dict(mesh.shape), config.sharding)

  # Tokenizer and data.
  paths = tasks_lib.DataPaths(superni_dir=config.data_paths.get("superni_dir"),
                              tfds_data_dir=config.data_paths.get("tfds_data_dir"),
                              instruction_files=dict(config.data_paths.get("instruction_files", {})))
  catalogues = mixtures_lib.catalogues(paths)
  tokenizer = load_tokenizer(config, workdir, catalogues)
  data_cfg = pipeline_lib.PipelineConfig.from_config({**config.data.to_dict(), "model_kind": model_kind(config),
                                                     "seed": config.seed})
  if config.get("host_input", "own_share") == "slice_of_global":
    # Every host builds the same global batches and keeps its rows: exact across process counts (tests).
    pipe = pipeline_lib.make_pipeline(data_cfg, tokenizer, tasks=catalogues[0], mixtures=catalogues[1],
                                      process_index=0, process_count=1)
  else:  # each host reads only its share of every task
    pipe = pipeline_lib.make_pipeline(data_cfg, tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  data_iter = iter(pipe.dataset)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  # Model and optimizer, born sharded (shapes from a pretrained checkpoint when init_from names one; its
  # weights are read below, only if there is no checkpoint of this run to resume).
  pretrained = load_pretrained(config, mesh, rules, weights=False) if start_from_pretrained(config) else None
  if pretrained is not None:
    check_tokenizer_matches(pretrained, tokenizer, config.init_from)
    model = convert.model_for(pretrained.config)
  else:
    model = build_model(config.model, padded_vocab(tokenizer.vocab_size))
  optim_cfg = optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps})
  tx, schedule = optim.make_optimizer(optim_cfg), optim.make_schedule(optim_cfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(config.seed))
  loss_cfg = step.LossConfig(**config.loss.to_dict())
  train_step = step.jit_train_step(model, tx, loss_cfg, schedule, mesh, rules, state_sh,
                                   num_microbatches=config.num_microbatches)

  # Resume, or start from another checkpoint's weights.
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                                       keep=config.keep_checkpoints)
  restored = checkpointer.restore_latest(ckpt_lib.abstract_like(state, state_sh), data_iter)
  if restored is not None:
    state, start = restored
    logging.info("resumed from step %d", start)
    print(f"Resumed from checkpoint step {start}", flush=True)
  else:
    start = 0
    if pretrained is not None:
      weights = load_pretrained(config, mesh, rules).params
      state = state.replace(params=jax.tree.map(lambda p, s: jax.device_put(p, s), weights, state_sh.params))
      print(f"Initialised weights from {config.init_from}", flush=True)
    elif config.get("init_from"):
      params = ckpt_lib.restore_params(trainer_checkpoints(config.init_from),
                                       ckpt_lib.abstract_like(state.params, state_sh.params))
      state = state.replace(params=params)
      print(f"Initialised weights from {config.init_from}", flush=True)

  # Evaluation before training.
  rows = evaluators.render_eval_examples(eval_sets(config), catalogues[0])
  result: dict[str, Any] = {"before": None}
  if start == 0 and config.eval.before_training and rows:
    _, result["before"] = run_evaluation(model, state.params, tokenizer, config, rows, mesh, rules)
    print("Before training:\n" + evaluators.format_table(result["before"]), flush=True)

  # The loop.
  writer = metrics_lib.MetricWriter(workdir)
  progress = metrics_lib.Progress(config.total_steps, start, config.log_every)
  rng = jax.random.key(config.seed + 1)
  pending = None  # (step, device metrics, host stats) of the step in flight
  window = _Window(len(pipe.task_names))
  seen = np.zeros(len(pipe.task_names), np.int64)
  stopped_early = False

  def finish_pending():
    nonlocal pending
    if pending is None:
      return
    done_step, device_metrics, stats = pending
    pending = None
    host = jax.device_get(device_metrics)
    metrics_lib.check_finite(done_step, host)
    window.add(host, stats)
    if done_step % config.log_every == 0 or done_step == config.total_steps:
      scalars = window.summarize(pipe.task_names, seen)
      writer.write(done_step, scalars, prefix="train/")
      writer.flush()
      progress.update(done_step, scalars)

  try:
    for t in range(start, config.total_steps):
      host_batch = _host_rows(next(data_iter), config)
      counts = _task_counts(host_batch, len(pipe.task_names))
      seen += counts
      stats = (time.time(), *_token_counts(host_batch), counts)
      batch = pipeline_lib.to_global_batch({k: v for k, v in host_batch.items()
                                            if k not in pipeline_lib.META_FEATURES}, batch_sharding)
      state, device_metrics = train_step(state, batch, rng)  # dispatch step t + 1 ...
      finish_pending()  # ... then pull step t's metrics to the host
      pending = (t + 1, device_metrics, stats)
      if checkpointer.every and (t + 1) % checkpointer.every == 0:
        finish_pending()  # never save a state whose loss was not finite
        checkpointer.save(t + 1, state, data_iter)
      if config.eval_every and (t + 1) % config.eval_every == 0 and t + 1 < config.total_steps and rows:
        _, summary = run_evaluation(model, state.params, tokenizer, config, rows, mesh, rules)
        writer.write(t + 1, evaluators.flat_scalars(summary))
      # Every process must agree to stop at the same step; asking the others costs a host sync, so
      # multi-process runs ask only every log_every steps.
      if (jax.process_count() == 1 or (t + 1) % config.log_every == 0) and _any_process(preemption.requested):
        finish_pending()
        checkpointer.save(t + 1, state, data_iter, force=True)
        print(f"SIGTERM received: saved checkpoint at step {t + 1} and stopped", flush=True)
        stopped_early = True
        break
    finish_pending()
  except metrics_lib.NonFiniteLossError as e:
    writer.close()
    checkpointer.close()
    print(f"ERROR: {e}. Last good checkpoint: {checkpointer.steps()[-1:] or 'none'}", file=sys.stderr, flush=True)
    raise
  final_step = int(jax.device_get(state.step))
  checkpointer.save(final_step, state, data_iter, force=True)
  result.update(final_step=final_step, stopped_early=stopped_early, examples_seen=dict(zip(pipe.task_names,
                                                                                          seen.tolist())))
  if not stopped_early and rows:
    scored, result["after"] = run_evaluation(model, state.params, tokenizer, config, rows, mesh, rules)
    writer.write(final_step, evaluators.flat_scalars(result["after"]))
    if jax.process_index() == 0:
      evaluators.write_jsonl(os.path.join(workdir, "predictions.jsonl"), scored)
      with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump({"before": result["before"], "after": result["after"], "step": final_step}, f, indent=1)
    print(f"After {final_step} steps" + (" (before -> after)" if result["before"] else "") + ":\n"
          + evaluators.format_table(result["after"], result["before"]), flush=True)
  writer.close()
  checkpointer.close()
  return result


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.array(flag)).any())


@dataclasses.dataclass
class _Window:
  """Step metrics gathered on the host between two log lines."""
  num_tasks: int
  steps: int = 0
  sums: dict | None = None
  tokens: int = 0
  nonpad: int = 0
  t_first: float | None = None
  t_last: float | None = None

  def add(self, host: dict, stats) -> None:
    t_dispatch, tokens, nonpad, _ = stats
    self.steps += 1
    self.sums = dict(host) if self.sums is None else {k: self.sums[k] + host[k] for k in host}
    self.tokens += tokens
    self.nonpad += nonpad
    self.t_first = t_dispatch if self.t_first is None else self.t_first
    self.t_last = time.time()

  def summarize(self, task_names, seen) -> dict[str, float]:
    n = max(self.steps, 1)
    means = {k: v / n if k in ("loss", "learning_rate", "grad_norm", "param_norm") else v
             for k, v in self.sums.items()}
    out = metrics_lib.summarize_step(means, seconds=self.t_last - self.t_first, tokens=self.tokens,
                                     nonpad_tokens=self.nonpad, task_names=task_names, task_counts=seen)
    self.steps, self.sums, self.tokens, self.nonpad, self.t_first = 0, None, 0, 0, None
    return out


def _define_flags() -> None:
  """Flags exist only when the trainer runs as a program (other CLIs import this module)."""
  config_flags.DEFINE_config_file("config", None, "Python config file (get_config).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation output.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() and let JAX find the other "
                    "processes (TPU VM pods, SLURM, GKE); the launchers in launch/ set this.")
  flags.DEFINE_bool("keep_freed_memory", None, "Let glibc malloc keep freed memory for the next step instead "
                    "of returning it to the OS (instruct_jax/host.py; ~12% faster CPU steps; the process "
                    "holds its peak memory). Default: on when JAX can only use the CPU.")


def maybe_initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                                 distributed: bool = False) -> None:
  """jax.distributed.initialize when launched as one of several processes.

  Explicit coordinates (--coordinator_address ...) win; --distributed, or a SLURM job of several tasks,
  lets JAX detect the cluster itself (on a TPU VM pod it asks the metadata server).
  """
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif distributed or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None or f.workdir is None:
    raise app.UsageError("--config and --workdir are required")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  if f.keep_freed_memory or (f.keep_freed_memory is None and host.cpu_only()):
    host.keep_freed_memory()
  maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
  train_and_evaluate(f.config, f.workdir)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
