"""A run's plan: everything its config names, resolved once, in one order, without writing anything.

    plan = plan_lib.resolve(config, workdir, flag_keys=keys)       # the trainer (errors raise)
    plan = plan_lib.resolve(config, None, dry=True)                # --dry_run: data, evaluation and attention
                                                                   # problems are collected in plan.problems
    loaded = plan_lib.load(workdir, init_from=None, step=None)     # generate, evaluate, the model backend

`resolve`'s order: the config check, the restart check (a workdir's recorded settings), mesh and sharding rules,
init_from's model config (no weights), the tokenizer (the restart's own copy, config.tokenizer.path, init_from's,
or none yet: the run trains one), the chat format, the task and mixture catalogues rendered with it, the chat
format's special strings the tokenizer lacks (added as tokens to a temporary copy), the model and its LoRA
adapters, the workdir guard (a restart trains the model it holds), the attention plan, the data (pipeline
config, realised rates, every configured file read, the held-out cluster kept out), the evaluators, the objective
and the optimizer. A dry run and a run share all of it: what passes the one passes the other's setup.

What a run then writes, in order: `train_tokenizer` (only when the run trains its own, into WORKDIR/tokenizer),
the pipeline (`pipeline`: lengths and end-of-turn markers checked with the tokenizer), and `record` (config.json,
the tokenizer's copy, model_config.json). `initial_params` lays init_from's weights (and LoRA adapters) over a
fresh init when there is nothing to resume.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from instruct_jax import configs, convert, errors, losses, objectives, optim, predict, sharding
from instruct_jax import workdir as workdir_lib
from instruct_jax.convert import added_tokens
from instruct_jax.data import builtin
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import decontaminate
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import render as render_lib
from instruct_jax.data import report as report_lib
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.evals import evaluators
from instruct_jax.evals import preference_eval
from instruct_jax.models import attention, build, families, lora as lora_lib

# The evaluator kinds a run's config.evals may name (evals/evaluators.py: the contract); a new kind is a module
# defining an `evaluators.EvaluatorKind` and an entry here.
EVALUATOR_KINDS: dict[str, evaluators.EvaluatorKind] = {**evaluators.KINDS,
                                                        preference_eval.KIND.name: preference_eval.KIND}

# The errors of a dry run's data and evaluation steps that are reported as problems (unprepared TFDS data, unknown
# mixtures, bad files, ...) rather than raised.
DATA_ERRORS = (errors.UserError, ValueError, FileNotFoundError)


@dataclasses.dataclass
class RunPlan:
  """What `resolve` found; see the module docstring. `tokenizer` is None until `train_tokenizer` when the run trains
  its own (the model is then sized for config.tokenizer.vocab_size). `data`, `task_names`, `rates`, `examples` and
  `evaluators` are None in a dry run whose data step failed (its problem is in `problems`)."""
  config: ml_collections.ConfigDict
  workdir: str | None
  flag_keys: tuple[str, ...]
  mesh: Any  # a Mesh, or in a dry run on too few devices an AbstractMesh
  rules: dict
  mesh_note: str  # where the mesh is: "8 devices of this machine", or an abstract mesh's size
  mesh_error: str | None  # why the mesh is abstract (dry runs only)
  restart_changes: dict[str, list] | None  # None: a new workdir (or none); else the resumable keys a restart changes
  pretrained: convert.Pretrained | None
  tokenizer: tokenizer_lib.Tokenizer | None
  chat: chat_lib.ChatFormat | None
  tasks: dict | None
  mixtures: dict | None
  added: added_tokens.AddedTokens | None
  added_note: str | None  # the tokens added to this run's copy of the tokenizer (None: none were)
  model: build.Model
  attention: str
  data: pipeline_lib.PipelineConfig
  examples: Any
  task_names: list[str] | None
  rates: dict[str, float] | None
  evaluators: list[evaluators.Evaluator] | None
  objective: objectives.Objective
  optim: optim.OptimConfig
  problems: list[str]

  @functools.cached_property
  def tx(self):
    return optim.make_optimizer(self.optim)

  @functools.cached_property
  def schedule(self):
    return optim.make_schedule(self.optim)


def resolve(config: ml_collections.ConfigDict, workdir: str | None = None, *, flag_keys: Sequence[str] = (),
            dry: bool = False, num_devices: int | None = None, mesh=None) -> RunPlan:
  """The plan of `config` (for `workdir`, when given: its restart checks and tokenizer copy); writes nothing.

  dry: the mesh may be abstract (this machine has too few devices: `num_devices` of them, default the config's fixed
  axes), and problems of the data, the evaluation and the attention kernel are collected, not raised. `mesh`: this
  mesh (concrete or abstract) instead of the config's (the plan of a pod's run, resolved elsewhere)."""
  configs.validate(config, flag_keys=flag_keys)
  problems: list[str] = []
  restart = workdir_lib.check_restart(workdir, config, flag_keys) if workdir else {}
  recorded = bool(workdir) and os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG))
  if mesh is None:
    mesh, rules, mesh_note, mesh_error = _mesh(config, dry, num_devices)
  else:
    rules, mesh_note, mesh_error = sharding.get_rules(config.sharding), f"{mesh.size} devices (given)", None
  pretrained = pretrained_source(config, mesh, rules)
  tokenizer = _tokenizer(config, workdir, pretrained)
  family = pretrained.config.family if pretrained is not None else None
  try:
    chat = predict.chat_format(config, tokenizer, family)
    if chat is not None and config.data.chat_format == "" and chat.name != "tokenizer" and jax.process_index() == 0:
      print(f"note: the tokenizer of config.init_from={config.init_from} has no chat template: the chat data is "
            f"rendered in the {chat.name!r} format, its family's default (config.data.chat_format names another)",
            flush=True)
    tasks, mixes = catalogues(config, chat)
  except DATA_ERRORS as e:
    if not dry:
      raise
    problems.append(f"data: {e}")
    chat, tasks, mixes = None, None, None
  added = chat_tokens(config, pretrained, chat)
  tokenizer, pretrained, added_note = add_chat_tokens(tokenizer, added, pretrained)
  model = _model(config, tokenizer, pretrained, flag_keys)
  if workdir:
    guard_workdir(workdir, model)
  plan_text, problem = model.attention_plan()
  if problem:
    if not dry:
      raise attention.AttentionError(problem)
    problems.append(f"attention: {problem}")
  data = pipeline_config(config, model)
  problem = batch_problem(config, mesh, flag_keys, data.packed_pairs)
  if problem and not dry:
    raise configs.ConfigError(problem)
  problems += [f"batch: {problem}"] if problem else []
  check_positions(position_limit(model, pretrained.hf_config if pretrained is not None else None),
                  max(data.lengths().values()), f"config.init_from={config.init_from}",
                  " + ".join(configs.flag_or_key(k, flag_keys) for k in ("data.inputs_length", "data.targets_length")))
  examples = task_names = rates = evals = None
  groups: objectives.MetricGroups = (("task", "task_index", 1), ("template", "template_id", 1))
  if tasks is not None:
    try:
      data = decontaminated(config, data, tasks, mixes)
      examples, task_names, rates = pipeline_lib.rendered_examples(data, tasks, mixes)
      groups = metric_groups(task_names, tasks)
      report_lib.check_files(config, tasks, rates)
      check_held_out(config, rates)
      check_pairs(config, tasks, rates)
    except DATA_ERRORS as e:
      if not dry:
        raise
      problems.append(f"data: {e}")
      examples = task_names = rates = None
    else:
      try:
        evals = evaluators.from_config(config, tasks, mixes, EVALUATOR_KINDS)
      except DATA_ERRORS as e:
        if not dry:
          raise
        problems.append(f"evaluation: {e}")
  return RunPlan(
      config=config, workdir=workdir, flag_keys=tuple(flag_keys), mesh=mesh, rules=rules, mesh_note=mesh_note,
      mesh_error=mesh_error, restart_changes=restart if recorded else None, pretrained=pretrained,
      tokenizer=tokenizer, chat=chat, tasks=tasks, mixtures=mixes, added=added, added_note=added_note, model=model,
      attention=plan_text, data=data, examples=examples, task_names=task_names, rates=rates, evaluators=evals,
      objective=objective_of(config, groups, data),
      optim=optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps}),
      problems=problems)


# ---------------------------------------------------------------- the steps of `resolve`

def _mesh(config, dry: bool, num_devices: int | None):
  """(mesh, rules, where it is, why it is abstract): the config's mesh on this machine's devices; in a dry run on
  a machine with too few, an abstract mesh of `num_devices` (default: the mesh's fixed axes)."""
  rules = sharding.get_rules(config.sharding)
  try:
    mesh = sharding.make_mesh(dict(config.mesh))
    return mesh, rules, f"{mesh.devices.size} devices of this machine", None
  except sharding.MeshError as e:
    if not dry:
      raise
    n = num_devices or int(np.prod([max(v, 1) for v in dict(config.mesh).values()]))
    return (sharding.abstract_mesh(dict(config.mesh), n), rules,
            f"{n} devices (abstract: this machine has {jax.device_count()})", errors.one_line(str(e)))


def objective_of(config, groups: objectives.MetricGroups, data: pipeline_lib.PipelineConfig) -> objectives.Objective:
  """config.objective as the run's batches hold it: a preference objective reads pairs packed into shared rows
  where the pipeline packs them (`PipelineConfig.packed_pairs`)."""
  objective = objectives.from_config(config, groups)
  if objective.pairs and data.packed_pairs:
    objective = dataclasses.replace(objective, packed=True)
  return objective


def batch_problem(config, mesh, flag_keys: Sequence[str] = (), packed_pairs: bool = False) -> str | None:
  """Why the batch's rows cannot be split over the mesh's data and fsdp axes (None: they can)."""
  shards = int(dict(mesh.shape).get("data", 1)) * int(dict(mesh.shape).get("fsdp", 1))
  pairs = config.objective in losses.PREFERENCE_LOSSES and not packed_pairs  # a padded pair is two rows
  rows = config.data.batch_size * (2 if pairs else 1)
  if rows % shards == 0:
    return None
  return (f"{configs.flag_or_key('data.batch_size', flag_keys)}={config.data.batch_size}: the batch's {rows} rows"
          f"{' (two per pair)' if pairs else ''} are split over the mesh's data and fsdp axes, {shards} devices "
          f"here; make it a multiple of {shards // math.gcd(shards, 2) if pairs else shards}, or change config.mesh")


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


def _recorded(workdir: str | None) -> bool:
  """Whether a start of the run in `workdir` got as far as recording itself (its config or a checkpoint)."""
  return bool(workdir) and (os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG))
                            or bool(workdir_lib.checkpoint_steps(workdir)))


def _tokenizer(config, workdir: str | None, pretrained) -> tokenizer_lib.Tokenizer | None:
  """The run's tokenizer: on a restart the run's own copy (WORKDIR/tokenizer), else config.tokenizer.path's, else
  init_from's (both only read: `record` copies them into the workdir); None when the run trains its own."""
  own = os.path.join(workdir, workdir_lib.TOKENIZER) if workdir else ""
  if own and os.path.isdir(own) and _recorded(workdir):
    return tokenizer_lib.load(own)
  if config.tokenizer.path:
    return load_or_fail(config.tokenizer.path)
  if pretrained is not None:
    return convert.load_tokenizer(config.init_from)
  return None


def load_or_fail(path: str) -> tokenizer_lib.Tokenizer:
  try:
    return tokenizer_lib.load(path)
  except tokenizer_lib.TokenizerNotFound as e:
    raise configs.ConfigError(f"config.tokenizer.path: {e}") from None


def catalogues(config, chat: chat_lib.ChatFormat | None, strict: bool | None = None):
  """(tasks, mixtures) of the config's data paths, chat and instruction files rendered with `chat`."""
  strict = config.data.strict if strict is None else strict
  return mixtures_lib.catalogues(tasks_lib.DataPaths.from_config(config.data_paths, strict=strict, chat_format=chat))


def chat_tokens(config, pretrained, chat: chat_lib.ChatFormat | None) -> added_tokens.AddedTokens | None:
  """The special strings of the run's chat format that the tokenizer it starts from (config.tokenizer.path's, else
  init_from's; never the run's own copy, which holds them after the first start) lacks: added as new tokens, with
  as many new embedding rows, when config.data.add_chat_tokens (`added_tokens`). None without init_from or a chat
  format, when nothing is missing, or when the key is off (a missing end-of-turn marker is then the pipeline's
  error). LoRA runs are refused: the new rows would be frozen base weights and never train."""
  if pretrained is None or chat is None or not config.data.add_chat_tokens:
    return None
  source = load_or_fail(config.tokenizer.path) if config.tokenizer.path else convert.load_tokenizer(config.init_from)
  added = added_tokens.plan(chat, source, pretrained.config.vocab_size)
  if added is not None and (config.model.lora.rank or config.model.lora.init_from):
    raise configs.ConfigError(
        f"config.data.chat_format={config.data.chat_format!r} needs {', '.join(added.tokens)}, which the tokenizer "
        f"{source.model_path} lacks; adding them grows the embeddings, whose new rows a LoRA run (config.model.lora) "
        "would never train. Train without LoRA, or use a format the tokenizer holds and "
        "config.data.add_chat_tokens=False")
  return added


def add_chat_tokens(tokenizer, added: added_tokens.AddedTokens | None, pretrained: convert.Pretrained | None):
  """(the tokenizer with `added`'s tokens, init_from's model config with their rows, what was added to the tokenizer
  or None) for `chat_tokens`' result. A restart's tokenizer (the run's own copy) holds them already; else they are
  added to a copy in a temporary directory, which `record` copies into the workdir."""
  if added is None:
    return tokenizer, pretrained, None
  pretrained = dataclasses.replace(pretrained, config=added.grow(pretrained.config))
  if all(added_tokens.is_one_token(tokenizer, t) for t in added.tokens):
    return tokenizer, pretrained, None
  out_dir = tempfile.mkdtemp(prefix="instruct_jax_tokenizer_")
  atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
  return added_tokens.extend_tokenizer(tokenizer, added, out_dir), pretrained, added.describe()


def lora_adapter(config, pretrained) -> lora_lib.LoraConfig | None:
  """The LoRA settings of the PEFT directory config.model.lora.init_from names (None when it names none)."""
  if not config.model.lora.init_from:
    return None
  kind = pretrained.config.kind if pretrained is not None else config.model.kind
  return convert.read_peft_config(config.model.lora.init_from, kind, where="config.model.lora.init_from")


def _model(config, tokenizer, pretrained, flag_keys: Sequence[str] = ()) -> build.Model:
  """config.model -> the model: init_from's shape when it names a checkpoint, else kind + size + overrides with the
  tokenizer's vocabulary (config.tokenizer.vocab_size while the run's own is untrained); LoRA as config.model.lora
  (and its init_from adapter) says."""
  adapter = lora_adapter(config, pretrained)
  if pretrained is not None:
    convert.check_tokenizer(pretrained, tokenizer, f"config.init_from={config.init_from}")
    model = build.from_section(config.model, checkpoint=pretrained.config, flag_keys=flag_keys,
                               source=f"config.init_from={config.init_from}", adapter=adapter)
  else:
    vocab = tokenizer.vocab_size if tokenizer is not None else config.tokenizer.vocab_size
    model = build.from_section(config.model, vocab_size=padded_vocab(vocab), flag_keys=flag_keys, adapter=adapter)
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
                                                 "seed": config.seed, "mixture": mixture,
                                                 "pairs": config.objective in losses.PREFERENCE_LOSSES})


def position_limit(model: build.Model, hf_config: dict | None) -> int | None:
  """The positions a decoder checkpoint was made for (its config.json's max_position_embeddings), or None: none
  recorded, or an encoder-decoder (T5's relative positions have no such limit)."""
  limit = (hf_config or {}).get("max_position_embeddings")
  if not model.reply_follows_prompt or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
    return None
  return limit


def check_positions(limit: int | None, length: int, source: str, keys: str) -> None:
  """A row (or a prompt and its answer) longer than the checkpoint's positions is refused, naming the `keys` (flags)
  that set its length."""
  if limit is not None and length > limit:
    raise configs.ConfigError(f"{keys} = {length} tokens, beyond the {limit} positions {source} was made for "
                              "(its max_position_embeddings): make them shorter")


def decontaminated(config, data: pipeline_lib.PipelineConfig, tasks, mixes,
                   out=None) -> pipeline_lib.PipelineConfig:
  """`data` with the training examples that share an n-gram (config.data.decontaminate_ngram words, normalised as
  `decontaminate.normalise`) with the evaluation data in config.data.decontaminate excluded from training and from
  few-shot exemplars; how many per task is said through `out` (default: printed by the first process)."""
  files = [f.strip() for f in str(config.data.decontaminate or "").split(",") if f.strip()]
  if not files:
    return data
  if out is None:
    out = (lambda text: print(text, flush=True)) if jax.process_index() == 0 else (lambda text: None)
  t0 = time.time()
  eval_sets = {}
  for spec in files:
    for source in decontaminate.open_sources(spec):
      eval_sets[source.name] = list(source.texts())
  index = decontaminate.NgramIndex.build(eval_sets, config.data.decontaminate_ngram)
  view = pipeline_lib.task_view(data, tasks)
  exclude, lines, total, dropped = {}, [], 0, 0
  for name in mixtures_lib.leaf_tasks(data.mixture, view, mixes):
    records = view[name].source.load(data.split)
    n = pipeline_lib.pool_size(data, view[name])
    found = np.zeros(0, np.int64)
    for start in range(0, n, 10_000):
      batch = (records[i] for i in range(start, min(n, start + 10_000)))  # None: a row a lenient source skips
      texts = ["" if r is None else "\n".join(decontaminate.example_texts(r)) for r in batch]
      found = np.concatenate([found, start + np.flatnonzero(index.contaminated(texts))])
    total, dropped = total + n, dropped + len(found)
    if len(found):
      exclude[name] = found
      lines.append(f"  {name}: {len(found)} of {n} dropped (the first at record {int(found[0])})")
  if len(lines) > 20:
    lines = lines[:20] + [f"  ... and {len(lines) - 20} more tasks"]
  evaluated = sum(map(len, eval_sets.values()))
  out("\n".join([f"decontaminate: {dropped} of {total} training examples share a {index.n}-gram with the {evaluated} "
                 f"examples of {', '.join(eval_sets)} and are not trained on ({time.time() - t0:.1f} s)"] + lines))
  return dataclasses.replace(data, exclude=exclude)


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


def check_pairs(config, tasks, rates) -> None:
  """A preference objective trains on preference pairs only (SFT may train on their chosen responses)."""
  if config.objective not in losses.PREFERENCE_LOSSES:
    return
  other = sorted(t for t, r in rates.items() if r > 0 and tasks[t].cluster != "preferences")
  if other:
    raise configs.ConfigError(
        f"config.objective={config.objective!r} trains on preference pairs, but config.data.mixture="
        f"{config.data.mixture!r} holds {len(other)} task(s) without them (e.g. {other[0]}); name pair files in "
        "--config.data_paths.preference_files.NAME=FILE (or a dataset of pairs in "
        "--config.data_paths.hf_datasets.NAME) and train on --config.data.mixture=preferences (or one of them)")


# The meta features of a batch the train step reads: per-task and per-template loss sums (the rest stay on the host).
DEVICE_FEATURES = ("task_index", "template_id")


def metric_groups(task_names: Sequence[str], tasks) -> objectives.MetricGroups:
  """The per-task and per-template loss sums the train step computes over DEVICE_FEATURES, for the mixture's
  `task_names` out of the catalogue `tasks`."""
  num_templates = 1 + max(t.id for name in task_names for t in tasks[name].templates)
  return (("task", DEVICE_FEATURES[0], len(task_names)), ("template", DEVICE_FEATURES[1], num_templates))


# ---------------------------------------------------------------- what a run writes

def train_tokenizer(plan: RunPlan) -> RunPlan:
  """The plan with its tokenizer: a run without one trains a SentencePiece model once on its mixture into
  WORKDIR/tokenizer (written whole, then renamed), with the chat format's special strings as pieces of their own;
  the model is resized if the vocabulary came out smaller. Other plans are returned as they are."""
  if plan.tokenizer is not None:
    return plan
  config, out_dir = plan.config, os.path.join(plan.workdir, workdir_lib.TOKENIZER)
  if jax.process_index() == 0:
    os.makedirs(plan.workdir, exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)  # left by a start that failed before it recorded its config
    held = config.eval.held_out_cluster
    rcfg = pipeline_lib.PipelineConfig.from_config(config.data).render
    texts = render_lib.sample_texts(plan.rates, plan.tasks, rcfg, n=config.tokenizer.train_examples,
                                    seed=config.seed)
    if held:  # the tokenizer may see held-out text; the model never trains on it
      names = (flan2021.cluster_tasks(held) if held in flan2021.CLUSTERS
               else [f"builtin/{n}" for n in builtin.CLUSTERS[held]])
      texts += render_lib.sample_texts({n: 1.0 for n in names}, plan.tasks, render_lib.RenderConfig(), n=2000,
                                       seed=config.seed)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer_lib.train(texts, vocab_size=config.tokenizer.vocab_size, out_dir=tmp,
                        user_defined_symbols=plan.chat.user_symbols() if plan.chat is not None else ())
    os.replace(tmp, out_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokenizer")
  tokenizer = tokenizer_lib.load(out_dir)
  model = plan.model
  if padded_vocab(tokenizer.vocab_size) != model.config.vocab_size:
    model = _model(config, tokenizer, None, plan.flag_keys)
  return dataclasses.replace(plan, tokenizer=tokenizer, model=model)


def pipeline(plan: RunPlan) -> pipeline_lib.Pipeline:
  """The run's data pipeline (this host's share of every task), tokenized with the plan's tokenizer."""
  return pipeline_lib.make_pipeline(plan.data, plan.tokenizer, tasks=plan.tasks, mixtures=plan.mixtures)


MIXTURE_FILE = "mixture.json"  # the mixture's rates, set and realised (report.mixture_rates), written at the start


def report_mixture(plan: RunPlan, out=print) -> dict:
  """The mixture's rates, set and realised over the first examples the run draws: printed through `out` and
  returned (report.mixture_rates)."""
  report = report_lib.mixture_rates(plan.data, plan.tasks, plan.mixtures)
  out(report_lib.format_mixture_rates(report))
  return report


def record(plan: RunPlan) -> None:
  """The run's settings, once everything they name has been checked: config.json (a restart keeps the first), a
  copy of the tokenizer (WORKDIR/tokenizer) and model_config.json, so the workdir describes itself."""
  workdir = plan.workdir
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  out_dir = os.path.join(workdir, workdir_lib.TOKENIZER)
  own = os.path.abspath(str(plan.tokenizer.model_path)).startswith(os.path.abspath(out_dir) + os.sep)
  if os.path.isdir(out_dir) and not own and not _recorded(workdir):
    shutil.rmtree(out_dir)  # left by a start that failed before it recorded its config
  if not os.path.isdir(out_dir):
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plan.tokenizer.save(tmp)
    os.replace(tmp, out_dir)
  workdir_lib.write_config(workdir, plan.config)
  if not os.path.isfile(os.path.join(workdir, workdir_lib.MODEL_CONFIG)):
    workdir_lib.write_model(workdir, plan.model, source=plan.config.init_from,
                            hf_config=plan.pretrained.hf_config if plan.pretrained is not None else None)


def initial_params(config, model: build.Model, params, params_sh, mesh, rules, pretrained: convert.Pretrained | None,
                   added: added_tokens.AddedTokens | None = None):
  """`params` (fresh init) with init_from's weights as the base and model.lora.init_from's adapters, if named
  (a plan's: `initial_params(plan.config, plan.model, ..., plan.pretrained, plan.added)`).

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


# ---------------------------------------------------------------- a trained (or pretrained) model, to use

@dataclasses.dataclass
class Loaded:
  """A model to decode or score with: its settings, model, tokenizer, mesh and step; `params` are read when first
  used (so prompts and tasks are checked before a checkpoint is restored), `chat` is the run's chat format."""
  config: ml_collections.ConfigDict
  model: build.Model
  tokenizer: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: dict
  step: int
  restore: Callable[[], Any] = dataclasses.field(repr=False)
  max_positions: int | None = None  # a decoder checkpoint's max_position_embeddings (position_limit)

  @functools.cached_property
  def params(self):
    return self.restore()

  @functools.cached_property
  def chat(self) -> chat_lib.ChatFormat | None:
    return predict.chat_format(self.config, self.tokenizer, self.model.config.family)

  def conversation_format(self, flag: str) -> chat_lib.ChatFormat:
    """The format conversations are rendered in: the run's, or for a run that used none the tokenizer's own template,
    or where it has none (a base model) its family's default (`flag` names the caller's option in errors)."""
    if self.chat is not None:
      return self.chat
    tok = self.tokenizer
    default = families.default_chat_format(self.model.config.family, tok) if tok.chat_template() is None else None
    return chat_lib.resolve_format(default or "tokenizer", tok, flag=flag)


def load(workdir: str | None, init_from: str | None = None, step: int | None = None) -> Loaded:
  """What generate, evaluate and the model backend decode with: `init_from`'s checkpoint (a baseline, step 0: an
  imported, Hugging Face or T5X directory, or a workdir's newest checkpoint, with its own tokenizer) with `workdir`'s
  settings (default: `configs.base()`'s, whose chat format "" is the tokenizer's own template); else the workdir's
  checkpoint (`step`, default the newest good one)."""
  if init_from:
    if step is not None:
      raise workdir_lib.WorkdirError("--step picks a checkpoint of --workdir; --init_from is read as it is (step 0)")
    config = workdir_lib.read_config(workdir) if workdir else configs.base()
    mesh, rules = workdir_lib.inference_mesh(config)
    try:
      pretrained = convert.load_pretrained(init_from, mesh, rules, weights=False)
      tokenizer = convert.load_tokenizer(init_from)
      convert.check_tokenizer(pretrained, tokenizer, str(init_from))
    except convert.ConversionError as e:
      raise workdir_lib.WorkdirError(f"--init_from {e}") from None
    model = workdir_lib.runnable_here(build.Model(pretrained.config))
    restore = lambda: convert.load_pretrained(init_from, mesh, rules).params
    return Loaded(config, model, tokenizer, mesh, rules, pretrained.step or 0, restore,
                  position_limit(model, pretrained.hf_config))
  if not workdir:
    raise workdir_lib.WorkdirError("give --workdir (a trained run) or --init_from (a checkpoint before fine-tuning)")
  config = workdir_lib.read_config(workdir)
  step = workdir_lib.resolve_step(workdir, step)  # a missing or bad checkpoint fails before anything is built
  model = workdir_lib.runnable_here(workdir_lib.read_model(workdir))
  mesh, rules = workdir_lib.inference_mesh(config)
  restore = lambda: workdir_lib.restore_step(workdir, model, mesh, rules, step)
  return Loaded(config, model, workdir_lib.tokenizer(workdir), mesh, rules, step, restore,
                position_limit(model, workdir_lib.read_model_blob(workdir).get("hf_config")))
