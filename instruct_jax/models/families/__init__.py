"""Checkpoint families as plug-ins: everything that differs between model families lives in one module each.

    family = families.by_model_type(hf_config["model_type"], where)   # importing a Hugging Face checkpoint
    family = families.of_config(model_config)                        # exporting, PEFT names, row format

A family module declares:

    MODEL_TYPES, ARCHITECTURES   the config.json model types and architectures it reads
    KIND                         the model it builds: "encoder_decoder" (models/t5.py) or "decoder" (models/decoder.py)
    config_from_hf(hf, names, where, *, allow_unknown_fields, **overrides)
                                 config.json (and the checkpoint's tensor names) -> the model config, with
                                 `family` set to the model type; fields it does not know are refused unless
                                 harmless (base.GENERIC_FIELDS and its own list)
    tensor_maps(cfg, hf=None, names=None)
                                 {parameter path: base.TensorMap}, the same for import and export
    ignorable(name)              checkpoint tensors that may go unused (buffers)
    hf_config(cfg, base, dtype_name, token_ids)
                                 the config.json transformers reads back as this model
    token_ids(tokenizer)         config.json's special ids from the tokenizer
    ROW_FORMAT                   how a row begins and ends, for the exported tokenizer (`Tokenizer.save_for_hf`):
                                 "t5" (inputs + end-of-text) or "decoder" (begin-of-text where the tokenizer
                                 adds one, then the text)
    LORA_NAMES                   {our projection name: the Hugging Face module name PEFT targets}
    PEFT_TASK_TYPE               adapter_config.json's task_type ("SEQ_2_SEQ_LM", "CAUSAL_LM")
    default_chat_format(tokenizer)
                                 the named chat format (data/templates/chat_formats.yaml) a chat run from such a
                                 checkpoint renders with when its tokenizer has no chat template (a base model), or
                                 None (the run must name one)

The models read only config switches (q/k/v bias, q/k norm, (1 + w) norms, ...), never a family's name. Adding a
family is its module, a line in MODULES below, and its tests (tests/convert/test_families.py).
"""
from __future__ import annotations

from instruct_jax.models.families import gemma, llama, qwen, t5
from instruct_jax.models.families.base import ConversionError

MODULES = (t5, llama, qwen, gemma)
BY_MODEL_TYPE = {model_type: module for module in MODULES for model_type in module.MODEL_TYPES}


def by_model_type(model_type, where: str):
  """The family module that reads config.json's `model_type` (ConversionError naming the supported ones)."""
  if model_type not in BY_MODEL_TYPE:
    raise ConversionError(f"{where}: model_type {model_type!r} is not supported; supported model types: "
                          f"{sorted(BY_MODEL_TYPE)}")
  return BY_MODEL_TYPE[model_type]


def of_config(config):
  """The family module of a model config (its `family`, a model type)."""
  return BY_MODEL_TYPE[config.family]


def lora_names(kind: str) -> dict[str, str]:
  """{Hugging Face module name: our projection name} over the families of a model kind (PEFT adapters)."""
  return {theirs: ours for module in MODULES if module.KIND == kind for ours, theirs in module.LORA_NAMES.items()}


def lora_aliases() -> dict[str, str]:
  """{a checkpoint's module name PEFT targets: our projection name} over every family (hints for a wrong target)."""
  return {theirs: ours for module in MODULES for ours, theirs in module.LORA_NAMES.items()}


def default_chat_format(family: str, tokenizer) -> str | None:
  """The default chat format of the family whose model config says `family` (its model type), for `tokenizer`;
  None for a family without one, or an unknown family."""
  module = BY_MODEL_TYPE.get(family)
  return module.default_chat_format(tokenizer) if module is not None else None


def chat_spec(spec: str, tokenizer, family: str | None, *, from_checkpoint: bool, has_chat_data: bool) -> str:
  """The chat format a run renders with, as a config.data.chat_format value: `spec`, except that a run from a
  checkpoint with chat data, no chat format named ("") and a tokenizer without a chat template (a base model) takes
  its family's default (`default_chat_format`; `family`: the model config's)."""
  if spec == "" and from_checkpoint and family and has_chat_data and tokenizer is not None \
      and tokenizer.chat_template() is None:
    return default_chat_format(family, tokenizer) or spec
  return spec
