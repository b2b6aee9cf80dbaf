"""The grain input pipeline, from a mixture name to packed, sharded batches.

    per task: index stream (this host's share, shuffled with the seed, reshuffled every epoch, repeated)
      -> mix (grain's deterministic interleave: realised shares equal the rates)
      -> render (template, options, few-shot; one seeded generator per element)
      -> tokenize -> features (`transforms`: truncation, loss weights; unlearnable examples dropped, counted;
         a chat-rendered conversation is one decoder row scored on its assistant turns, or for T5 one example
         per assistant turn: `chat.py`)
      -> pack or pad, batch (`packing.pack_and_batch`; meta features per token)

Each element is addressed by its index, so the iterator state (`get_state` / `set_state`, saved with the
checkpoint) is a few integers, and a run resumed mid-epoch continues with the same batches. Each host
reads only its share of every task (`process_index::process_count`) and yields `batch_size //
process_count` rows; `to_global_batch` assembles the global array with the mesh's data sharding.

    pipe = make_pipeline(PipelineConfig(mixture="builtin", batch_size=8), tokenizer)
    it = iter(pipe.dataset); batch = next(it); state = it.get_state()
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from instruct_jax import errors
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import packing
from instruct_jax.data import render as render_lib
from instruct_jax.data import rows as rows_lib
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib
from instruct_jax.data import tokenizer as tokenizer_lib

META_FEATURES = ("task_index", "template_id", "shots")
MODEL_KINDS = rows_lib.KINDS
HOST_INPUTS = ("own_share", "slice_of_global")
# Data keys the catalogue and the trainer read.
NOT_PIPELINE_KEYS = ("strict", "truncation_warning", "chat_format", "add_chat_tokens", "decontaminate",
                     "decontaminate_ngram")


class PipelineConfigError(errors.UserError, ValueError):
  """A data section the pipeline cannot take; the message names the key."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The data section of a training config.

  Attributes:
    mixture: mixture (or task) name from the catalogues.
    model_kind: "encoder_decoder" (inputs/targets lengths) or "decoder" (one row of inputs+targets).
    inputs_length: encoder tokens per row; for decoders, the instruction budget of a row.
    targets_length: decoder tokens per row (encoder-decoder) or the output budget (decoder).
    batch_size: global rows per batch; each host yields batch_size // process_count rows.
    pack: pack several examples per row (False: one padded example per row).
    num_packing_bins: rows the packer keeps open (default: the per-host batch size).
    seed: seeds the shuffles, template choices and the packer.
    split: split to read.
    shuffle: shuffle each task's examples (every epoch differently).
    train_on_inputs: decoder only; put loss weight on the instruction too.
    mixing_cap, mixing_temperature: override the mixtures' caps / temperatures (ablation knobs).
    train_fraction: train on the first ceil(fraction x n) examples of each task's split, repeated (the
      "how much data is enough" ablation knob; the mixing rates are those of the whole tasks).
    max_task_examples: train on at most the first N examples of each task's split (Flan 2021: 30,000).
    render: template-diversity knobs.
    read_threads: threads that render and tokenize ahead of the packer (0: in the consuming thread,
      fastest on few cores: the work holds the GIL).
    prefetch: examples rendered ahead (grain's prefetch buffer).
    worker_count: grain worker processes (0: in-process; statistics are then complete).
    host_input: "own_share" (each host reads its share of every task) or "slice_of_global" (every host builds
      the same global batches and keeps its rows: runs equal across process counts, for tests).
  """
  mixture: str
  model_kind: str = "encoder_decoder"
  inputs_length: int = 512
  targets_length: int = 128
  batch_size: int = 8
  pack: bool = True
  num_packing_bins: int | None = None
  seed: int = 0
  split: str = "train"
  shuffle: bool = True
  train_on_inputs: bool = False
  mixing_cap: int | None = None
  mixing_temperature: float | None = None
  train_fraction: float = 1.0
  max_task_examples: int | None = None
  render: render_lib.RenderConfig = render_lib.RenderConfig()
  read_threads: int = 0
  prefetch: int = 64
  worker_count: int = 0
  host_input: str = "own_share"
  pairs: bool = False  # preference pairs as rows (the run's objective compares chosen and rejected responses)
  # Record indices (of `split`) never trained on nor used as exemplars, by task: the examples decontamination found
  # (plan.decontaminated). Set by the plan, not by a config key.
  exclude: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def __post_init__(self):
    if self.model_kind not in MODEL_KINDS:
      raise PipelineConfigError(f"data.model_kind must be one of {MODEL_KINDS}, got {self.model_kind!r}")
    if self.host_input not in HOST_INPUTS:
      raise PipelineConfigError(f"config.data.host_input must be one of {HOST_INPUTS}, got {self.host_input!r}")
    for name in ("inputs_length", "targets_length", "batch_size"):
      if getattr(self, name) < 1:
        raise PipelineConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
    if not 0 < self.train_fraction <= 1:
      raise PipelineConfigError(f"config.data.train_fraction must be in (0, 1], got {self.train_fraction}")
    if self.max_task_examples is not None and self.max_task_examples < 1:
      raise PipelineConfigError(f"config.data.max_task_examples must be >= 1, got {self.max_task_examples}")
    if isinstance(self.render, Mapping):
      object.__setattr__(self, "render", render_lib.RenderConfig(**self.render))

  @classmethod
  def from_config(cls, cfg: Any) -> PipelineConfig:
    """From a mapping or ml_collections.ConfigDict; unknown fields are an error naming them."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    for key in NOT_PIPELINE_KEYS:
      d.pop(key, None)
    render = dict(d.pop("render", {}) or {})
    for name, known in ((None, d), ("render", render)):
      fields = {f.name for f in dataclasses.fields(render_lib.RenderConfig if name else cls)}
      unknown = sorted(set(known) - fields)
      if unknown:
        raise ValueError(f"unknown data{'.' + name if name else ''} config fields {unknown}; known: "
                         f"{sorted(fields)}")
    if render.get("template_ids") is not None:
      render["template_ids"] = tuple(render["template_ids"])
    return cls(**d, render=render_lib.RenderConfig(**render))

  def lengths(self) -> dict[str, int]:
    return packing.feature_lengths(self.model_kind, self.inputs_length, self.targets_length)

  @property
  def packed_pairs(self) -> bool:
    """Preference pairs packed into shared rows (a decoder with data.pack): rows of twice the length, each holding
    whole pairs, every response its own segment (`packing.pack_pairs_and_batch`)."""
    return self.pairs and self.pack and rows_lib.for_kind(self.model_kind).packs_pairs


class Stats:
  """Per-task counters filled as examples flow through the featurizer (thread-safe)."""

  def __init__(self, task_names: list[str]):
    self.task_names = list(task_names)
    n = len(task_names)
    self._lock = threading.Lock()
    self.examples = np.zeros(n, np.int64)  # examples that reached the packer
    self.dropped = np.zeros(n, np.int64)  # targets would vanish under truncation
    self.truncated = np.zeros(n, np.int64)  # inputs or targets cut
    self.input_tokens = np.zeros(n, np.int64)  # before truncation
    self.target_tokens = np.zeros(n, np.int64)

  def __getstate__(self):  # Worker processes get a copy (their counts stay in the worker).
    state = dict(self.__dict__)
    state["_lock"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def add(self, task_index: int, n_in: int, n_out: int, truncated: bool, dropped: bool) -> None:
    with self._lock:
      if dropped:
        self.dropped[task_index] += 1
        return
      self.examples[task_index] += 1
      self.truncated[task_index] += truncated
      self.input_tokens[task_index] += n_in
      self.target_tokens[task_index] += n_out

  def table(self, rates: Mapping[str, float] | None = None) -> str:
    """Per task: examples, realised share (and target rate), mean tokens, truncation %, dropped."""
    total = max(1, int(self.examples.sum()))
    w = max([len(n) for n in self.task_names] + [10])
    rate_col = f" {'rate':>7s}" if rates else ""
    lines = [f"{'task':{w}s} {'examples':>8s} {'share':>7s}{rate_col} {'in tok':>8s} {'out tok':>8s} "
             f"{'trunc%':>7s} {'dropped':>7s}"]
    for i, name in enumerate(self.task_names):
      n = max(1, int(self.examples[i]))
      rate = f" {rates[name]:7.3f}" if rates else ""
      lines.append(f"{name:{w}s} {int(self.examples[i]):8d} {self.examples[i] / total:7.3f}{rate} "
                   f"{self.input_tokens[i] / n:8.1f} {self.target_tokens[i] / n:8.1f} "
                   f"{100 * self.truncated[i] / n:7.2f} {int(self.dropped[i]):7d}")
    n = max(1, total)
    lines.append(f"{'all':{w}s} {total:8d} {1:7.3f}{' ' * len(rate_col)} {self.input_tokens.sum() / n:8.1f} "
                 f"{self.target_tokens.sum() / n:8.1f} {100 * self.truncated.sum() / n:7.2f} "
                 f"{int(self.dropped.sum()):7d}")
    return "\n".join(lines)


class LengthError(errors.UserError, ValueError):
  """Row lengths too short for a task's templates: every example would be cut inside the template's words."""


def template_words(t: templates_lib.Template) -> str:
  """A template's prompt with every field empty: the words it adds to any example."""
  return templates_lib.fill(t.inputs, {f: "" for f in templates_lib.template_fields(t.inputs)}, task="",
                            template_id=t.id)


def check_lengths(config: PipelineConfig, tokenizer: tokenizer_lib.Tokenizer, tasks: Mapping[str, tasks_lib.Task],
                  task_names: list[str]) -> None:
  """Raises LengthError if the row lengths cannot hold the words of a template the run uses (plus end-of-text
  for T5's encoder, plus begin-of-text and one output token for a decoder row), or T5 targets cannot hold one
  output token and end-of-text."""
  try:
    room, what = rows_lib.for_kind(config.model_kind).template_room(config)
  except ValueError as e:
    raise LengthError(str(e)) from None
  used = {"standard", *(["inverted"] if config.render.inversion_rate > 0 else []),
          *(["cot"] if config.render.cot_rate > 0 else [])}
  for name in task_names:
    styles = render_lib.select_templates(tasks[name], config.render)
    for t in (t for style, ts in styles.items() if style in used for t in ts):
      if t.kind == "superni":
        continue
      n = tokenizer.encode(template_words(t)).size
      if n > room:
        raise LengthError(f"{what} is too short for task {name!r}: template {t.id}'s own words take {n} tokens "
                          f"before any example text, and the row has room for {room}; raise the length, or leave "
                          "the template out (config.data.render.template_ids)")


def check_end_of_turn(tokenizer: tokenizer_lib.Tokenizer, tasks: Mapping[str, tasks_lib.Task],
                      task_names: list[str]) -> None:
  """A decoder must be able to stop at the end of its turn: ChatError if a chat format's marker is not one token."""
  for fmt in {getattr(tasks[n].preprocess, "fmt", None) for n in task_names} - {None}:
    chat_lib.end_of_turn_id(fmt, tokenizer)


class Featurizer:
  """Rendered example -> tokenized model features plus meta features, or None (dropped, counted).

  A task none of whose first `give_up[task]` examples survives truncation raises DataError: the pipeline
  would otherwise search forever for an example to pack.
  """

  def __init__(self, config: PipelineConfig, tokenizer: tokenizer_lib.Tokenizer, stats: Stats,
               give_up: list[int] | None = None):
    self.config, self.tokenizer, self.stats = config, tokenizer, stats
    self.give_up = give_up
    self.rows = rows_lib.for_kind(config.model_kind)

  def __call__(self, ex: dict[str, Any] | None) -> dict[str, Any] | None:
    if ex is None:
      return None
    if "rejected" in ex:
      if self.config.pairs:
        return self._pair(ex)
      ex = {k: v for k, v in ex.items() if k not in ("rejected", "rejected_chat")}  # SFT on the chosen responses
    if "chat" in ex:
      return self._chat(ex)
    inputs, targets = self.tokenizer.encode(ex["inputs"]), self.tokenizer.encode(ex["targets"])
    return self._finish(ex, inputs, targets)

  def _chat(self, ex: dict[str, Any]) -> dict[str, Any] | None:
    """A chat-rendered example: a decoder row of the whole conversation, or a T5 example of one turn."""
    features, n_in, n_out, truncated = self.rows.chat(self.tokenizer, ex, self.config)
    return self._record(ex, features, n_in, n_out, truncated)

  def _pair(self, ex: dict[str, Any]) -> dict[str, Any] | None:
    """A preference pair: {"chosen": features, "rejected": features} of the same prompt (None if either cannot be
    trained on); counted once, as its chosen response."""
    halves = []
    for targets, chat in ((ex["targets"], ex.get("chat")), (ex["rejected"], ex.get("rejected_chat"))):
      if chat is not None:
        halves.append(self.rows.chat(self.tokenizer, {**ex, "targets": targets, "chat": chat}, self.config))
      else:
        inputs, target_ids = self.tokenizer.encode(ex["inputs"]), self.tokenizer.encode(targets)
        features, truncated = self.rows.features(self.tokenizer, inputs, target_ids, self.config)
        halves.append((features, inputs.size, target_ids.size, truncated))
    (chosen, n_in, n_out, cut), (rejected, _, _, cut_rejected) = halves
    pair = None if chosen is None or rejected is None else {"chosen": chosen, "rejected": rejected}
    return self._record(ex, pair, n_in, n_out, cut or cut_rejected)

  def _finish(self, ex: dict[str, Any], inputs: np.ndarray, targets: np.ndarray) -> dict[str, Any] | None:
    features, truncated = self.rows.features(self.tokenizer, inputs, targets, self.config)
    return self._record(ex, features, inputs.size, targets.size, truncated)

  def _record(self, ex, features, n_in: int, n_out: int, truncated: bool) -> dict[str, Any] | None:
    """Counts the example, raises if a task keeps failing, and adds the meta features."""
    cfg = self.config
    ti = ex["task_index"]
    self.stats.add(ti, n_in, n_out, truncated, features is None)
    if features is None:
      if self.give_up is not None and self.stats.examples[ti] == 0 and self.stats.dropped[ti] >= self.give_up[ti]:
        raise sources.DataError(
            f"task {self.stats.task_names[ti]!r}: none of its first {int(self.stats.dropped[ti])} examples can be "
            f"trained on at config.data.inputs_length={cfg.inputs_length}, targets_length={cfg.targets_length} "
            "(each has an empty instruction or output after tokenization and truncation, or a conversation's first "
            "turn does not fit)")
      return None
    for m in META_FEATURES:
      features[m] = np.int32(ex[m])
    return features


@dataclasses.dataclass
class Pipeline:
  """What `make_pipeline` builds: the batch dataset plus what its meta features index into."""
  dataset: grain.IterDataset
  examples: grain.MapDataset  # rendered, untokenized examples (for previews and tests)
  task_names: list[str]  # batch["task_index"] indexes this list
  rates: dict[str, float]
  stats: Stats

  def __iter__(self):
    return iter(self.dataset)


class EpochShuffledIndices(grain.MapDataset):
  """`indices` repeated forever, in a fresh seeded order every epoch (or in order when seed is None).

  grain's own `shuffle` computes each position with a cipher that is slow for small datasets (about
  1 ms per element for a 20-example task), so up to 2**20 indices the permutation of an epoch is drawn
  once with numpy and cached; larger datasets use grain's cipher, which is fast at that size.
  """

  _MAX_CACHED = 2**20

  def __init__(self, indices: np.ndarray, seed: int | None):
    super().__init__([])
    self._indices = np.asarray(indices, dtype=np.int64)
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()
    if len(self._indices) > self._MAX_CACHED and seed is not None:
      self._big = grain.MapDataset.source(self._indices).shuffle(seed=seed % 2**32).repeat()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffledIndices(n={len(self._indices)}, seed={self._seed})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    n = len(self._indices)
    if self._seed is None:
      return int(self._indices[index % n])
    if n > self._MAX_CACHED:
      return int(self._big[index])
    epoch, position = divmod(index, n)
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self._seed, epoch]).permutation(n).astype(np.int32)
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = perm
    return int(self._indices[perm[position]])


def _mix(streams: list[grain.MapDataset], weights: list[float], group: int = 24) -> grain.MapDataset:
  """grain's deterministic interleave, in two levels for many tasks.

  grain finds the source of each element with a loop over all datasets; with hundreds of tasks (the
  SuperNI train split has 756) that loop dominates, so tasks are mixed in groups and groups mixed by
  their total weight, which keeps the proportions and costs O(sqrt(tasks)) per element.
  """
  if len(streams) == 1:
    return streams[0]
  if len(streams) <= group:
    return grain.MapDataset.mix(streams, weights)
  size = int(np.ceil(np.sqrt(len(streams))))
  groups, totals = [], []
  for start in range(0, len(streams), size):
    groups.append(_mix(streams[start:start + size], weights[start:start + size], group))
    totals.append(sum(weights[start:start + size]))
  return grain.MapDataset.mix(groups, totals)


def _fits(tokenizer: tokenizer_lib.Tokenizer, limit: int):
  """Length check for SuperNI demonstrations: cheap on characters, exact on tokens when close."""

  def fits(text: str) -> bool:
    # A piece covers at least one character, plus perhaps one leading "▁" piece.
    return len(text) < limit or len(tokenizer.encode(text)) <= limit

  return fits


def pool_size(config: PipelineConfig, task: tasks_lib.Task) -> int:
  """How many of the task's first examples of the split are trained on (all, at most config.max_task_examples, then
  config.train_fraction of them)."""
  n = task.num_examples(config.split)
  if config.max_task_examples is not None:
    n = min(n, config.max_task_examples)
  return n if config.train_fraction >= 1 else min(n, max(1, math.ceil(round(n * config.train_fraction, 9))))


def task_view(config: PipelineConfig, tasks: Mapping[str, tasks_lib.Task]) -> Mapping[str, tasks_lib.Task]:
  """The tasks as the pipeline reads them: for an encoder-decoder, chat tasks one example per assistant turn."""
  if rows_lib.for_kind(config.model_kind).chat_per_turn:  # each assistant turn of a conversation is one example
    return {name: tasks_lib.per_turn(task) for name, task in tasks.items()}
  return tasks


def mixed_indices(config: PipelineConfig, tasks: Mapping[str, tasks_lib.Task],
                  mixtures: Mapping[str, mixtures_lib.Mixture], *, process_index: int = 0, process_count: int = 1
                  ) -> tuple[grain.MapDataset, list[str], dict[str, float]]:
  """The infinite mixed stream of (task index, record index, position) before anything is read or rendered, its
  task list and its rates."""
  tasks = task_view(config, tasks)
  rates = mixtures_lib.task_rates(config.mixture, tasks, mixtures, cap=config.mixing_cap,
                                  temperature=config.mixing_temperature, split=config.split)
  task_names = list(rates)
  streams = []
  for i, name in enumerate(task_names):
    n = pool_size(config, tasks[name])
    if n == 0:
      raise sources.DataError(f"task {name!r} has no {config.split!r} examples")
    pool = np.arange(n)
    if name in config.exclude:
      pool = np.setdiff1d(pool, config.exclude[name])
      if not len(pool):
        raise sources.DataError(f"task {name!r}: each of its {n} {config.split} examples shares an n-gram with the "
                                "evaluation data (config.data.decontaminate); nothing of it is left to train on")
    if len(pool) < process_count:
      raise sources.DataError(f"task {name!r} has {len(pool)} {config.split} examples, fewer than {process_count} "
                              "hosts")
    # Repeated forever, so no task ends the mixture early; reshuffled every epoch.
    ds = EpochShuffledIndices(pool[process_index::process_count],
                              seed=(config.seed * 1_000_003 + i) % 2**32 if config.shuffle else None)
    streams.append(ds.map_with_index(lambda pos, idx, i=i: (i, idx, pos)))
  return _mix(streams, [rates[name] for name in task_names]), task_names, rates


def realised_shares(mixed: grain.MapDataset, num_tasks: int, n: int = 10_000) -> np.ndarray:
  """Each task's share of the first `n` elements of a `mixed_indices` stream (what the run will draw; reads no
  data)."""
  counts = np.bincount([mixed[i][0] for i in range(n)], minlength=num_tasks)
  return counts / max(n, 1)


def rendered_examples(config: PipelineConfig, tasks: Mapping[str, tasks_lib.Task],
                      mixtures: Mapping[str, mixtures_lib.Mixture], *, tokenizer=None,
                      process_index: int = 0, process_count: int = 1
                      ) -> tuple[grain.MapDataset, list[str], dict[str, float]]:
  """The infinite, mixed, rendered example stream (before tokenization) and its task list and rates."""
  mixed, task_names, rates = mixed_indices(config, tasks, mixtures, process_index=process_index,
                                           process_count=process_count)
  tasks = task_view(config, tasks)
  fits = _fits(tokenizer, config.inputs_length) if tokenizer is not None else None
  renderers = [render_lib.Renderer(tasks[name], config.render, task_index=i, split=config.split, fits=fits,
                                   pool=pool_size(config, tasks[name]), excluded=config.exclude.get(name))
               for i, name in enumerate(task_names)]

  def render(element, rng):
    task_index, index, pos = element
    return renderers[task_index](index, pos, rng)

  examples = mixed.random_map(render, seed=config.seed % 2**32)
  return examples, task_names, rates


def make_pipeline(config: PipelineConfig, tokenizer: tokenizer_lib.Tokenizer, *,
                  tasks: Mapping[str, tasks_lib.Task] | None = None,
                  mixtures: Mapping[str, mixtures_lib.Mixture] | None = None,
                  paths: tasks_lib.DataPaths | None = None,
                  process_index: int | None = None, process_count: int | None = None) -> Pipeline:
  """Builds the training pipeline for `config` (catalogues from `paths` unless given)."""
  if tasks is None or mixtures is None:
    default_tasks, default_mixtures = mixtures_lib.catalogues(paths or tasks_lib.DataPaths())
    tasks = default_tasks if tasks is None else tasks
    mixtures = default_mixtures if mixtures is None else mixtures
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.batch_size % process_count:
    raise ValueError(f"data.batch_size {config.batch_size} is not divisible by {process_count} hosts")
  host_rows = None
  if config.host_input == "slice_of_global" and process_count > 1:
    n = config.batch_size // process_count
    host_rows = slice(process_index * n, (process_index + 1) * n)
    process_index, process_count = 0, 1  # build the global batches here too; keep this host's rows
  examples, task_names, rates = rendered_examples(config, tasks, mixtures, tokenizer=tokenizer,
                                                  process_index=process_index, process_count=process_count)
  if process_index == 0:
    mixtures_lib.log_rates(config.mixture, rates)
  check_lengths(config, tokenizer, tasks, task_names)
  if rows_lib.for_kind(config.model_kind).needs_end_of_turn:
    check_end_of_turn(tokenizer, tasks, task_names)
  stats = Stats(task_names)
  give_up = [min(max(pool_size(config, tasks[name]) // process_count, 1), 1000) for name in task_names]
  features = examples.map(Featurizer(config, tokenizer, stats, give_up))
  read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch)
  ds = features.to_iter_dataset(read)
  per_host = config.batch_size // process_count
  if config.packed_pairs:  # whole pairs packed into rows of twice the length, a segment per response
    ds = packing.pack_pairs_and_batch(ds, lengths=config.lengths(), batch_size=per_host, meta_features=META_FEATURES,
                                      num_packing_bins=config.num_packing_bins, seed=config.seed)
  elif config.pairs:  # per_host pairs -> rows [chosen..., rejected...] (objectives.Preference pairs them back)
    ds = packing.pad_pairs_and_batch(ds, lengths=config.lengths(), batch_size=per_host, meta_features=META_FEATURES)
  else:
    ds = packing.pack_and_batch(ds, lengths=config.lengths(), batch_size=per_host, pack=config.pack,
                                num_packing_bins=config.num_packing_bins, meta_features=META_FEATURES,
                                seed=config.seed)
  if host_rows is not None:
    ds = ds.map(functools.partial(_host_rows, rows=host_rows, pairs=config.pairs and not config.packed_pairs))
  if config.worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  return Pipeline(dataset=ds, examples=examples, task_names=task_names, rates=rates, stats=stats)


def _host_rows(batch: Mapping[str, np.ndarray], *, rows: slice, pairs: bool) -> dict[str, np.ndarray]:
  """This host's rows of a global batch; of a batch of pairs, its pairs (chosen rows, then rejected rows)."""
  if not pairs:
    return {k: v[rows] for k, v in batch.items()}
  half = {k: v.reshape(2, -1, *v.shape[1:]) for k, v in batch.items()}
  return {k: np.concatenate([v[0][rows], v[1][rows]]) for k, v in half.items()}


def to_global_batch(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This host's rows -> global arrays laid out with `sharding` (e.g. the mesh's data sharding)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
