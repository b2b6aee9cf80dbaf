"""Instruction tuning: `train_and_evaluate(config, workdir)` reads top to bottom; the absl main is at the end.

    python -m instruct_jax.train --config configs/quickstart.py --workdir /tmp/quickstart \\
        [--config.total_steps=200 ...] [--dry_run]

plan (everything the config names, resolved and checked before anything is written: `plan.py`, which `--dry_run`
shares) -> the run's own tokenizer if it has none, the data pipeline, the run's record in the workdir -> train state
born sharded, the jitted step of the plan's objective -> resume (or init_from's weights) -> evaluation before
training -> loop (step t+1 dispatched before step t's metrics reach the host; metrics, checkpoints, periodic
evaluation; SIGTERM saves and exits: `loop.py`) -> final checkpoint and evaluation.

Restarting with the same workdir resumes from the newest good checkpoint (checksums verified; a bad one is
moved aside), data iterator included. A restart may change only the keys in `workdir.RESUMABLE` (it is refused,
before anything is written, naming the keys that differ); config.json keeps the settings the run started with
and resume_history.jsonl the changes. After a SIGTERM save the process exits with config.preemption_exit_code.
The workdir records the model (model_config.json) and the tokenizer (tokenizer/), so generate, evaluate
and convert need nothing but its path.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags, logging

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import configs, errors, host, loop, predict, step
from instruct_jax import metrics as metrics_lib
from instruct_jax import plan as plan_lib
from instruct_jax import workdir as workdir_lib
from instruct_jax.dry_run import dry_run
from instruct_jax.evals import evaluators


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       flag_keys: Sequence[str] = ()) -> dict[str, Any]:
  """Trains and evaluates; returns {"before": summary|None, "after": summary, "final_step": int, ...}. One trainer at
  a time per workdir (workdir.lock)."""
  with workdir_lib.lock(workdir, primary=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, flag_keys)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, flag_keys: Sequence[str]) -> dict[str, Any]:
  plan = plan_lib.resolve(config, workdir, flag_keys=flag_keys)  # nothing is written until all of it is checked
  preemption = loop.Preemption()
  if plan.added_note:
    print(f"Added chat tokens to the tokenizer: {plan.added_note}", flush=True)
  plan = plan_lib.train_tokenizer(plan)
  pipe = plan_lib.pipeline(plan)  # each host reads its share of every task
  if jax.process_index() == 0:
    print(f"attention {plan.attention}", flush=True)
  plan_lib.record(plan)
  if jax.process_index() == 0:  # the mixture's rates, set and realised: printed, kept in WORKDIR/mixture.json
    rates = plan_lib.report_mixture(plan, out=lambda text: print(text, flush=True))
    workdir_lib.write_atomically(os.path.join(workdir, plan_lib.MIXTURE_FILE), json.dumps(rates, indent=1) + "\n")
  data_iter, feed = iter(pipe.dataset), loop.Feed(plan, pipe.task_names)

  # Train state born sharded, the jitted step, and the checkpoint to resume (else init_from's weights).
  state, state_sh = step.create_train_state(plan.model, plan.tx, plan.mesh, plan.rules, jax.random.key(config.seed),
                                            reference=step.needs_reference_copy(plan.model, plan.objective))
  train_step = step.jit_train_step(plan.model, plan.tx, plan.objective, plan.schedule, plan.mesh, plan.rules,
                                   state_sh, num_microbatches=config.num_microbatches, packed=bool(config.data.pack))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINTS), every=config.checkpoint_every,
                                       keep=config.keep_checkpoints)
  restored = checkpointer.restore_latest(ckpt_lib.abstract_like(state, state_sh), data_iter)
  if restored is not None:
    state, start = restored
    print(f"Resumed from checkpoint step {start}", flush=True)
  else:
    start = 0
    state = state.replace(params=plan_lib.initial_params(config, plan.model, state.params, state_sh.params, plan.mesh,
                                                         plan.rules, plan.pretrained, plan.added))
    if state.reference is not None:  # the reference model: the weights training starts from, frozen
      state = state.replace(reference=jax.tree.map(jnp.copy, state.params))
  if plan.restart_changes is not None and jax.process_index() == 0:
    workdir_lib.record_resume(workdir, step=start, changed=plan.restart_changes)
  # Metrics and results: a resume first drops what an earlier process logged after `start` (all of it at 0).
  writer = metrics_lib.MetricWriter(workdir, resume_step=start if start else -1, wandb_project=config.metrics.wandb,
                                    wandb_mode=config.metrics.wandb_mode, run_config=config.to_dict())
  evals = Evaluations(plan, writer)
  result: dict[str, Any] = {"before": evals.before_training(state.params) if start == 0 else None}

  # The loop: step t + 1 is dispatched before step t's metrics are pulled to the host.
  metrics, rng = loop.StepMetrics(plan, pipe, writer, start), jax.random.key(config.seed + 1)
  stopped_early, interrupted = False, None
  try:
    for t in range(start, config.total_steps):
      try:
        batch, stats = feed(preemption.next_batch(data_iter))
      except loop.PreemptedWaitingForData:
        interrupted = preemption.before is not None  # the data position to save with the steps done
        break
      state, device_metrics = train_step(state, batch, rng)
      metrics.push(t + 1, device_metrics, stats)
      if checkpointer.every and (t + 1) % checkpointer.every == 0:
        metrics.finish()  # never save a state whose loss was not finite
        checkpointer.save(t + 1, state, data_iter)
      if t + 1 < config.total_steps and not preemption.requested:  # a stop notice leaves no time to decode
        evals.run(state.params, t + 1, [e for e in evals.active if e.due(t + 1)])
      if preemption.agreed(t + 1, config.log_every):
        metrics.finish()
        checkpointer.save(t + 1, state, data_iter, force=True)
        print(f"SIGTERM received: saved checkpoint at step {t + 1} and stopped", flush=True)
        stopped_early = True
        break
    metrics.finish()
  except metrics_lib.NonFiniteLossError as e:
    writer.close()
    good = checkpointer.newest_good()
    checkpointer.close()
    print(f"ERROR: {e}. Last good checkpoint: {'none' if good is None else f'step {good}'}", file=sys.stderr,
          flush=True)
    raise

  # The final checkpoint (with the data position from before a broken wait, if SIGTERM came during one).
  final_step = int(jax.device_get(state.step))
  if interrupted is False:  # an iterator without a state (never the pipeline's): nothing consistent to save
    good = checkpointer.newest_good()
    print("SIGTERM received while waiting for data from an iterator without a state: stopped without saving "
          f"(newest checkpoint: {'none' if good is None else f'step {good}'})", flush=True)
    writer.close()
    checkpointer.close()
    return {**result, "final_step": good or 0, "stopped_early": True}
  if interrupted:
    checkpointer.save(final_step, state, loop.IteratorState(preemption.before), force=True)
    print(f"SIGTERM received: saved checkpoint at step {final_step} and stopped (it came while waiting for "
          "data)", flush=True)
    stopped_early = True
  checkpointer.save(final_step, state, data_iter, force=True)
  if jax.process_index() == 0:
    print(metrics.report.summary(), flush=True)
  result.update(final_step=final_step, stopped_early=stopped_early, examples_seen=metrics.examples_seen())
  if not stopped_early:
    result.update(evals.final(state.params, final_step, start, result["before"]))
  writer.close()
  checkpointer.close()
  return result


class Evaluations:
  """A run's evaluators ("eval", the eval section's, first; then config.evals) with the plan's predict functions:
  their scalars go to TensorBoard and metrics.jsonl, their tables to eval_results.csv, and at the end their scored
  rows and summaries to predictions[_NAME].jsonl and eval[_NAME].json."""

  def __init__(self, plan: plan_lib.RunPlan, writer: metrics_lib.MetricWriter):
    self.plan, self.writer = plan, writer
    self.active = [e for e in plan.evaluators if e.rows]
    for ev in plan.evaluators[1:]:
      if not ev.rows:
        print(f"warning: evaluator {ev.name} has no examples (config.evals.{ev.name}) and is not run", flush=True)
    self.main = self.active[0] if self.active and self.active[0].name == "eval" else None

  def run(self, params, at_step: int, which: list[evaluators.Evaluator], log: bool = True) -> None:
    if not which:
      return
    plan, config = self.plan, self.plan.config
    fns = predict.predict_fns(plan.model, params, plan.tokenizer, config.eval,
                              max_prompt_tokens=config.data.inputs_length, mesh=plan.mesh, rules=plan.rules,
                              chat_format=plan.chat)
    for ev in which:
      scalars = dict(ev.run(fns))
      if log:
        self.writer.write(at_step, scalars)
        self.writer.write_results(at_step, ev.result_rows())
    self.writer.flush()

  def before_training(self, params) -> dict | None:
    """The evaluators that run before training, at step 0; the main evaluation's summary (None: not run)."""
    self.run(params, 0, [e for e in self.active if e.before_training])
    if self.main is None or not self.main.before_training:
      return None
    print("Before training:\n" + evaluators.format_table(self.main.summary), flush=True)
    return self.main.summary

  def final(self, params, final_step: int, start: int, before: dict | None) -> dict[str, Any]:
    """Every evaluator at the end (logged unless a finished run's restart already did), its files written;
    returns {"after": the main summary, "after_NAME": each other's}."""
    if not self.active:
      return {}
    self.run(params, final_step, self.active, log=final_step > start)
    out = {}
    for ev in self.active:
      workdir = self.plan.workdir
      if jax.process_index() == 0:
        suffix = "" if ev is self.main else f"_{ev.name}"
        evaluators.write_jsonl(os.path.join(workdir, f"predictions{suffix}.jsonl"), ev.scored)
        with open(os.path.join(workdir, f"eval{suffix}.json"), "w") as f:
          json.dump({"before": before if ev is self.main else None, "after": ev.summary, "step": final_step},
                    f, indent=1)
      if ev is self.main:
        out["after"] = ev.summary
        print(f"After {final_step} steps" + (" (before -> after)" if before else "") + ":\n"
              + evaluators.format_table(ev.summary, before), flush=True)
      else:
        out[f"after_{ev.name}"] = ev.summary
        print(f"Evaluator {ev.name} after {final_step} steps:\n" + ev.table(), flush=True)
    return out


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
    sys.exit(1 if dry_run(config, flag_keys=keys, num_devices=f.dry_run_devices, compile_step=f.compile,
                          workdir=f.workdir) else 0)
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
