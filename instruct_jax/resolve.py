"""What a run's config names, resolved and checked before anything is written: init_from's model config, the
tokenizer (with the chat format's missing special strings added as tokens), the model and its LoRA adapters, the
workdir guard, the pipeline config and the held-out-cluster check. The trainer (`train.train_and_evaluate`) and
the dry run (`dry_run.dry_run`) both go through these, so a dry run checks what a run will do.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils

from instruct_jax import configs, convert, predict
from instruct_jax import workdir as workdir_lib
from instruct_jax.convert import added_tokens
from instruct_jax.data import builtin
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import render as render_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.evals import evaluators
from instruct_jax.models import attention, build, lora as lora_lib


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
    tokenizer = load_or_fail(config.tokenizer.path)
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
    return load_or_fail(config.tokenizer.path)
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


def load_or_fail(path: str) -> tokenizer_lib.Tokenizer:
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
  source = load_or_fail(config.tokenizer.path) if config.tokenizer.path else convert.load_tokenizer(config.init_from)
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


def attention_plan(model: build.Model) -> str:
  """Which attention core the run's training, scoring and decoding take here (`build.Model.attention_plan`), or
  the AttentionError of a kernel that cannot run as configured (before anything is compiled)."""
  plan, problem = model.attention_plan()
  if problem:
    raise attention.AttentionError(problem)
  return plan


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
