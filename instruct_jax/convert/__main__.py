"""Convert checkpoints between Hugging Face, T5X and instruct_jax (imported directories and training workdirs).

    # Hugging Face dir (config.json + safetensors) -> imported dir (orbax params + model_config.json)
    python -m instruct_jax.convert --from hf --src flan-t5-base/ --dst ckpt/flan-t5-base
    # T5X checkpoint (e.g. a local copy of a public Flan-T5 release) -> imported dir
    python -m instruct_jax.convert --from t5x --src flan_t5_base/checkpoint_1184000 --dst ckpt/flan-t5-base
    # a training workdir (its newest checkpoint, or --step N) or an imported dir -> a Hugging Face dir
    python -m instruct_jax.convert --to hf --src /tmp/finetune [--step 800] --dst out/my-model-hf
    # LoRA: a workdir's adapters as a PEFT adapter directory (--to hf writes the model with them merged in)
    python -m instruct_jax.convert --to peft --src /tmp/lora_run --dst out/my-adapter [--base_model NAME]
    # a PEFT adapter directory on a base checkpoint (any --src of load_pretrained) -> imported dir with LoRA
    python -m instruct_jax.convert --from peft --src out/my-adapter --base ckpt/llama --dst ckpt/llama-lora

--from and --to default to `instruct_jax`; `--from t5x --to hf` converts without an intermediate dir.
An export writes the weights, config.json, generation_config.json and the tokenizer files, so that
`AutoModelForSeq2SeqLM` / `AutoModelForCausalLM` and `AutoTokenizer.from_pretrained(dst)` load it; a decoder
trained in a chat format whose turns end with a token of their own (ChatML's <|im_end|>) gets that id among
generation_config.json's eos_token_id, so `generate` stops at the end of its turn.
Imports place parameters sharded over all local devices (--sharding preset over an fsdp mesh) while
reading, so host memory holds the parameters once; exports write one tensor at a time.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import app, flags

from instruct_jax import convert, errors, sharding
from instruct_jax import workdir as workdir_lib
from instruct_jax.data import chat
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.models import build, families, lora

_FROM = flags.DEFINE_enum("from", "instruct_jax", ["hf", "t5x", "peft", "instruct_jax"], "Format of --src.")
_TO = flags.DEFINE_enum("to", "instruct_jax", ["hf", "peft", "instruct_jax"], "Format written to --dst (hf: "
                        "LoRA adapters merged into the weights; peft: the adapters alone).")
_BASE = flags.DEFINE_string("base", None, "--from peft: the base checkpoint the adapters belong to (a workdir, "
                            "imported, Hugging Face or T5X directory).")
_BASE_MODEL = flags.DEFINE_string("base_model", None, "--to peft: base_model_name_or_path written to "
                                  "adapter_config.json (default: the run's init_from).")
_SRC = flags.DEFINE_string("src", None, "Source directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a training workdir --src (default: the newest).")
_DST = flags.DEFINE_string("dst", None, "Destination directory.", required=True)
errors.local_path_flags("dst")
_SCAN = flags.DEFINE_bool("scan_layers", False, "Import into the scanned layout (one stacked `layers` tree).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "dtype the imported parameters are stored in.")
_EXPORT_DTYPE = flags.DEFINE_enum("export_dtype", None, ["float32", "bfloat16", "float16"],
                                  "dtype of exported tensors (default: the parameters' dtype).")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 2.0, "Largest exported safetensors file, in GiB.")
_SHARDING = flags.DEFINE_string("sharding", "fsdp", "Sharding preset used while importing.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False,
                                  "Load pickled pytorch_model.bin weights (torch.load(weights_only=True)).")
_ALLOW_UNKNOWN = flags.DEFINE_bool("allow_unknown_config_fields", False,
                                   "Warn about, instead of refusing, config.json fields the converter does not know.")


def _read(mesh, rules) -> convert.Pretrained:
  src, kind = _SRC.value, _FROM.value
  if kind == "hf":
    return convert.import_hf(src, mesh, rules, allow_pickle=_ALLOW_PICKLE.value,
                             allow_unknown_fields=_ALLOW_UNKNOWN.value, scan_layers=_SCAN.value,
                             param_dtype=_PARAM_DTYPE.value)
  if kind == "t5x":
    return convert.import_t5x(src, mesh, rules, scan_layers=_SCAN.value, param_dtype=_PARAM_DTYPE.value)
  if kind == "peft":
    if not _BASE.value:
      raise app.UsageError("--from peft needs --base, the checkpoint the adapters were trained on")
    base = convert.load_pretrained(_BASE.value, mesh, rules, allow_pickle=_ALLOW_PICKLE.value,
                                   allow_unknown_fields=_ALLOW_UNKNOWN.value, step=_STEP.value)
    model, base_params = build.Model(base.config).merged(base.params)
    config = dataclasses.replace(model.config, lora=convert.read_peft_config(src, model.kind))
    adapters = convert.import_peft(src, config, mesh, rules)
    return convert.Pretrained(config, lora.combine(base_params, adapters), f"{_BASE.value} + {src}", base.hf_config)
  kind = convert.source_kind(src)
  if kind not in ("imported", "workdir"):
    raise convert.ConversionError(f"--src {src} is a {kind} checkpoint; pass --from {kind}")
  return convert.load_pretrained(src, mesh, rules, step=_STEP.value)


def _chat_spec(run, tokenizer, family: str) -> tuple[str, bool]:
  """The chat format the run rendered with (`families.chat_spec`), and whether it had chat data."""
  try:
    has_chat = tasks_lib.has_chat_data(run.data_paths)
  except sources.DataError:  # a dataset the run read is gone since: its chat files still say
    has_chat = bool(run.data_paths.chat_files)
  return families.chat_spec(run.data.chat_format, tokenizer, family, from_checkpoint=bool(run.init_from),
                            has_chat_data=has_chat), has_chat


def _end_of_turn(config, tokenizer, model_config) -> int | None:
  """The id a decoder trained in the run's chat format ends its turn with, when it is not end-of-text (None: none,
  or no chat format)."""
  if not build.Model(model_config).reply_follows_prompt:
    return None
  spec, has_chat = _chat_spec(config, tokenizer, model_config.family)
  try:
    fmt = chat.resolve_format(spec, tokenizer, has_chat_data=has_chat)
    stop = chat.end_of_turn_id(fmt, tokenizer) if fmt is not None else None
  except chat.ChatError:
    return None
  return None if stop == tokenizer.eos_id else stop


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  kind, to = _FROM.value, _TO.value
  if kind == to:
    raise app.UsageError(f"--from and --to are both {kind!r}; pass --from hf|t5x to import or --to hf to export")
  if to in ("hf", "peft"):  # the exporter fetches parameters to the host one by one: keep them on the CPU
    mesh, rules = sharding.make_mesh({"data": 1}, jax.devices("cpu")[:1]), sharding.get_rules("data_parallel")
  else:
    mesh, rules = sharding.make_mesh({"fsdp": -1}), sharding.get_rules(_SHARDING.value)
  start = time.perf_counter()
  pretrained = _read(mesh, rules)
  n = sum(x.size for x in jax.tree.leaves(pretrained.params))
  step = f" (step {pretrained.step})" if pretrained.step is not None else ""
  print(f"read {pretrained.source}{step}: {type(pretrained.config).__name__}, {n / 1e6:.1f}M parameters in "
        f"{time.perf_counter() - start:.1f}s")
  if to == "hf":
    tok_src = _BASE.value if kind == "peft" else _SRC.value  # an adapter directory holds no tokenizer: its base's
    try:
      tokenizer = convert.load_tokenizer(tok_src)
    except convert.ConversionError as e:
      tokenizer = None
      print(f"note: no tokenizer exported ({e})")
    template, stop = None, None
    if tokenizer is not None and workdir_lib.is_workdir(tok_src):  # the run's chat format, for transformers
      spec, _ = _chat_spec(workdir_lib.read_config(tok_src), tokenizer, pretrained.config.family)
      template = (tokenizer.chat_template() if spec in ("", "tokenizer") else
                  chat.export_template(spec, begin_of_text=build.Model(pretrained.config).reply_follows_prompt
                                       and tokenizer.adds_bos))
      stop = _end_of_turn(workdir_lib.read_config(tok_src), tokenizer, pretrained.config)
    files = convert.export_hf(pretrained.config, pretrained.params, _DST.value, hf_base=pretrained.hf_config,
                              dtype=None if _EXPORT_DTYPE.value is None else jnp.dtype(_EXPORT_DTYPE.value),
                              max_shard_bytes=int(_MAX_SHARD_GB.value * 1024**3), tokenizer=tokenizer,
                              tokenizer_src=tok_src, chat_template=template, stop_id=stop)
    print(f"wrote {_DST.value}: {', '.join(files)}")
  elif to == "peft":
    base_model = _BASE_MODEL.value or convert.base_model_name(_SRC.value)
    files = convert.export_peft(pretrained.config, pretrained.params, _DST.value, base_model=base_model,
                                dtype=None if _EXPORT_DTYPE.value is None else jnp.dtype(_EXPORT_DTYPE.value))
    print(f"wrote {_DST.value}: {', '.join(files)}")
  else:
    convert.save_imported(pretrained, _DST.value, tokenizer_src=_BASE.value if kind == "peft" else _SRC.value)
    print(f"wrote {_DST.value} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  errors.run(main)
