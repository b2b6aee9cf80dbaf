"""Instruction tuning: `train_and_evaluate(config, workdir)` reads top to bottom; the absl main is at the end.

    python -m instruct_jax.train --config configs/quickstart.py --workdir /tmp/quickstart \\
        [--config.total_steps=200 ...] [--dry_run]

config check -> mesh -> init_from's model config (no weights yet) -> tokenizer (with the chat format's special
strings it lacks added as tokens: `chat_tokens`) -> model -> workdir guard
-> data -> train state born sharded -> jitted step -> resume (or init_from's weights) -> evaluation before
training -> loop (step t+1 dispatched before step t's metrics reach the host; metrics, checkpoints,
periodic evaluation; SIGTERM saves and exits) -> final checkpoint and evaluation.

Restarting with the same workdir resumes from the newest good checkpoint (checksums verified; a bad one is
moved aside), data iterator included. A restart may change only the keys in `workdir.RESUMABLE` (it is refused,
before anything is written, naming the keys that differ); config.json keeps the settings the run started with
and resume_history.jsonl the changes. After a SIGTERM save the process exits with config.preemption_exit_code.
The workdir records the model (model_config.json) and the tokenizer (tokenizer/), so generate, evaluate
and convert need nothing but its path. `--dry_run` resolves everything up to the step without compiling
or writing anything (see `dry_run`).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import aot, configs, convert, errors, host, optim, predict, sharding, step
from instruct_jax import metrics as metrics_lib
from instruct_jax import workdir as workdir_lib
from instruct_jax.convert import added_tokens
from instruct_jax.data import builtin
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import render as render_lib
from instruct_jax.data import report as report_lib
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.evals import evaluators
from instruct_jax.evals import score as score_lib
from instruct_jax.models import build, lora as lora_lib


DEVICE_FEATURES = ("task_index", "template_id")  # meta features the train step reads (per-task, per-template NLL)


def padded_vocab(n: int, multiple: int = 128) -> int:
  return -(-n // multiple) * multiple


def pretrained_source(config, mesh, rules) -> convert.Pretrained | None:
  """config.init_from's model config (no weights): a workdir, an imported, Hugging Face or T5X directory."""
  if not config.init_from:
    return None
  try:
    return convert.load_pretrained(config.init_from, mesh, rules, weights=False)
  except convert.ConversionError as e:
    raise convert.ConversionError(f"config.init_from={config.init_from}: {e}") from None


def tokenizer_source(config, pretrained) -> str:
  """Where the run's tokenizer comes from: config.tokenizer.path, else init_from's, else "" (train one)."""
  if config.tokenizer.path:
    return config.tokenizer.path
  return config.init_from if pretrained is not None else ""


def chat_format(config, workdir: str) -> chat_lib.ChatFormat | None:
  """config.data.chat_format resolved for the tokenizer the run will use, before that is loaded or trained (the
  catalogue renders with it): the run's own copy on a restart, config.tokenizer.path, init_from's, or the pieces of
  the one `load_tokenizer` trains. None when the run has neither chat files nor a chat format."""
  if not config.data.chat_format and not config.data_paths.chat_files:
    return None
  own = os.path.join(workdir, workdir_lib.TOKENIZER)
  if os.path.isdir(own) and os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG)):
    tokenizer = tokenizer_lib.load(own)
  elif config.tokenizer.path:
    tokenizer = _load_or_fail(config.tokenizer.path)
  elif config.init_from:
    tokenizer = convert.load_tokenizer(config.init_from)
  else:
    tokenizer = None
  return predict.chat_format(config, tokenizer)


def load_tokenizer(config, workdir: str, catalogues, pretrained, chat: chat_lib.ChatFormat | None = None
                   ) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: on a restart the run's own copy (workdir/tokenizer), else config.tokenizer.path, else
  init_from's (both only read here; `keep_tokenizer` copies them into the workdir once the run is checked),
  else a SentencePiece model trained once on the mixture into workdir/tokenizer (with the `chat` format's special
  strings as pieces of their own)."""
  out_dir = os.path.join(workdir, workdir_lib.TOKENIZER)
  recorded = os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG)) or workdir_lib.checkpoint_steps(workdir)
  if os.path.isdir(out_dir) and recorded:
    return tokenizer_lib.load(out_dir)
  if os.path.isdir(out_dir) and jax.process_index() == 0:  # left by a start that failed before it recorded its config
    shutil.rmtree(out_dir)
  if config.tokenizer.path:
    return _load_or_fail(config.tokenizer.path)
  if pretrained is not None:
    return convert.load_tokenizer(config.init_from)
  if jax.process_index() == 0:
    tasks, mixes = catalogues
    held = config.eval.held_out_cluster
    rates = mixtures_lib.task_rates(flan2021.training_mixture(config.data.mixture, held), tasks, mixes)
    rcfg = pipeline_lib.PipelineConfig.from_config(config.data).render
    texts = render_lib.sample_texts(rates, tasks, rcfg, n=config.tokenizer.train_examples, seed=config.seed)
    if held:  # the tokenizer may see held-out text; the model never trains on it
      names = (flan2021.cluster_tasks(held) if held in flan2021.CLUSTERS
               else [f"builtin/{n}" for n in builtin.CLUSTERS[held]])
      held_out = {n: 1.0 for n in names}
      texts += render_lib.sample_texts(held_out, tasks, render_lib.RenderConfig(), n=2000, seed=config.seed)
    tmp = out_dir + ".tmp"  # written whole, then renamed: a crash never leaves half a tokenizer
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer_lib.train(texts, vocab_size=config.tokenizer.vocab_size, out_dir=tmp,
                        user_defined_symbols=chat.user_symbols() if chat is not None else ())
    os.replace(tmp, out_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  return tokenizer_lib.load(out_dir)


def keep_tokenizer(tokenizer: tokenizer_lib.Tokenizer, workdir: str) -> None:
  """A copy of the run's tokenizer in workdir/tokenizer (if not there yet), so the workdir describes itself."""
  out_dir = os.path.join(workdir, workdir_lib.TOKENIZER)
  if jax.process_index() == 0 and not os.path.isdir(out_dir):
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    os.replace(tmp, out_dir)


def _load_or_fail(path: str) -> tokenizer_lib.Tokenizer:
  try:
    return tokenizer_lib.load(path)
  except tokenizer_lib.TokenizerNotFound as e:
    raise configs.ConfigError(f"config.tokenizer.path: {e}") from None


def chat_tokens(config, pretrained, chat: chat_lib.ChatFormat | None) -> added_tokens.AddedTokens | None:
  """The special strings of the run's chat format that the tokenizer it starts from (config.tokenizer.path's, else
  init_from's; never the run's own copy, which holds them after the first start) lacks: added as new tokens, with
  as many new embedding rows, when config.data.add_chat_tokens (`added_tokens`). None without init_from or a chat
  format, when nothing is missing, or when the key is off (a missing end-of-turn marker is then the pipeline's
  error). LoRA runs are refused: the new rows would be frozen base weights and never train."""
  if pretrained is None or chat is None or not config.data.add_chat_tokens:
    return None
  source = _load_or_fail(config.tokenizer.path) if config.tokenizer.path else convert.load_tokenizer(config.init_from)
  added = added_tokens.plan(chat, source, pretrained.config.vocab_size)
  if added is not None and (config.model.lora.rank or config.model.lora.init_from):
    raise configs.ConfigError(
        f"config.data.chat_format={config.data.chat_format!r} needs {', '.join(added.tokens)}, which the tokenizer "
        f"{source.model_path} lacks; adding them grows the embeddings, whose new rows a LoRA run (config.model.lora) "
        "would never train. Train without LoRA, or use a format the tokenizer holds and "
        "config.data.add_chat_tokens=False")
  return added


def add_chat_tokens(tokenizer: tokenizer_lib.Tokenizer, added: added_tokens.AddedTokens | None,
                    pretrained: convert.Pretrained | None, message: str = "Added chat tokens to the tokenizer:"):
  """(the tokenizer with `added`'s tokens, init_from's model config with their rows) for `chat_tokens`' result.

  A restart's tokenizer (the run's own copy) holds them already; else they are added to a copy in a temporary
  directory, which `keep_tokenizer` copies into the workdir."""
  if added is None:
    return tokenizer, pretrained
  pretrained = dataclasses.replace(pretrained, config=added.grow(pretrained.config))
  if all(added_tokens.is_one_token(tokenizer, t) for t in added.tokens):
    return tokenizer, pretrained
  out_dir = tempfile.mkdtemp(prefix="instruct_jax_tokenizer_")
  atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
  tokenizer = added_tokens.extend_tokenizer(tokenizer, added, out_dir)
  print(f"{message} {added.describe()}", flush=True)
  return tokenizer, pretrained


def lora_adapter(config, pretrained) -> lora_lib.LoraConfig | None:
  """The LoRA settings of the PEFT directory config.model.lora.init_from names (None when it names none)."""
  if not config.model.lora.init_from:
    return None
  kind = pretrained.config.kind if pretrained is not None else config.model.kind
  return convert.read_peft_config(config.model.lora.init_from, kind, where="config.model.lora.init_from")


def resolve_model(config, tokenizer, pretrained, flag_keys: Sequence[str] = ()) -> build.Model:
  """config.model -> the model: init_from's shape when it names a checkpoint, else kind + size + overrides;
  LoRA as config.model.lora (and its init_from adapter) says."""
  adapter = lora_adapter(config, pretrained)
  if pretrained is not None:
    convert.check_tokenizer(pretrained, tokenizer, f"config.init_from={config.init_from}")
    model = build.from_section(config.model, checkpoint=pretrained.config, flag_keys=flag_keys,
                               source=f"config.init_from={config.init_from}", adapter=adapter)
  else:
    model = build.from_section(config.model, vocab_size=padded_vocab(tokenizer.vocab_size), flag_keys=flag_keys,
                               adapter=adapter)
  check_lora_optimizer(config, model)
  return model


def check_lora_optimizer(config, model: build.Model) -> None:
  """Adafactor's parameter scaling sizes each update by the parameter's RMS, which is 0 for LoRA's B at the start:
  the adapters would hardly move. Refused, naming the key that fixes it."""
  if (model.config.lora is not None and config.optim.optimizer == "adafactor"
      and config.optim.adafactor_param_scale):
    raise configs.ConfigError("config.optim.adafactor_param_scale=True with LoRA (config.model.lora.rank > 0): "
                              "updates scale with a parameter's RMS, 0 for the adapters' B at the start, so they "
                              "would barely train; set --config.optim.adafactor_param_scale=False or use adamw")


def initial_params(config, model: build.Model, params, params_sh, mesh, rules, pretrained,
                   added: added_tokens.AddedTokens | None = None):
  """`params` (fresh init) with init_from's weights as the base and model.lora.init_from's adapters, if named.

  A LoRA workdir as init_from contributes its weights with its adapters merged in; `added` (chat tokens) grows its
  embedding tables."""
  if pretrained is not None:
    loaded = convert.load_pretrained(config.init_from, mesh, rules, **build.runtime_fields(model.config))
    _, weights = build.Model(loaded.config).merged(loaded.params)
    if added is not None:
      weights = added_tokens.grow_params(weights, model, added, mesh, rules)
    params = lora_lib.overlay_base(params, jax.tree.map(jax.device_put, weights, lora_lib.base(params_sh)))
    print(f"Initialised weights from {config.init_from}", flush=True)
  if config.model.lora.init_from:
    adapters = convert.import_peft(config.model.lora.init_from, model.config, mesh, rules)
    params = model.with_trainable(params, jax.tree.map(jax.device_put, adapters, model.trainable(params_sh)))
    print(f"Initialised LoRA adapters from {config.model.lora.init_from}", flush=True)
  return params


def guard_workdir(workdir: str, model: build.Model) -> None:
  """A restart must train the model the workdir already holds (checked before anything is written)."""
  if not os.path.isfile(os.path.join(workdir, workdir_lib.MODEL_CONFIG)):
    return
  recorded = workdir_lib.read_model(workdir).config
  free = ("dtype", "param_dtype", "remat_policy", "dropout_rate", "attention")
  differ = [f"{f.name} {getattr(recorded, f.name)!r} -> {getattr(model.config, f.name)!r}"
            for f in dataclasses.fields(recorded)
            if f.name not in free and getattr(recorded, f.name) != getattr(model.config, f.name)]
  if differ:
    raise workdir_lib.WorkdirError(f"{workdir} holds a different model ({', '.join(differ)}); use a new workdir, "
                                   "or the settings it was started with")


def pipeline_config(config, model: build.Model) -> pipeline_lib.PipelineConfig:
  """The data section as the pipeline takes it; a held-out Flan cluster leaves `flan2021` (flan2021_no_<cluster>)."""
  mixture = flan2021.training_mixture(config.data.mixture, config.eval.held_out_cluster)
  return pipeline_lib.PipelineConfig.from_config({**config.data.to_dict(), "model_kind": model.kind,
                                                 "seed": config.seed, "mixture": mixture})


def check_held_out(config, rates) -> None:
  """A run never trains on its held-out cluster: a training mixture holding any of its tasks is refused."""
  cluster = config.eval.held_out_cluster
  leaked = sorted(set(evaluators.held_out_tasks(cluster)) & {t for t, r in rates.items() if r > 0})
  if leaked:
    mixture = flan2021.training_mixture(config.data.mixture, cluster)
    raise configs.ConfigError(
        f"config.data.mixture={mixture!r} trains on {len(leaked)} task(s) of config.eval.held_out_cluster={cluster!r} "
        f"(e.g. {leaked[0]}), which is then evaluated as never seen; train on a mixture without that cluster "
        f"({'flan2021' if cluster in flan2021.CLUSTERS else 'builtin'}_no_{cluster}) or hold out another cluster")


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
  chat = chat_format(config, workdir)
  catalogues = mixtures_lib.catalogues(tasks_lib.DataPaths.from_config(config.data_paths, strict=config.data.strict,
                                                                       chat_format=chat))
  built_evals = evaluators.from_config(config, *catalogues)  # their tasks and splits, before anything is written
  pretrained = pretrained_source(config, mesh, rules)
  if pretrained is None:  # a bad model section fails before a tokenizer is trained for it
    build.from_section(config.model, vocab_size=padded_vocab(config.tokenizer.vocab_size), flag_keys=flag_keys,
                       adapter=lora_adapter(config, None))
  os.makedirs(workdir, exist_ok=True)
  tokenizer = load_tokenizer(config, workdir, catalogues, pretrained, chat)
  added = chat_tokens(config, pretrained, chat)
  tokenizer, pretrained = add_chat_tokens(tokenizer, added, pretrained)
  model = resolve_model(config, tokenizer, pretrained, flag_keys)
  guard_workdir(workdir, model)
  keep_tokenizer(tokenizer, workdir)

  # Data: each host reads its share of every task; every configured file is read and checked now.
  data_cfg = pipeline_config(config, model)
  pipe = pipeline_lib.make_pipeline(data_cfg, tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  report_lib.check_files(config, catalogues[0], pipe.rates)
  check_held_out(config, pipe.rates)
  if jax.process_index() == 0:  # the run's settings, recorded once everything they name has been checked
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
                                   num_microbatches=config.num_microbatches, metric_groups=metric_groups)

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
    state = state.replace(params=initial_params(config, model, state.params, state_sh.params, mesh, rules,
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
  window = metrics_lib.StepWindow(len(pipe.task_names))
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
      counts = metrics_lib.task_counts(host_batch, len(pipe.task_names))
      seen += counts
      stats = (time.time(), *metrics_lib.token_counts(host_batch), counts)
      batch = pipeline_lib.to_global_batch({k: v for k, v in host_batch.items()
                                            if k in DEVICE_FEATURES or k not in pipeline_lib.META_FEATURES},
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


# ---------------------------------------------------------------- dry run

def dry_run(config: ml_collections.ConfigDict, *, flag_keys: Sequence[str] = (), num_devices: int | None = None,
            num_examples: int = 3, rate_examples: int = 1000, compile_step: bool = False) -> list[str]:
  """Resolves the config, mesh, init_from, tokenizer, data and the model's sharded shapes; writes nothing.
  Prints a report and returns the problems found (empty: the run can start).

  The mesh is the config's on this machine's devices, or (if this machine has too few) an abstract mesh of
  `num_devices` (default: the config's fixed axes), so a pod's config is checked on a laptop. With `compile_step`,
  the state init and the train step are also compiled on this machine's devices (instruct_jax/aot.py), which
  needs the mesh's devices here.
  """
  configs.validate(config, flag_keys=flag_keys)
  problems: list[str] = []
  out = lambda line="": print(line, flush=True)
  rules = sharding.get_rules(config.sharding)
  concrete = True
  try:
    mesh = sharding.make_mesh(dict(config.mesh))
    where = f"{mesh.devices.size} devices of this machine"
  except sharding.MeshError:
    concrete = False
    n = num_devices or int(np.prod([max(v, 1) for v in dict(config.mesh).values()]))
    mesh = sharding.abstract_mesh(dict(config.mesh), n)
    where = f"{n} devices (abstract: this machine has {jax.device_count()})"
  out(f"mesh      {dict(mesh.shape)} over {where}; sharding rules {config.sharding!r}")

  pretrained = pretrained_source(config, mesh, rules)  # the model config only: the mesh is not used
  out(f"init_from {config.init_from or '(none: weights start from random init)'}"
      + (f" ({convert.source_kind(config.init_from)} checkpoint)" if pretrained is not None else ""))
  source = tokenizer_source(config, pretrained)
  tokenizer = None
  if source:
    tokenizer = _load_or_fail(source) if config.tokenizer.path else convert.load_tokenizer(source)
    out(f"tokenizer {tokenizer.model_path}: {tokenizer.vocab_size} ids (pad {tokenizer.pad_id}, eos "
        f"{tokenizer.eos_id}, bos {tokenizer.bos_id})")
    try:
      chat = predict.chat_format(config, tokenizer)
    except errors.UserError:  # reported with the data below
      chat = None
    added = chat_tokens(config, pretrained, chat)
    tokenizer, pretrained = add_chat_tokens(  # to a temporary copy: the workdir is not written
        tokenizer, added, pretrained, message="tokens    config.data.add_chat_tokens adds")
    model = resolve_model(config, tokenizer, pretrained, flag_keys)
  else:
    out(f"tokenizer trained on the first run into WORKDIR/{workdir_lib.TOKENIZER} (at most "
        f"{config.tokenizer.vocab_size} pieces, from {config.tokenizer.train_examples} examples)")
    model = build.from_section(config.model, vocab_size=padded_vocab(config.tokenizer.vocab_size),
                               flag_keys=flag_keys, adapter=lora_adapter(config, None))
  check_lora_optimizer(config, model)
  fields = ", ".join(f"{f.name}={getattr(model.config, f.name)}" for f in dataclasses.fields(model.config)
                     if f.name not in ("dtype", "param_dtype"))
  out(f"model     {model.kind} {model.num_params() / 1e6:,.1f}M parameters; {fields}; compute "
      f"{config.model.dtype}, parameters {config.model.param_dtype}")
  if model.config.lora is not None:
    n_train = sum(x.size for x in jax.tree.leaves(model.trainable(nn.meta.unbox(model.param_shapes()))))
    out(f"lora      {n_train / 1e6:,.2f}M adapter parameters train (the base is frozen): {model.config.lora}")

  optim_cfg = optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps})
  tx = optim.make_optimizer(optim_cfg)
  abstract, state_sh = step.abstract_train_state(model, tx, mesh, rules, jax.random.key(0))
  per_device = lambda tree, sh: sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                                    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh)))
  gib = 1024 ** 3
  p_bytes, o_bytes = per_device(abstract.params, state_sh.params), per_device(abstract.opt_state, state_sh.opt_state)
  out(f"memory    per device: parameters {p_bytes / gib:.2f} GiB + optimizer state {o_bytes / gib:.2f} GiB = "
      f"{(p_bytes + o_bytes) / gib:.2f} GiB (activations not counted: --compile adds XLA's whole plan)")
  flat = zip(jax.tree_util.tree_flatten_with_path(abstract.params)[0], jax.tree.leaves(state_sh.params))
  for (path, a), sh in sorted(flat, key=lambda x: -x[0][1].size)[:4]:  # the largest parameters, and where they go
    out(f"  {jax.tree_util.keystr(path):56s} {str(a.shape):22s} {str(sh.spec):28s} per device "
        f"{sh.shard_shape(a.shape)}")

  data_cfg = pipeline_config(config, model)
  groups = (("task", "task_index", 1), ("template", "template_id", 1))  # the data's, once it resolves
  try:
    chat = predict.chat_format(config, tokenizer)
    tasks, mixes = mixtures_lib.catalogues(tasks_lib.DataPaths.from_config(config.data_paths,
                                                                            strict=config.data.strict,
                                                                            chat_format=chat))
    examples, task_names, rates = pipeline_lib.rendered_examples(data_cfg, tasks, mixes)
    groups = aot.metric_groups(task_names, tasks)
    report_lib.check_files(config, tasks, rates)
    check_held_out(config, rates)
    counts = np.zeros(len(task_names))
    shown = 0
    for i in range(rate_examples):
      ex = examples[i]
      if ex is None:
        continue
      counts[ex["task_index"]] += 1
      if shown < num_examples:
        shown += 1
        tokens = ("" if tokenizer is None else f" ({len(tokenizer.encode(ex['inputs']))} + "
                  f"{len(tokenizer.encode(ex['targets']))} tokens)")
        out(f"example   {task_names[ex['task_index']]} template {ex['template_id']} shots {ex['shots']}{tokens}:\n"
            f"  inputs:  {ex['inputs']!r}\n  targets: {ex['targets']!r}")
    out(f"data      mixture {data_cfg.mixture!r}: {len(task_names)} tasks; rate (realised over "
        f"{int(counts.sum())} examples):")
    order = sorted(range(len(task_names)), key=lambda i: -rates[task_names[i]])
    for i in order[:20]:
      out(f"  {task_names[i]:40s} {rates[task_names[i]]:7.4f} ({counts[i] / max(counts.sum(), 1):.4f})")
    if len(order) > 20:
      out(f"  ... and {len(order) - 20} more tasks")
    if tokenizer is not None:  # the real pipeline: tokenized, packed, one host's first batch
      pipe = pipeline_lib.make_pipeline(data_cfg, tokenizer, tasks=tasks, mixtures=mixes)
      batch = next(iter(pipe.dataset))
      seg = batch["decoder_segment_ids"]
      out(f"batch     {', '.join(f'{k} {tuple(v.shape)}' for k, v in batch.items() if k.endswith('tokens'))}; "
          f"{np.mean([len(np.unique(r[r > 0])) for r in seg]):.1f} examples per row, "
          f"{100 * np.mean(seg > 0):.0f}% of decoder slots used")
  except (errors.UserError, ValueError, FileNotFoundError) as e:  # unprepared TFDS data, unknown mixtures, ...
    problems.append(f"data: {e}")
  else:
    try:  # the evaluators: their tasks, splits and examples
      built = evaluators.from_config(config, tasks, mixes)
      out("evals     " + "; ".join(f"{e.name}: {len(e.rows)} examples, "
                                   + (f"every {e.every} steps" if e.every else "at the end") for e in built))
    except (errors.UserError, ValueError, FileNotFoundError) as e:
      problems.append(f"evaluation: {e}")
  tokens = config.data.batch_size * (config.data.inputs_length + config.data.targets_length)
  out(f"steps     {config.total_steps} of {config.data.batch_size} rows ({tokens:,} token slots per step), "
      f"{config.num_microbatches} microbatch(es); optimizer {config.optim.optimizer} lr {config.optim.learning_rate}")
  if compile_step:
    problems += _compile(config, model, tx, optim_cfg, mesh if concrete else None, rules, groups, out)
  for p in problems:
    out(f"PROBLEM   {p}")
  done = "the state init and the train step compiled, nothing was written" if compile_step else \
      "nothing was compiled or written"
  out("dry run: " + (f"OK, {done}" if not problems else f"{len(problems)} problem(s)"))
  return problems


def _compile(config, model, tx, optim_cfg, mesh, rules, groups, out) -> list[str]:
  """The dry run's --compile: the run's state init and train step compiled on this machine (aot.py)."""
  if mesh is None:
    need = int(np.prod([max(v, 1) for v in dict(config.mesh).values()]))
    return [f"compile: config.mesh {dict(config.mesh)} needs at least {need} devices and this machine has "
            f"{jax.device_count()}; compile on the target machine, or on a CPU stand-in with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} (its times are the CPU's)"]
  try:
    programs = aot.compile_run(model, tx, step.LossConfig(**config.loss.to_dict()), optim.make_schedule(optim_cfg),
                               mesh, rules, batch_size=config.data.batch_size,
                               inputs_length=config.data.inputs_length, targets_length=config.data.targets_length,
                               num_microbatches=config.num_microbatches, metric_groups=groups, seed=config.seed)
  except (jax.errors.JaxRuntimeError, ValueError) as e:  # the compiler's refusal (memory, a sharding), or shapes
    return [f"compile: {errors.one_line(str(e))}"]
  out(f"compile   on {aot.device_summary(mesh)}")
  for line in aot.report(programs):
    out(f"  {line}")
  return []


# ---------------------------------------------------------------- command line

def _define_flags() -> None:
  """Flags exist only when the trainer runs as a program."""
  configs.define_config_flag()
  flags.adopt_module_key_flags(configs)  # --help lists --config with the trainer's own flags
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation output.")
  flags.DEFINE_bool("dry_run", False, "Resolve the config, mesh, checkpoint, tokenizer, data and the model's "
                    "sharded shapes, print them, and exit without compiling or writing anything.")
  flags.DEFINE_bool("compile", False, "With --dry_run: also lower and compile the state init and the train step "
                    "on this machine's devices, and print the compile times and XLA's memory plan per device.")
  flags.DEFINE_integer("dry_run_devices", None, "Devices of the abstract mesh a dry run uses when this machine "
                       "has fewer than the config's mesh needs (default: the mesh's fixed axes).")
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
  if f.keep_freed_memory or (f.keep_freed_memory is None and host.cpu_only()):
    host.keep_freed_memory()
  maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
  result = train_and_evaluate(config, f.workdir, flag_keys=keys)
  if result["stopped_early"]:
    sys.exit(config.preemption_exit_code)  # a SIGTERM stop is not a finished run (see config.preemption_exit_code)


if __name__ == "__main__":
  _define_flags()
  errors.run(main)
