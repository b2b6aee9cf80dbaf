"""Instruction tuning: `train_and_evaluate(config, workdir)` reads top to bottom; the absl main is at the end.

    python -m instruct_jax.train --config configs/quickstart.py --workdir /tmp/quickstart \\
        [--config.total_steps=200 ...] [--dry_run]

config check -> mesh -> init_from's model config (no weights yet) -> tokenizer (with the chat format's special
strings it lacks added as tokens: `resolve.chat_tokens`) -> model -> workdir guard
-> data -> train state born sharded -> jitted step -> resume (or init_from's weights) -> evaluation before
training -> loop (step t+1 dispatched before step t's metrics reach the host; metrics, checkpoints,
periodic evaluation; SIGTERM saves and exits) -> final checkpoint and evaluation.

Restarting with the same workdir resumes from the newest good checkpoint (checksums verified; a bad one is
moved aside), data iterator included. A restart may change only the keys in `workdir.RESUMABLE` (it is refused,
before anything is written, naming the keys that differ); config.json keeps the settings the run started with
and resume_history.jsonl the changes. After a SIGTERM save the process exits with config.preemption_exit_code.
The workdir records the model (model_config.json) and the tokenizer (tokenizer/), so generate, evaluate
and convert need nothing but its path. What the config names is resolved by `resolve.py`; `--dry_run`
(`dry_run.py`) resolves everything up to the step without writing anything.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import aot, configs, errors, flops, host, optim, predict, resolve, sharding, step
from instruct_jax import metrics as metrics_lib
from instruct_jax import workdir as workdir_lib
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import packing
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import report as report_lib
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import evaluators
from instruct_jax.evals import score as score_lib
from instruct_jax.dry_run import dry_run
from instruct_jax.models import build


class _PreemptedWaitingForData(Exception):
  """SIGTERM came while a single-process run waited for a batch (`_Preemption.before`: the data position)."""


class _IteratorState:
  """A data iterator's state taken earlier, in the form grain's checkpoint handler saves (its get_state())."""

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> bytes:
    return json.dumps(self._state, indent=1).encode()


class _Preemption:
  """Turns SIGTERM (a TPU VM preemption notice) into a flag the loop checks between steps. While a
  single-process run waits for a batch, SIGTERM ends the wait (a stalled reader must not outlive the notice);
  the iterator's state from before that wait goes with the exception, so the stop still saves every step done."""

  def __init__(self):
    self.requested = False
    self.waiting = False
    self.before: Any = None  # the iterator's state before the newest next_batch (None: it has no get_state)
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): preemption handling is off
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if self.waiting:
      raise _PreemptedWaitingForData()

  def next_batch(self, iterator):
    """next(iterator), given up on SIGTERM in single-process runs. Several processes must stop at a step they
    agree on (checked every log_every steps), so there a SIGTERM only sets the flag."""
    single = jax.process_count() == 1
    self.before = iterator.get_state() if single and hasattr(iterator, "get_state") else None
    self.waiting = single
    try:
      if self.requested and self.waiting:
        raise _PreemptedWaitingForData()
      return next(iterator)
    finally:
      self.waiting = False  # a second SIGTERM from here on only sets the flag


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       flag_keys: Sequence[str] = ()) -> dict[str, Any]:
  """Trains and evaluates; returns {"before": summary|None, "after": summary, "final_step": int, ...}."""
  configs.validate(config, flag_keys=flag_keys)
  changed = workdir_lib.check_restart(workdir, config, flag_keys)  # a restart's settings, before anything is written
  restart = os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG))
  preemption = _Preemption()

  # Mesh and sharding rules.
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.get_rules(config.sharding)
  logging.info("mesh %s, rules %s", dict(mesh.shape), config.sharding)

  # The model (init_from's shape, or config.model's) and its tokenizer; nothing is written until they fit.
  chat = resolve.chat_format(config, workdir)
  catalogues = mixtures_lib.catalogues(tasks_lib.DataPaths.from_config(config.data_paths, strict=config.data.strict,
                                                                       chat_format=chat))
  built_evals = evaluators.from_config(config, *catalogues)  # their tasks and splits, before anything is written
  pretrained = resolve.pretrained_source(config, mesh, rules)
  if pretrained is None:  # a bad model section fails before a tokenizer is trained for it
    build.from_section(config.model, vocab_size=resolve.padded_vocab(config.tokenizer.vocab_size), flag_keys=flag_keys,
                       adapter=resolve.lora_adapter(config, None))
  os.makedirs(workdir, exist_ok=True)
  tokenizer = resolve.load_tokenizer(config, workdir, catalogues, pretrained, chat)
  added = resolve.chat_tokens(config, pretrained, chat)
  tokenizer, pretrained = resolve.add_chat_tokens(tokenizer, added, pretrained)
  model = resolve.resolve_model(config, tokenizer, pretrained, flag_keys)
  attention_plan = resolve.attention_plan(model)
  resolve.guard_workdir(workdir, model)
  resolve.keep_tokenizer(tokenizer, workdir)

  # Data: each host reads its share of every task; every configured file is read and checked now.
  data_cfg = resolve.pipeline_config(config, model)
  pipe = pipeline_lib.make_pipeline(data_cfg, tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  report_lib.check_files(config, catalogues[0], pipe.rates)
  resolve.check_held_out(config, pipe.rates)
  if jax.process_index() == 0:  # the run's settings, recorded once everything they name has been checked
    print(f"attention {attention_plan}", flush=True)
    workdir_lib.write_config(workdir, config)
    if not os.path.isfile(os.path.join(workdir, workdir_lib.MODEL_CONFIG)):
      workdir_lib.write_model(workdir, model, source=config.init_from,
                              hf_config=pretrained.hf_config if pretrained is not None else None)
  data_report = report_lib.TruncationReport(pipe.stats, config.data.truncation_warning)
  data_iter = iter(pipe.dataset)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  # Train state born sharded, and the jitted step.
  optim_cfg = optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps})
  tx, schedule = optim.make_optimizer(optim_cfg), optim.make_schedule(optim_cfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(config.seed))
  loss_cfg = step.LossConfig(**config.loss.to_dict())
  metric_groups = aot.metric_groups(pipe.task_names, catalogues[0])
  group_labels = {"task": pipe.task_names, "template": [str(i) for i in range(metric_groups[1][2])]}
  train_step = step.jit_train_step(model, tx, loss_cfg, schedule, mesh, rules, state_sh,
                                   num_microbatches=config.num_microbatches, metric_groups=metric_groups,
                                   packed=bool(config.data.pack))

  # Resume, or start from init_from's weights (read only when there is nothing of this run to resume).
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINTS), every=config.checkpoint_every,
                                       keep=config.keep_checkpoints)
  restored = checkpointer.restore_latest(ckpt_lib.abstract_like(state, state_sh), data_iter)
  if restored is not None:
    state, start = restored
    logging.info("resumed from step %d", start)
    print(f"Resumed from checkpoint step {start}", flush=True)
  else:
    start = 0
    state = state.replace(params=resolve.initial_params(config, model, state.params, state_sh.params, mesh, rules,
                                                pretrained, added))
  if restart and jax.process_index() == 0:
    workdir_lib.record_resume(workdir, step=start, changed=changed)

  # Evaluators ("eval", the eval section's, first; then config.evals), and the evaluation before training.
  evals = [e for e in built_evals if e.rows]
  for ev in built_evals[1:]:
    if not ev.rows:
      print(f"warning: evaluator {ev.name} has no examples (config.evals.{ev.name}) and is not run", flush=True)
  main = evals[0] if evals and evals[0].name == "eval" else None

  def run_evals(params, at_step: int, which: list[evaluators.Evaluator], log: bool = True) -> None:
    """Runs `which` on `params`; logs their scalars (TensorBoard, metrics.jsonl) and eval_results.csv rows."""
    if not which:
      return
    fns = predict.predict_fns(model, params, tokenizer, config.eval, max_prompt_tokens=config.data.inputs_length,
                              mesh=mesh, rules=rules, chat_format=chat)
    for ev in which:
      scalars = dict(ev.run(fns))
      if log:
        writer.write(at_step, scalars)
        writer.write_results(at_step, ev.result_rows())
    writer.flush()
  result: dict[str, Any] = {"before": None}
  # Metrics and results: a resume first drops what an earlier process logged after `start` (all of it at 0).
  writer = metrics_lib.MetricWriter(workdir, resume_step=start if start else -1)
  if start == 0:
    run_evals(state.params, 0, [e for e in evals if e.before_training])
    if main is not None and main.before_training:
      result["before"] = main.summary
      print("Before training:\n" + evaluators.format_table(result["before"]), flush=True)

  # The loop.
  progress = metrics_lib.Progress(config.total_steps, start, config.log_every)
  rng = jax.random.key(config.seed + 1)
  pending = None  # (step, device metrics, host stats) of the step in flight
  window = metrics_lib.StepWindow(
      len(pipe.task_names), devices=jax.device_count(), peak_tflops=flops.peak_tflops(jax.devices()[0].device_kind),
      flops_per_step=flops.train_step_flops(model, batch_size=config.data.batch_size,
                                            inputs_length=config.data.inputs_length,
                                            targets_length=config.data.targets_length))
  seen = np.zeros(len(pipe.task_names), np.int64)
  stopped_early = False

  def finish_pending():
    nonlocal pending
    if pending is None:
      return
    done_step, device_metrics, stats = pending
    pending = None
    host_metrics = jax.device_get(device_metrics)
    metrics_lib.check_finite(done_step, host_metrics)
    window.add(host_metrics, stats)
    if done_step % config.log_every == 0 or done_step == config.total_steps:
      scalars = window.summarize(pipe.task_names, seen, group_labels)
      writer.write(done_step, scalars, prefix="train/")
      writer.write(done_step, data_report.scalars())
      writer.flush()
      progress.update(done_step, scalars)

  interrupted = None
  try:
    for t in range(start, config.total_steps):
      try:
        host_batch = preemption.next_batch(data_iter)
      except _PreemptedWaitingForData:
        interrupted = preemption.before is not None  # the data position to save with the steps done
        break
      if not config.data.pack:  # the step's attention relies on it (step.train_step's packed=False)
        packing.check_one_example_rows(host_batch)
      counts = metrics_lib.task_counts(host_batch, len(pipe.task_names))
      seen += counts
      stats = (time.time(), *metrics_lib.token_counts(host_batch), counts)
      batch = pipeline_lib.to_global_batch({k: v for k, v in host_batch.items()
                                            if k in aot.DEVICE_FEATURES or k not in pipeline_lib.META_FEATURES},
                                           batch_sharding)
      state, device_metrics = train_step(state, batch, rng)  # dispatch step t + 1 ...
      finish_pending()  # ... then pull step t's metrics to the host
      pending = (t + 1, device_metrics, stats)
      if checkpointer.every and (t + 1) % checkpointer.every == 0:
        finish_pending()  # never save a state whose loss was not finite
        checkpointer.save(t + 1, state, data_iter)
      if t + 1 < config.total_steps and not preemption.requested:  # a stop notice leaves no time to decode
        run_evals(state.params, t + 1, [e for e in evals if e.due(t + 1)])
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
    good = checkpointer.newest_good()
    checkpointer.close()
    print(f"ERROR: {e}. Last good checkpoint: {'none' if good is None else f'step {good}'}", file=sys.stderr,
          flush=True)
    raise
  final_step = int(jax.device_get(state.step))
  if interrupted is not None:  # every step done is saved, with the data position from before the broken wait
    if not interrupted:  # an iterator without a state (never the pipeline's): nothing consistent to save
      good = checkpointer.newest_good()
      print("SIGTERM received while waiting for data from an iterator without a state: stopped without saving "
            f"(newest checkpoint: {'none' if good is None else f'step {good}'})", flush=True)
      writer.close()
      checkpointer.close()
      return {**result, "final_step": good or 0, "stopped_early": True}
    checkpointer.save(final_step, state, _IteratorState(preemption.before), force=True)
    print(f"SIGTERM received: saved checkpoint at step {final_step} and stopped (it came while waiting for "
          "data)", flush=True)
    stopped_early = True
  checkpointer.save(final_step, state, data_iter, force=True)
  if jax.process_index() == 0:
    print(data_report.summary(), flush=True)
  result.update(final_step=final_step, stopped_early=stopped_early, examples_seen=dict(zip(pipe.task_names,
                                                                                          seen.tolist())))
  if not stopped_early and evals:
    run_evals(state.params, final_step, evals, log=final_step > start)  # a finished run's restart logs nothing twice
    for ev in evals:
      if jax.process_index() == 0:
        suffix = "" if ev is main else f"_{ev.name}"
        evaluators.write_jsonl(os.path.join(workdir, f"predictions{suffix}.jsonl"), ev.scored)
        with open(os.path.join(workdir, f"eval{suffix}.json"), "w") as f:
          json.dump({"before": result["before"] if ev is main else None, "after": ev.summary, "step": final_step},
                    f, indent=1)
      if ev is main:
        result["after"] = ev.summary
        print(f"After {final_step} steps" + (" (before -> after)" if result["before"] else "") + ":\n"
              + evaluators.format_table(ev.summary, result["before"]), flush=True)
      else:
        result[f"after_{ev.name}"] = ev.summary
        print(f"Evaluator {ev.name} after {final_step} steps:\n" + (
            score_lib.format_table(ev.summary["superni"]) if ev.superni else evaluators.format_table(ev.summary)),
            flush=True)
  writer.close()
  checkpointer.close()
  return result


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.array(flag)).any())


# ---------------------------------------------------------------- command line

def _define_flags() -> None:
  """Flags exist only when the trainer runs as a program."""
  configs.define_config_flag()
  flags.adopt_module_key_flags(configs)  # --help lists --config with the trainer's own flags
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation output.")
  errors.local_path_flags("workdir")
  flags.DEFINE_bool("dry_run", False, "Resolve the config, mesh, checkpoint, tokenizer, data and the model's "
                    "sharded shapes, print them, and exit without writing anything (compiling nothing unless "
                    "--compile).")
  flags.DEFINE_bool("compile", False, "With --dry_run: also lower and compile the state init and the train step "
                    "on this machine's devices, and print the compile times and XLA's memory plan per device.")
  flags.DEFINE_integer("dry_run_devices", None, "Devices of the abstract mesh a dry run uses when this machine "
                       "has fewer than the config's mesh needs (default: the mesh's fixed axes).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() and let JAX find the other "
                    "processes (TPU VM pods, SLURM, GKE); the launchers in launch/ set this.")
  flags.DEFINE_bool("keep_freed_memory", False, "Let glibc malloc keep freed memory for the next step instead "
                    "of returning it to the OS (instruct_jax/host.py): faster steps on a CPU, but the kept heap "
                    "fragments, so a real model's run holds several times its working memory (BENCHMARKS.md, "
                    "'Fine-tuning a real checkpoint on CPU').")


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
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None:
    raise errors.UserError("--config is required (e.g. --config configs/quickstart.py)")
  try:  # ml_collections reports a config file that failed to load only when it is first used
    config = f.config
    list(config.keys())
  except OSError as e:
    raise errors.UserError(f"--config: {errors.one_line(str(e))}") from None
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  keys = configs.flag_keys(sys.argv)
  if f.dry_run:
    sys.exit(1 if dry_run(config, flag_keys=keys, num_devices=f.dry_run_devices, compile_step=f.compile) else 0)
  if f.compile:
    raise errors.UserError("--compile goes with --dry_run (a run compiles its step anyway)")
  if f.workdir is None:
    raise errors.UserError("--workdir is required")
  if f.keep_freed_memory:
    host.keep_freed_memory()
  maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
  result = train_and_evaluate(config, f.workdir, flag_keys=keys)
  if result["stopped_early"]:
    sys.exit(config.preemption_exit_code)  # a SIGTERM stop is not a finished run (see config.preemption_exit_code)


if __name__ == "__main__":
  _define_flags()
  errors.run(main)
