"""Run configs: `base()` holds every key the code reads; config files start from it and change what they need.

    def get_config(arg=None):                 # a config file, e.g. configs/quickstart.py
      c = instruct_jax.configs.base()
      c.model.kind, c.model.size = "encoder_decoder", "small"
      return c

Every key below carries a one-line comment; nothing in instruct_jax reads a key that is not here, and
`validate` refuses a config with a key that is not here (a typo in a config file or on the command line),
naming it and the closest known key. These sections are open maps whose keys the user names:
`model.overrides` (model config fields, checked against the model's dataclass),
`data_paths.instruction_files`, `data_paths.chat_files`, `data_paths.preference_files` (task name -> file),
`data_paths.hf_datasets` (task name -> a saved Hugging Face dataset and its options) and `evals` (evaluator name -> its kind and schedule). Keys that are None by default are typed placeholders, so
`--config.data.mixing_cap=3000` parses as an int.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import pathlib
import re
from collections.abc import Iterable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

from instruct_jax import errors

OPEN_MAPS = ("model.overrides", "data_paths.instruction_files", "data_paths.chat_files", "data_paths.preference_files",
             "data_paths.hf_datasets", "evals")
FILE_MAPS = ("data_paths.instruction_files", "data_paths.chat_files", "data_paths.preference_files",
             "data_paths.hf_datasets")


class ConfigError(errors.UserError, ValueError):
  """A config that cannot be run as written; the message names the key (and flag) at fault."""


def base() -> ml_collections.ConfigDict:
  """Every config key with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds parameter init, data order, template choices and dropout
  c.total_steps = 1000  # optimizer steps of the whole run (a resumed run continues to this step)
  c.num_microbatches = 1  # gradient accumulation: split each batch into this many sequential microbatches
  c.log_every = 50  # steps between metric lines (TensorBoard, metrics.jsonl, the progress line)
  c.checkpoint_every = 500  # steps between checkpoints (0: only at the end and on SIGTERM)
  c.keep_checkpoints = 3  # newest checkpoints kept on disk
  c.eval_every = 0  # steps between evaluations during training (0: only before and after)
  c.preemption_exit_code = 143  # exit status after SIGTERM saved a checkpoint (143 = 128 + SIGTERM: not done)
  c.init_from = ""  # start from these weights: an imported, Hugging Face or T5X directory, or a run's workdir

  c.model = ml_collections.ConfigDict()
  c.model.kind = ""  # "encoder_decoder" (T5) or "decoder" (LLaMA-style); "": the kind of init_from
  c.model.size = ""  # named shape (t5: tiny small base large xl xxl; decoder: tiny 1b 7b mistral_7b); "": init_from's shape
  c.model.overrides = ml_collections.ConfigDict()  # model config fields over the size (d_model=..., num_layers=...)
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
  c.model.param_dtype = "float32"  # dtype the parameters (and optimizer moments) are stored in
  c.model.remat_policy = "none"  # none | dots | dots_no_batch | full (recompute in the backward pass)
  c.model.scan_layers = False  # one scanned layer instead of N unrolled ones (faster compiles for big models)
  c.model.dropout_rate = config_dict.placeholder(float)  # None: the size's default (0) or the checkpoint's
  c.model.attention = "auto"  # attention core: auto (fastest exact: xla on CPU) | xla (einsum) | cudnn | pallas_tpu
  c.model.lora = ml_collections.ConfigDict()  # low-rank adapters; only they train (instruct_jax/models/lora.py)
  c.model.lora.rank = 0  # adapter rank (0: no LoRA, every parameter trains)
  c.model.lora.alpha = 16.0  # adapter output scaled by alpha / rank
  c.model.lora.dropout = 0.0  # dropout on the adapters' input, in training only
  c.model.lora.targets = ("query", "value")  # projections (query key value out wi_0 wi_1 wo; HF: q_proj v_proj ...)
  c.model.lora.init_from = ""  # a PEFT adapter directory to start the adapters from (sets rank, alpha, targets)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # SentencePiece .model, tokenizer.json or a directory; "": init_from's, else trained
  c.tokenizer.vocab_size = 1000  # pieces of a tokenizer trained here (when there is no path and no init_from)
  c.tokenizer.train_examples = 20000  # rendered mixture examples a trained tokenizer learns from

  c.data = ml_collections.ConfigDict()
  c.data.mixture = "builtin"  # mixture or task name (python -m instruct_jax.data.preview lists what it holds)
  c.data.inputs_length = 512  # encoder tokens per row (t5); the instruction budget of a row (decoder)
  c.data.targets_length = 128  # decoder tokens per row (t5); the output budget of a row (decoder)
  c.data.batch_size = 8  # rows per optimizer step, over all hosts
  c.data.pack = True  # pack several examples per row (segment ids keep them apart)
  c.data.num_packing_bins = config_dict.placeholder(int)  # rows the packer keeps open (None: the per-host batch)
  c.data.split = "train"  # split of every task to train on
  c.data.shuffle = True  # shuffle each task's examples, differently every epoch
  c.data.train_on_inputs = False  # decoder only: put loss weight on the instruction tokens too
  c.data.mixing_cap = config_dict.placeholder(int)  # override every mixture's examples-per-task cap
  c.data.mixing_temperature = config_dict.placeholder(float)  # override every mixture's mixing temperature
  c.data.max_task_examples = config_dict.placeholder(int)  # train on at most the first N examples of each task
  #                                                         (Flan 2021: 30,000 per dataset; None: all)
  c.data.train_fraction = 1.0  # train on the first ceil(fraction x n) examples of each task (data-size ablations)
  c.data.read_threads = 0  # threads rendering and tokenizing ahead of the packer
  c.data.prefetch = 64  # examples rendered ahead
  c.data.worker_count = 0  # grain worker processes (0: in-process)
  c.data.strict = True  # a malformed record is an error naming file:line (False: skipped, counted, reported)
  c.data.decontaminate = ""  # evaluation data, comma-separated (JSONL, chat, SuperNI task files, saved datasets): drop
  #                            training examples sharing an n-gram with any of it (instruct_jax/data/decontaminate.py)
  c.data.decontaminate_ngram = 13  # words per n-gram (GPT-3's 13)
  c.data.truncation_warning = 0.1  # warn when more than this share of a task's examples is cut or dropped
  c.data.host_input = "own_share"  # own_share: each host reads its share; slice_of_global: tests only
  c.data.chat_format = ""  # chat files' format, and instruction files' when set: alpaca | vicuna | chatml | llama3 |
  #                          tokenizer (its Jinja template) | FILE.jinja; "": the tokenizer's template for chat files
  c.data.add_chat_tokens = True  # init_from: add chat_format's special strings its tokenizer lacks as new tokens
  #                               (embedding rows grown, new rows the mean; instruct_jax/convert/added_tokens.py)
  c.data.render = ml_collections.ConfigDict()
  c.data.render.num_templates = config_dict.placeholder(int)  # keep the first N standard templates of each task
  c.data.render.template_ids = config_dict.placeholder(tuple)  # only these template ids (num_templates then
  #                                                              keeps the first N standard ones among them)
  c.data.render.template_choice = "random"  # random | round_robin over a task's templates
  c.data.render.few_shot_rate = 0.0  # share of examples rendered with exemplars of the same task
  c.data.render.max_shots = 5  # most exemplars in a few-shot prompt
  c.data.render.min_shots = 1  # fewest exemplars in a few-shot prompt
  c.data.render.options_rate = 1.0  # share of classification examples that list their answer options
  c.data.render.inversion_rate = 0.0  # share of examples (of tasks with inverted templates) rendered inverted
  c.data.render.cot_rate = 0.0  # share of examples (of tasks with rationales) with chain-of-thought targets

  c.data_paths = ml_collections.ConfigDict()
  c.data_paths.superni_dir = ""  # natural-instructions checkout (tasks/*.json, splits/); adds niv2/ tasks
  c.data_paths.superni_train_instances = config_dict.placeholder(int)  # SuperNI: train on the first N instances of
  #                                                                      each task (None: all; Tk-Instruct: 100)
  c.data_paths.superni_eval_instances = 100  # SuperNI: a task's test split is its first N instances (official: 100)
  c.data_paths.tfds_data_dir = ""  # TFDS data_dir with prepared (array_record) datasets
  c.data_paths.instruction_files = ml_collections.ConfigDict()  # NAME=FILE or NAME=train=F1,test=F2: Alpaca JSONL
  c.data_paths.chat_files = ml_collections.ConfigDict()  # NAME=FILE or NAME=train=F1,test=F2: conversations JSONL
  #                                                        (OpenAI messages or ShareGPT); the mixture "chat" holds all
  c.data_paths.preference_files = ml_collections.ConfigDict()  # NAME=FILE or NAME=train=F1,test=F2: preference
  #                                                             pairs JSONL (instruct_jax/data/preferences.py)
  c.data_paths.hf_datasets = ml_collections.ConfigDict()  # NAME=DIR|FILE[,options]: Hugging Face datasets (offline)

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh; -1: the remaining devices
  c.sharding = "data_parallel"  # logical-axis rules preset: data_parallel | fsdp | fsdp_tensor

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adamw"  # adamw | adafactor
  c.optim.learning_rate = 1e-3  # peak learning rate
  c.optim.schedule = "cosine"  # constant | cosine | linear | rsqrt (after linear warmup)
  c.optim.warmup_steps = 0  # linear warmup from 0
  c.optim.end_lr_fraction = 0.0  # cosine and linear decay to learning_rate * end_lr_fraction
  c.optim.b1 = 0.9  # Adam beta1 (Adafactor: momentum when > 0)
  c.optim.b2 = 0.999  # Adam beta2
  c.optim.eps = 1e-8  # Adam epsilon
  c.optim.weight_decay = 0.0  # decoupled weight decay (never on norm scales)
  c.optim.grad_clip_norm = 1.0  # global-norm gradient clipping (0: off)
  c.optim.adafactor_decay_rate = 0.8  # Adafactor's second-moment decay exponent
  c.optim.adafactor_param_scale = True  # Adafactor: scale updates by the parameter RMS (as T5X)

  c.objective = "sft"  # sft | dpo | ipo | cdpo | simpo | orpo (instruct_jax/objectives.py; the others train on
  #                      preference pairs: data_paths.preference_files, mixture "preferences")
  c.preference = ml_collections.ConfigDict()
  c.preference.beta = 0.1  # DPO/IPO/cDPO/SimPO temperature (IPO's tau); the rewards are beta * log-ratio
  c.preference.label_smoothing = 0.0  # cDPO: the assumed share of flipped labels, in (0, 0.5)
  c.preference.gamma = 0.5  # SimPO's target reward margin
  c["preference"]["lambda"] = 0.1  # ORPO: weight of the odds-ratio term beside the chosen responses' NLL

  c.loss = ml_collections.ConfigDict()
  c.loss.normalization = "tokens"  # tokens (global token mean) | examples (per packed segment) | sum
  c.loss.z_loss = 0.0  # weight of the log(Z)^2 penalty on the logits' normaliser
  c.loss.label_smoothing = 0.0  # label smoothing mass

  c.metrics = ml_collections.ConfigDict()
  c.metrics.wandb = ""  # a Weights & Biases project to log to as well (pip install -e ".[wandb]"); "": none
  c.metrics.wandb_mode = ""  # online | offline (no network; `wandb sync W/wandb/offline-run-*` later) | "": wandb's

  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = ()  # tasks to evaluate; (): the built-in conditions below
  c.eval.split = "test"  # split the evaluation tasks are read from
  c.eval.held_out_cluster = ""  # cluster never trained on, evaluated as its own condition: built-in or Flan 2021
  #                               (mixture flan2021 then trains on flan2021_no_<cluster>); "": none
  c.eval.seen_templates = ()  # template ids of the "seen_templates" condition ((): every template)
  c.eval.unseen_templates = ()  # template ids of the "unseen_templates" condition ((): no such condition)
  c.eval.num_examples = 20  # examples per task and condition
  c.eval.max_new_tokens = 32  # tokens generated per example
  c.eval.num_beams = 1  # beam search width (1: greedy)
  c.eval.batch_size = 32  # prompts decoded together
  c.eval.before_training = True  # also evaluate the starting weights
  c.eval.rank_classification = True  # score answer options by log-likelihood for tasks that have them
  c.evals = ml_collections.ConfigDict()  # more evaluators, NAME -> dict(kind=tasks|superni, ..., every=N) or
  #                                        "kind=superni,split=test,every=500" (instruct_jax/evals/evaluators.py)
  return c


# ---------------------------------------------------------------- validation

# The values each numeric key may take, as intervals ("[0, 1)": 0 <= v < 1; "inf": no upper bound). NaN and
# infinities are refused everywhere. A key left at None (a placeholder) is not checked.
RANGES = {
    "total_steps": "[0, inf)", "log_every": "[1, inf)", "checkpoint_every": "[0, inf)",
    "keep_checkpoints": "[1, inf)", "eval_every": "[0, inf)", "preemption_exit_code": "[0, 255]",
    "model.dropout_rate": "[0, 1)", "model.lora.rank": "[0, inf)", "model.lora.alpha": "(0, inf)",
    "model.lora.dropout": "[0, 1)",
    "tokenizer.vocab_size": "[1, inf)", "tokenizer.train_examples": "[1, inf)",
    "data.inputs_length": "[1, inf)", "data.targets_length": "[1, inf)", "data.batch_size": "[1, inf)",
    "data.num_packing_bins": "[1, inf)", "data.mixing_cap": "[1, inf)", "data.mixing_temperature": "(0, inf)",
    "data.max_task_examples": "[1, inf)", "data.train_fraction": "(0, 1]", "data.read_threads": "[0, inf)",
    "data.prefetch": "[0, inf)", "data.worker_count": "[0, inf)", "data.truncation_warning": "[0, 1]",
    "data.decontaminate_ngram": "[1, inf)",
    "data.render.num_templates": "[1, inf)", "data.render.few_shot_rate": "[0, 1]", "data.render.max_shots": "[1, inf)",
    "data.render.min_shots": "[1, inf)", "data.render.options_rate": "[0, 1]", "data.render.inversion_rate": "[0, 1]",
    "data.render.cot_rate": "[0, 1]",
    "data_paths.superni_train_instances": "[1, inf)", "data_paths.superni_eval_instances": "[1, inf)",
    "optim.learning_rate": "[0, inf)", "optim.warmup_steps": "[0, inf)", "optim.end_lr_fraction": "[0, 1]",
    "optim.b1": "[0, 1)", "optim.b2": "[0, 1)", "optim.eps": "[0, inf)", "optim.weight_decay": "[0, inf)",
    "optim.grad_clip_norm": "[0, inf)", "optim.adafactor_decay_rate": "(0, 1]",
    "preference.beta": "(0, inf)", "preference.label_smoothing": "[0, 0.5)", "preference.gamma": "[0, inf)",
    "preference.lambda": "[0, inf)",
    "loss.z_loss": "[0, inf)", "loss.label_smoothing": "[0, 1)",
    "eval.num_examples": "[0, inf)", "eval.max_new_tokens": "[1, inf)", "eval.num_beams": "[1, inf)",
    "eval.batch_size": "[1, inf)",
}
_INTERVAL = re.compile(r"^([\[(])(-?[\d.]+), (inf|-?[\d.]+)([\])])$")


def in_range(value: float, interval: str) -> bool:
  """Whether `value` (finite) lies in `interval`, written as in RANGES.

  >>> in_range(1.0, "[0, 1)"), in_range(0.5, "(0, 1]"), in_range(float("nan"), "[0, inf)")
  (False, True, False)
  """
  low_bracket, low, high, high_bracket = _INTERVAL.match(interval).groups()
  low, high = float(low), float(high)
  if not math.isfinite(value):
    return False
  above = value >= low if low_bracket == "[" else value > low
  below = value <= high if high_bracket == "]" else value < high
  return above and below


def check_ranges(config: ml_collections.ConfigDict, flag_keys: Sequence[str] = ()) -> None:
  """Raises ConfigError naming the first key (or flag) whose value is outside its RANGES interval."""
  got = leaves(config)
  for key, interval in RANGES.items():
    value = got.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not in_range(float(value), interval):
      raise ConfigError(f"{flag_or_key(key, flag_keys)}={value!r}: must be a number in {interval}")

def leaves(c: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  """{dotted key: value} of every key (the open maps as one value each)."""
  out = {}
  for key, value in c.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and path not in OPEN_MAPS:
      out.update(leaves(value, path + "."))
    else:
      out[path] = value
  return out


def flag_or_key(key: str, flag_keys: Iterable[str]) -> str:
  return f"--config.{key}" if key in set(flag_keys) else f"config.{key}"


def validate(config: ml_collections.ConfigDict, *, flag_keys: Sequence[str] = ()) -> None:
  """Raises ConfigError if `config` has a key `base()` lacks, or lacks one it has.

  `flag_keys` are the keys set on the command line (`--config.KEY=...`), so the error names the flag.
  """
  known, got = leaves(base()), leaves(config)
  for key in sorted(set(got) - set(known)):
    if any(key.startswith(m + ".") for m in OPEN_MAPS):
      continue
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"{flag_or_key(key, flag_keys)}: no such config key{hint} (every key is listed in "
                      "instruct_jax/configs.py base())")
  missing = sorted(set(known) - set(got))
  if missing:
    raise ConfigError(f"config lacks key(s) {missing[:5]}: config files must start from "
                      "instruct_jax.configs.base() (or a shipped config) instead of building a ConfigDict")
  for name in OPEN_MAPS:
    for key, value in got[name].items():
      is_file_map = name in FILE_MAPS
      if is_file_map and (not isinstance(value, str) or not value):
        raise ConfigError(f"{flag_or_key(f'{name}.{key}', flag_keys)}: expected a file path, got {value!r}")
  check_ranges(config, flag_keys)
  k, rows = config.num_microbatches, config.data.batch_size
  if not isinstance(k, int) or k < 1 or rows % k:
    raise ConfigError(f"{flag_or_key('num_microbatches', flag_keys)}={k!r}: must be a positive integer dividing "
                      f"{flag_or_key('data.batch_size', flag_keys)}={rows}")


def flag_keys(argv: Sequence[str], name: str = "config") -> list[str]:
  """The config keys set by `--config.KEY=value` arguments of `argv`."""
  out = []
  for arg in argv:
    if arg.startswith(f"--{name}.") or arg.startswith(f"-{name}."):
      out.append(arg.split("=", 1)[0].split(".", 1)[1])
  return out


# ---------------------------------------------------------------- command lines and config files

def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS, sys_argv: Sequence[str] | None = None):
  """--config=FILE[:ARG] with --config.KEY=value overrides; new keys are accepted only to be checked by
  `validate` (so the open maps can take names, and a typo gets a message naming it)."""
  return config_flags.DEFINE_config_file(
      "config", None, "Python config file (get_config); override keys with --config.KEY=value (every key: "
      "instruct_jax/configs.py).", flag_values=flag_values, lock_config=False, accept_new_attributes=True,
      sys_argv=None if sys_argv is None else list(sys_argv))


def from_command_line(argv: Sequence[str]) -> ml_collections.ConfigDict:
  """The config a trainer command line asks for: `["--config=configs/tiny.py", "--config.total_steps=5"]`
  (other arguments are ignored). Checked with `validate`."""
  argv = ["prog", *[a for a in argv if a.startswith("--config")]]
  flag_values = flags.FlagValues()
  holder = define_config_flag(flag_values, argv)
  flag_values(argv)
  validate(holder.value, flag_keys=flag_keys(argv))
  return holder.value


def load(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of the Python file at `path` ("file.py:arg" also works)."""
  path = str(path)
  if ":" in path and arg is None:
    path, arg = path.split(":", 1)
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file not found: {file}")
  spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{file} defines no get_config()")
  return module.get_config(arg) if arg is not None else module.get_config()


def from_json(blob: dict) -> ml_collections.ConfigDict:
  """A config saved as config.json (tuples came back as lists), laid over `base()` for keys it lacks."""
  c = base()
  def merge(dst: ml_collections.ConfigDict, src: dict, prefix: str) -> None:
    for key, value in src.items():
      path = prefix + key
      if isinstance(value, dict) and path not in OPEN_MAPS and key in dst:
        merge(dst[key], value, path + ".")
      elif path in OPEN_MAPS:
        dst[key] = ml_collections.ConfigDict(value)
      elif isinstance(value, list):
        dst[key] = tuple(value)
      else:
        with dst.unlocked():
          dst[key] = value
  merge(c, blob, "")
  return c
