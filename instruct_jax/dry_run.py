"""`python -m instruct_jax.train --config C --dry_run [--compile]`: the run's plan (instruct_jax/plan.py, the code
training resolves its setup with) checked and printed without writing anything (seconds, 7B and XXL included);
with --compile the run's state init and train step are compiled too (instruct_jax/aot.py), which reports compile
times and XLA's per-device memory plan.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from instruct_jax import aot, convert, errors, flops, step
from instruct_jax import plan as plan_lib
from instruct_jax import workdir as workdir_lib


def dry_run(config: ml_collections.ConfigDict, *, flag_keys: Sequence[str] = (), num_devices: int | None = None,
            num_examples: int = 3, rate_examples: int = 1000, compile_step: bool = False,
            workdir: str | None = None) -> list[str]:
  """The run's plan (`plan.resolve`, as training resolves it, with `workdir`'s restart checks when given), printed
  with its memory, data and first batch; writes nothing. Returns the problems found (empty: the run can start).

  The mesh is the config's on this machine's devices, or (if this machine has too few) an abstract mesh of
  `num_devices` (default: the config's fixed axes), so a pod's config is checked on a laptop. With `compile_step`,
  the state init and the train step are also compiled on this machine's devices (instruct_jax/aot.py), which
  needs the mesh's devices here.
  """
  plan = plan_lib.resolve(config, workdir, flag_keys=flag_keys, dry=True, num_devices=num_devices)
  problems = list(plan.problems)
  out = lambda line="": print(line, flush=True)
  out(f"mesh      {dict(plan.mesh.shape)} over {plan.mesh_note}; sharding rules {config.sharding!r}")
  out(f"init_from {config.init_from or '(none: weights start from random init)'}"
      + (f" ({convert.source_kind(config.init_from)} checkpoint)" if plan.pretrained is not None else ""))
  tokenizer, model = plan.tokenizer, plan.model
  if tokenizer is not None:
    out(f"tokenizer {tokenizer.model_path}: {tokenizer.vocab_size} ids (pad {tokenizer.pad_id}, eos "
        f"{tokenizer.eos_id}, bos {tokenizer.bos_id})")
    if plan.added_note:
      out(f"tokens    config.data.add_chat_tokens adds {plan.added_note}")
  else:
    out(f"tokenizer trained on the first run into WORKDIR/{workdir_lib.TOKENIZER} (at most "
        f"{config.tokenizer.vocab_size} pieces, from {config.tokenizer.train_examples} examples)")
  fields = ", ".join(f"{f.name}={getattr(model.config, f.name)}" for f in dataclasses.fields(model.config)
                     if f.name not in ("dtype", "param_dtype"))
  out(f"model     {model.kind} {model.num_params() / 1e6:,.1f}M parameters; {fields}; compute "
      f"{config.model.dtype}, parameters {config.model.param_dtype}")
  out(f"attention {plan.attention}")
  if model.config.lora is not None:
    n_train = sum(x.size for x in jax.tree.leaves(model.trainable(nn.meta.unbox(model.param_shapes()))))
    out(f"lora      {n_train / 1e6:,.2f}M adapter parameters train (the base is frozen): {model.config.lora}")
  _memory(plan, out)
  if plan.examples is not None:
    try:
      _data(plan, out, num_examples, rate_examples)
    except plan_lib.DATA_ERRORS as e:  # the first batch: lengths and end-of-turn markers checked with the tokenizer
      problems.append(f"data: {e}")
  if plan.evaluators is not None:
    out("evals     " + "; ".join(f"{e.name}: {len(e.rows)} examples, "
                                 + (f"every {e.every} steps" if e.every else "at the end") for e in plan.evaluators))
  pairs, packed = plan.objective.pairs, getattr(plan.objective, "packed", False)
  rows = config.data.batch_size * (2 if pairs and not packed else 1)
  length = (config.data.inputs_length + config.data.targets_length) * (2 if packed else 1)
  tokens = rows * length
  what = (f"{rows} rows of {length} tokens holding whole pairs (packed" if packed else
          f"{config.data.batch_size} pairs ({rows} rows" if pairs else f"{rows} rows (")
  out(f"steps     {config.total_steps} of {what}{', ' if pairs else ''}{tokens:,} token slots per step), "
      f"{config.num_microbatches} microbatch(es); optimizer {config.optim.optimizer} lr {config.optim.learning_rate}")
  if pairs:
    reference = ("a frozen copy of the starting weights" if step.needs_reference_copy(model, plan.objective) else
                 "the base with the adapters off" if plan.objective.needs_reference else "none")
    p = config.preference
    out(f"objective {config.objective}: beta {p.beta}, label_smoothing {p.label_smoothing}, gamma {p.gamma}, lambda "
        f"{p['lambda']}; reference model: {reference}")
  step_flops = flops.train_step_flops(model, batch_size=config.data.batch_size, inputs_length=config.data.inputs_length,
                                      targets_length=config.data.targets_length)
  out(f"flops     {step_flops:.3g} model FLOPs per step, {step_flops * config.total_steps:.3g} for the run "
      "(instruct_jax/flops.py; the trainer logs train/mfu against the device's peak)")
  if compile_step:
    problems += _compile(plan, out)
  for p in problems:
    out(f"PROBLEM   {p}")
  done = "the state init and the train step compiled, nothing was written" if compile_step else \
      "nothing was compiled or written"
  out("dry run: " + (f"OK, {done}" if not problems else f"{len(problems)} problem(s)"))
  return problems


def _memory(plan: plan_lib.RunPlan, out) -> None:
  """Parameters and optimizer state per device of the plan's mesh, and where the largest parameters go."""
  copy = step.needs_reference_copy(plan.model, plan.objective)
  abstract, state_sh = step.abstract_train_state(plan.model, plan.tx, plan.mesh, plan.rules, jax.random.key(0),
                                                 reference=copy)
  per_device = lambda tree, sh: sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                                    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh)))
  gib = 1024 ** 3
  p_bytes, o_bytes = per_device(abstract.params, state_sh.params), per_device(abstract.opt_state, state_sh.opt_state)
  r_bytes = per_device(abstract.reference, state_sh.reference) if copy else 0
  out(f"memory    per device: parameters {p_bytes / gib:.2f} GiB + optimizer state {o_bytes / gib:.2f} GiB"
      + (f" + the reference's frozen copy {r_bytes / gib:.2f} GiB" if copy else "")
      + f" = {(p_bytes + o_bytes + r_bytes) / gib:.2f} GiB (activations not counted: --compile adds XLA's whole plan)")
  flat = zip(jax.tree_util.tree_flatten_with_path(abstract.params)[0], jax.tree.leaves(state_sh.params))
  for (path, a), sh in sorted(flat, key=lambda x: -x[0][1].size)[:4]:  # the largest parameters, and where they go
    out(f"  {jax.tree_util.keystr(path):56s} {str(a.shape):22s} {str(sh.spec):28s} per device "
        f"{sh.shard_shape(a.shape)}")


def _data(plan: plan_lib.RunPlan, out, num_examples: int, rate_examples: int) -> None:
  """The first `num_examples` rendered examples (looked for among the first `rate_examples`), the mixture's rates (set
  and realised), and one host's first batch when the tokenizer exists (the pipeline the run builds)."""
  tokenizer, task_names = plan.tokenizer, plan.task_names
  shown = 0
  for i in range(rate_examples):
    if shown == num_examples:
      break
    ex = plan.examples[i]
    if ex is None:
      continue
    shown += 1
    tokens = ("" if tokenizer is None else f" ({len(tokenizer.encode(ex['inputs']))} + "
              f"{len(tokenizer.encode(ex['targets']))} tokens)")
    out(f"example   {task_names[ex['task_index']]} template {ex['template_id']} shots {ex['shots']}{tokens}:\n"
        f"  inputs:  {ex['inputs']!r}\n  targets: {ex['targets']!r}"
        + (f"\n  rejected: {ex['rejected']!r}" if "rejected" in ex else ""))
  plan_lib.report_mixture(plan, out=lambda text: out(f"data      {text}"))
  if tokenizer is not None:
    batch = next(iter(plan_lib.pipeline(plan).dataset))
    seg = batch["decoder_segment_ids"]
    out(f"batch     {', '.join(f'{k} {tuple(v.shape)}' for k, v in batch.items() if k.endswith('tokens'))}; "
        f"{np.mean([len(np.unique(r[r > 0])) for r in seg]):.1f} examples per row, "
        f"{100 * np.mean(seg > 0):.0f}% of decoder slots used")


def _compile(plan: plan_lib.RunPlan, out) -> list[str]:
  """The dry run's --compile: the run's state init and train step compiled on this machine (aot.py). A plan
  larger than a device's memory (where the backend reports its size) is a problem."""
  config, mesh = plan.config, plan.mesh
  if plan.mesh_error is not None:
    need = int(np.prod([max(v, 1) for v in dict(config.mesh).values()]))
    return [f"compile: needs the config's mesh on this machine's devices: {plan.mesh_error}; compile where the mesh "
            f"fits, or on a CPU stand-in with XLA_FLAGS=--xla_force_host_platform_device_count={need} (its times are "
            "the CPU's)"]
  try:
    programs = aot.compile_run(plan.model, plan.tx, plan.objective, plan.schedule, mesh, plan.rules,
                               batch_size=config.data.batch_size, inputs_length=config.data.inputs_length,
                               targets_length=config.data.targets_length, num_microbatches=config.num_microbatches,
                               packed=bool(config.data.pack), seed=config.seed)
  except (jax.errors.JaxRuntimeError, ValueError) as e:  # the compiler's refusal (memory, a sharding), or shapes
    return [f"compile: {errors.one_line(str(e))}"]
  out(f"compile   on {aot.device_summary(mesh)}")
  for line in aot.report(programs):
    out(f"  {line}")
  return aot.too_big(programs, mesh)
