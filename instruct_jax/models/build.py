"""The model factory: a model config -> the model as the rest of instruct_jax uses it.

    model = build.from_config(t5.config_for("small"))             # or build.from_section(config.model, ...)
    model.module, model.kind, model.input_features                # the Flax module and its feature schema
    boxed = model.param_shapes(); abstract = model.abstract_params(mesh, rules)
    ids = model.prompt_ids(tokenizer, "Sort: 3 1 2", max_tokens=64)  # a prompt as the model saw it in training
    stepper = model.stepper(params, prompt_len=P, max_new_tokens=N, pad_id=0, use_cache=True)

Two kinds exist: "encoder_decoder" (T5 v1.1 / Flan-T5, `models/t5.py`) and "decoder" (LLaMA / Mistral
style, `models/decoder.py`). This is the only module that maps a kind to code: the trainer, the train step,
decoding, predict functions and the converters call the methods of `Model` and never ask which kind they
hold. `from_section` turns a `config.model` section (and, for config.init_from, the checkpoint's own
model config) into a model config, refusing settings that contradict the checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from instruct_jax import errors, sharding
from instruct_jax.data import transforms
from instruct_jax.models import attention, decoder, families, layers, lora as lora_lib, t5

ModelConfig = t5.T5Config | decoder.DecoderConfig
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Fields that may differ from a checkpoint's: they change how the weights are computed with, not what they are.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_layers", "dropout_rate", "attention")


class ModelConfigError(errors.UserError, ValueError):
  """A config.model section that names no model, an unknown field, or a shape that contradicts init_from."""


@dataclasses.dataclass(frozen=True)
class _Family:
  config_cls: type
  module_cls: type
  sizes: dict[str, dict]
  input_features: tuple[str, ...]
  stepper_cls: type
  train_flops_per_row: Callable[..., float]


FAMILIES = {
    "encoder_decoder": _Family(t5.T5Config, t5.T5, t5.SIZES, t5.INPUT_FEATURES, t5.Stepper,
                               t5.train_flops_per_row),
    "decoder": _Family(decoder.DecoderConfig, decoder.Decoder, decoder.SIZES, decoder.INPUT_FEATURES,
                       decoder.Stepper, decoder.train_flops_per_row),
}


@dataclasses.dataclass(frozen=True)
class Model:
  """A model config together with what its kind implies (hashable: usable as a static jit argument)."""
  config: ModelConfig

  @property
  def kind(self) -> str:
    return self.config.kind

  @property
  def _family(self) -> _Family:
    return FAMILIES[self.kind]

  @property
  def module(self) -> nn.Module:
    return self._family.module_cls(self.config)

  @property
  def input_features(self) -> tuple[str, ...]:
    return self._family.input_features

  @property
  def left_pad_prompts(self) -> bool:
    """Whether a batch of prompts is left-padded for decoding (decoder-only) or right-padded (encoder)."""
    return self._family.stepper_cls.left_pad_prompts

  @property
  def reply_follows_prompt(self) -> bool:
    """Whether the reply continues the prompt's own sequence (decoder-only: one row, begin-of-text first, a chat
    reply ends at its end-of-turn marker) rather than being a target sequence of its own (encoder-decoder)."""
    return self.left_pad_prompts

  def dummy_batch(self, length: int = 8) -> dict[str, jax.Array]:
    return {k: jnp.ones((1, length), jnp.int32) for k in self.input_features}

  def init(self, rng) -> Any:
    """Parameters with their logical-axis boxes (`nn.meta.unbox` for plain arrays)."""
    return self.module.init({"params": rng}, **self.dummy_batch())["params"]

  def param_shapes(self) -> Any:
    """The boxed parameters as ShapeDtypeStructs (nothing is allocated)."""
    return jax.eval_shape(lambda: self.module.init(jax.random.key(0), **self.dummy_batch(length=1))["params"])

  def abstract_params(self, mesh: Mesh, rules) -> Any:
    """ShapeDtypeStructs of the parameters, each with its NamedSharding."""
    boxed = self.param_shapes()
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed),
                        sharding.param_shardings(boxed, mesh, rules))

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(self.param_shapes())))

  def train_flops_per_row(self, inputs_length: int, targets_length: int) -> float:
    """Model FLOPs of one train step's row (instruct_jax/flops.py has the formula)."""
    sizes = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in nn.meta.unbox(self.param_shapes()).items()}
    return self._family.train_flops_per_row(self.config, sizes, inputs_length, targets_length)

  def attention_plan(self, backend: str | None = None) -> tuple[str, str | None]:
    """(which attention core training, scoring and decoding run on `backend`, a problem or None), in words.

    Attention dropout (model.dropout_rate > 0, e.g. a Hugging Face T5 checkpoint's 0.1) is the einsum's alone, so
    `auto` trains on the einsum path then, which on a GPU or TPU costs the fused kernel's speed and memory.
    """
    cfg = self.config
    backend = backend or jax.default_backend()
    softcap = getattr(cfg, "attn_softcap", None) is not None
    per_layer = getattr(cfg, "layered", False) and cfg.scan_layers  # masks chosen per layer at run time: dense
    pick = lambda dropout: attention.resolve(cfg.attention, dtype=cfg.dtype, head_dim=cfg.head_dim,
                                             dropout_active=dropout, dense_mask=per_layer, backend=backend,
                                             softcap=softcap)
    try:
      scoring = pick(False)
      training = pick(cfg.dropout_rate > 0)
    except attention.AttentionError as e:
      return f"{cfg.attention!r} on {backend}: cannot run", str(e)
    text = (f"{cfg.attention!r} on {backend}: {training} in training, {scoring} in scoring, xla in key/value-cache "
            "decoding")
    if training != scoring:
      text += (f" (model.dropout_rate={cfg.dropout_rate} drops attention probabilities, which only the einsum "
               f"does; --config.model.dropout_rate=0 trains on {scoring} too)")
    if softcap and cfg.attention == "auto" and backend != "cpu":
      text += " (the checkpoint soft-caps attention logits, which only the einsum does)"
    if per_layer and cfg.attention != "xla" and backend != "cpu":
      text += (" (a scanned stack of sliding and global layers picks each layer's mask at run time, which only the "
               "einsum takes; --config.model.scan_layers=False lets the fused kernels run)")
    return text, None

  def trainable(self, tree) -> Any:
    """What the optimizer updates, of a params-shaped tree: the LoRA adapters when config.lora is set, else all."""
    return lora_lib.trainable(tree, self.config.lora)

  def with_trainable(self, tree, sub) -> Any:
    """`tree` with `sub` (a `trainable` subtree) in place of its leaves."""
    return lora_lib.with_trainable(tree, sub, self.config.lora)

  def merged(self, params) -> tuple["Model", Any]:
    """(the base model, params with the LoRA adapters folded into the kernels); unchanged without LoRA."""
    config, params = lora_lib.merge(self.config, params)
    return Model(config), params

  def apply(self, params, batch: dict[str, jax.Array], *, dropout_rng=None, packed: bool = True) -> jax.Array:
    """fp32 logits [B, L, V] for the decoder targets of `batch` (training and scoring).

    `packed=False` promises rows of one example each, padded at their end (data.pack=False batches): the
    cuDNN attention then takes per-row lengths instead of a dense mask (`attention.Mask`).
    """
    feats = {k: batch[k] for k in self.input_features if k in batch}
    return self.module.apply({"params": params}, **feats, deterministic=dropout_rng is None, packed=packed,
                             rngs=None if dropout_rng is None else {"dropout": dropout_rng})

  def stepper(self, params, *, prompt_len: int, max_new_tokens: int, pad_id: int, use_cache: bool):
    """Incremental decoding (see t5.Stepper and decoder.Stepper) for `instruct_jax.sampling`."""
    return self._family.stepper_cls(self.module, params, prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                                    pad_id=pad_id, use_cache=use_cache)

  def prompt_ids(self, tokenizer, text: str, max_tokens: int, *, keep_end: bool = False) -> list[int]:
    """A prompt's ids as training rows began (cut to the instruction budget the way training cuts it).

    encoder_decoder: the text's ids then end-of-text (the encoder saw inputs + EOS); decoder: begin-of-text
    (where the tokenizer adds one: `adds_bos`) then the text's ids (no EOS: the model continues after them). An
    over-long prompt loses its end, as training inputs do, or with `keep_end` its beginning (a decoder's chat
    prompt, whose end is the generation prompt the reply follows).
    """
    ids = self.cut_prompt(tokenizer.encode(text), max_tokens, keep_end=keep_end)
    if self.kind == "encoder_decoder":
      return transforms.encoder_inputs(ids, eos_id=tokenizer.eos_id, max_input_len=max_tokens).tolist()
    bos = [tokenizer.bos_id] if tokenizer.adds_bos else []
    return bos + (ids.tolist() or [tokenizer.eos_id])

  def cut_prompt(self, ids, max_tokens: int, *, keep_end: bool = False):
    """A prompt's ids that fit the budget of `max_tokens` (T5's encoder input keeps one place for its end-of-text):
    an over-long prompt loses its end, or with `keep_end` its beginning."""
    room = max(max_tokens - 1, 0) if self.kind == "encoder_decoder" else max_tokens
    return ids[max(len(ids) - room, 0):] if keep_end else ids[:room]

  def example_features(self, prompt_ids, continuation_ids, *, tokenizer, max_prompt_tokens: int,
                       max_continuation_tokens: int, end_id: int | None = None) -> dict | None:
    """Teacher-forced features scoring `continuation` + its end after `prompt` (None if nothing to score).

    The end is end-of-text, or for a decoder `end_id` (the end-of-turn marker a chat reply ends with; T5's
    replies always end with end-of-text).
    """
    if self.kind == "encoder_decoder":
      return transforms.seq2seq_features(prompt_ids, continuation_ids, eos_id=tokenizer.eos_id,
                                         max_input_len=max_prompt_tokens, max_target_len=max_continuation_tokens + 1)
    bos = tokenizer.bos_id if tokenizer.adds_bos else None
    return transforms.decoder_features(prompt_ids, continuation_ids, bos_id=bos,
                                       eos_id=tokenizer.eos_id if end_id is None else end_id,
                                       max_len=max_prompt_tokens + max_continuation_tokens + 1)


def from_config(config: ModelConfig) -> Model:
  if getattr(config, "kind", None) not in FAMILIES:
    raise TypeError(f"not a model config: {type(config).__name__}")
  return Model(config)


def config_for(kind: str, size: str, **fields) -> ModelConfig:
  """The config of a named size of `kind`, with `fields` over it."""
  family = _family_of(kind, "kind")
  if size not in family.sizes:
    raise ModelConfigError(f"unknown {kind} size {size!r}; choose one of {sorted(family.sizes)}")
  return family.config_cls(**{**family.sizes[size], **fields})


def _family_of(kind: str, flag: str) -> _Family:
  if kind not in FAMILIES:
    raise ModelConfigError(f"config.model.{flag}={kind!r}: choose one of {list(FAMILIES)}")
  return FAMILIES[kind]


def runtime_fields(config: ModelConfig) -> dict[str, Any]:
  """The RUNTIME_FIELDS of a model config (what a checkpoint is loaded with)."""
  return {k: getattr(config, k) for k in RUNTIME_FIELDS}


def _runtime(section) -> dict[str, Any]:
  fields = {"dtype": _dtype(section.dtype, "dtype"), "param_dtype": _dtype(section.param_dtype, "param_dtype"),
            "remat_policy": section.remat_policy, "scan_layers": bool(section.scan_layers),
            "attention": section.attention}
  if section.dropout_rate is not None:
    fields["dropout_rate"] = float(section.dropout_rate)
  return fields


def _dtype(name: str, key: str):
  if name not in DTYPES:
    raise ModelConfigError(f"config.model.{key}={name!r}: choose one of {sorted(DTYPES)}")
  return DTYPES[name]


def _check_override_names(family: _Family, overrides: dict, key) -> None:
  fields = [f.name for f in dataclasses.fields(family.config_cls)]
  for name in overrides:
    if name not in fields:
      close = difflib.get_close_matches(name, fields, n=1)
      raise ModelConfigError(f"{key('overrides.' + name)}: {family.config_cls.__name__} has no field {name!r}"
                             + (f"; did you mean {close[0]}?" if close else ""))
    if name in RUNTIME_FIELDS or name == "lora":
      raise ModelConfigError(f"{key('overrides.' + name)}: set config.model.{name} instead")


def _as_field(value, current):
  """A config value (ConfigDict, list) in the type of the dataclass field it overrides."""
  if isinstance(current, layers.RopeScaling) and hasattr(value, "items"):
    return layers.RopeScaling(**dict(value))
  return value


def _lora(section, key, adapter: lora_lib.LoraConfig | None) -> lora_lib.LoraConfig | None:
  """config.model.lora as a LoraConfig (None: off); `adapter` (model.lora.init_from's) fixes rank, alpha, targets."""
  lkey = lambda k: key(f"lora.{k}")
  try:
    ours = lora_lib.from_section(section.lora, lkey, aliases=families.lora_aliases())
  except lora_lib.LoraError as e:
    raise ModelConfigError(str(e)) from None
  if adapter is None:
    if section.lora.init_from:
      raise ModelConfigError(f"{lkey('init_from')}={section.lora.init_from!r}: the adapter directory was not read")
    return ours
  if ours is not None:
    for f in ("rank", "alpha", "targets"):
      if getattr(ours, f) != getattr(adapter, f):
        raise ModelConfigError(f"{lkey(f)}={getattr(ours, f)!r} contradicts {lkey('init_from')} ({f} is "
                               f"{getattr(adapter, f)!r} there); leave config.model.lora.rank 0 to take the adapter's")
  return dataclasses.replace(adapter, dropout=float(section.lora.dropout))


def from_section(section, *, vocab_size: int | None = None, checkpoint: ModelConfig | None = None,
                 source: str = "config.init_from", flag_keys=(), adapter: lora_lib.LoraConfig | None = None) -> Model:
  """The model of a config.model section.

  Without `checkpoint`: kind, size and overrides name the shape (vocab_size, when given, fills the
  vocabulary unless an override sets it). With `checkpoint` (the model config of config.init_from): the
  shape is the checkpoint's; kind, size and overrides may be left empty, and where they are set they must
  agree with it. Runtime fields (dtype, param_dtype, remat_policy, scan_layers, dropout_rate, attention) always
  come from the section, and so does LoRA (config.model.lora; `adapter` is the LoRA config of the PEFT directory
  config.model.lora.init_from names). Errors name `--config.model.KEY` for keys in `flag_keys` (set on the
  command line).
  """
  key = lambda k: f"--config.model.{k}" if f"model.{k}" in flag_keys else f"config.model.{k}"
  overrides = dict(section.overrides)
  runtime = {**_runtime(section), "lora": _lora(section, key, adapter)}
  if checkpoint is None:
    if not section.kind or not section.size:
      raise ModelConfigError("config.model.kind and config.model.size name the model to train (e.g. "
                             "--config.model.kind=decoder --config.model.size=1b), unless config.init_from "
                             "names a checkpoint to start from")
    family = _family_of(section.kind, "kind")
    _check_override_names(family, overrides, key)
    if vocab_size is not None:
      overrides.setdefault("vocab_size", vocab_size)
    current = family.config_cls(**family.sizes.get(section.size, {}))
    overrides = {k: _as_field(v, getattr(current, k)) for k, v in overrides.items()}
    return _runnable(Model(config_for(section.kind, section.size, **overrides, **runtime)))
  family = FAMILIES[checkpoint.kind]
  if section.kind and section.kind != checkpoint.kind:
    raise ModelConfigError(f"{key('kind')}={section.kind!r} contradicts {source}, a {checkpoint.kind} model; "
                           "leave config.model.kind empty to take the checkpoint's")
  if section.size:
    sized = config_for(checkpoint.kind, section.size)
    differ = [f"{k} {getattr(sized, k)} vs {getattr(checkpoint, k)}" for k in family.sizes[section.size]
              if k != "vocab_size" and getattr(sized, k) != getattr(checkpoint, k)]
    if differ:
      raise ModelConfigError(f"{key('size')}={section.size!r} contradicts {source} ({', '.join(differ)}); "
                             "leave config.model.size empty to take the checkpoint's shape")
  _check_override_names(family, overrides, key)
  for name, value in overrides.items():
    value = _as_field(value, getattr(checkpoint, name))
    if value != getattr(checkpoint, name):
      raise ModelConfigError(f"{key('overrides.' + name)}={value!r} contradicts {source} ({name} is "
                             f"{getattr(checkpoint, name)!r} there); the checkpoint fixes the model's shape")
  return _runnable(Model(dataclasses.replace(checkpoint, **runtime)))


def _runnable(model: Model) -> Model:
  """`model`, once its attention kernel is known to run on this backend with its dtype, head width and dropout
  (the error comes here, before a run writes anything, not from inside the first jit trace)."""
  cfg = model.config
  attention.resolve(cfg.attention, dtype=cfg.dtype, head_dim=cfg.head_dim, dropout_active=cfg.dropout_rate > 0,
                    dense_mask=False)
  return model


# ---------------------------------------------------------------- model_config.json

def config_to_json(config: ModelConfig) -> dict:
  """{kind, config: {field: value}} with dtypes as names (model_config.json of imported dirs and workdirs)."""
  fields = {}
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if f.name in ("dtype", "param_dtype"):
      v = jnp.dtype(v).name
    elif isinstance(v, (layers.RopeScaling, lora_lib.LoraConfig)):
      v = dataclasses.asdict(v)
    fields[f.name] = v
  return {"kind": config.kind, "config": fields}


def config_from_json(blob: dict, where: str) -> ModelConfig:
  if blob.get("kind") not in FAMILIES:
    raise ModelConfigError(f"{where}: kind {blob.get('kind')!r}; expected one of {list(FAMILIES)}")
  cls = FAMILIES[blob["kind"]].config_cls
  fields = dict(blob.get("config", {}))
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise ModelConfigError(f"{where}: unknown config field(s) {unknown} for {cls.__name__}")
  for k in ("dtype", "param_dtype"):
    if k in fields:
      fields[k] = jnp.dtype(fields[k])
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}  # JSON lists: tuples
  for name, cls_ in (("rope_scaling", layers.RopeScaling), ("lora", lora_lib.LoraConfig)):
    if isinstance(fields.get(name), dict):
      try:
        fields[name] = cls_(**fields[name])
      except (TypeError, lora_lib.LoraError) as e:
        raise ModelConfigError(f"{where}: {name}: {e}") from e
  return cls(**fields)


# ---------------------------------------------------------------- layer layouts

def relayout(params, config: ModelConfig, *, scan_layers: bool) -> Any:
  """Parameters of `config`'s layout (unrolled `layer_i` or scanned `layers`) in the other layout.

  Lets a checkpoint saved unrolled train scanned and vice versa. Each stack's per-layer subtrees are
  stacked on a new leading axis (or split along it); other parameters pass through.
  """
  if config.scan_layers == scan_layers:
    return params

  def convert(tree):
    if not isinstance(tree, dict):
      return tree
    keys = set(tree)
    unrolled = sorted((k for k in keys if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
    if scan_layers and unrolled and keys == set(unrolled):
      return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[k] for k in unrolled])}
    if not scan_layers and keys == {"layers"} and _is_stacked(tree["layers"]):
      n = jax.tree.leaves(tree["layers"])[0].shape[0]
      return {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], tree["layers"]) for i in range(n)}
    return {k: convert(v) for k, v in tree.items()}

  return convert(params)


def _is_stacked(tree) -> bool:
  return isinstance(tree, dict) and not any(k.startswith("layer_") for k in tree)
