"""Convert checkpoints between Hugging Face, T5X and instruct_jax's imported-directory format.

    # Hugging Face dir (config.json + safetensors) -> imported dir (orbax params + model_config.json)
    python -m instruct_jax.convert --from hf --src flan-t5-base/ --dst ckpt/flan-t5-base
    # T5X checkpoint (e.g. a local copy of a public Flan-T5 release) -> imported dir
    python -m instruct_jax.convert --from t5x --src flan_t5_base/checkpoint_1184000 --dst ckpt/flan-t5-base
    # imported dir (e.g. after fine-tuning) -> Hugging Face dir that transformers loads
    python -m instruct_jax.convert --to hf --src ckpt/flan-t5-base --dst out/flan-t5-base-hf

--from and --to default to `instruct_jax`; `--from t5x --to hf` converts without an intermediate dir.
Imports place parameters sharded over all local devices (--sharding preset over an fsdp mesh) while
reading, so host memory holds the parameters once; exports write one tensor at a time.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import app, flags

from instruct_jax import sharding
from instruct_jax.models import convert

_FROM = flags.DEFINE_enum("from", "instruct_jax", ["hf", "t5x", "instruct_jax"], "Format of --src.")
_TO = flags.DEFINE_enum("to", "instruct_jax", ["hf", "instruct_jax"], "Format written to --dst.")
_SRC = flags.DEFINE_string("src", None, "Source directory.", required=True)
_DST = flags.DEFINE_string("dst", None, "Destination directory.", required=True)
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
  src, kind = _SRC.value, flags.FLAGS["from"].value
  if kind == "hf":
    return convert.import_hf(src, mesh, rules, allow_pickle=_ALLOW_PICKLE.value,
                             allow_unknown_fields=_ALLOW_UNKNOWN.value, scan_layers=_SCAN.value,
                             param_dtype=_PARAM_DTYPE.value)
  if kind == "t5x":
    return convert.import_t5x(src, mesh, rules, scan_layers=_SCAN.value, param_dtype=_PARAM_DTYPE.value)
  return convert.load_imported(src, mesh, rules)


def main(argv: Sequence[str]) -> None:
  try:
    _convert(argv)
  except convert.ConversionError as e:
    raise SystemExit(f"error: {e}") from None


def _convert(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  kind, to = flags.FLAGS["from"].value, _TO.value
  if kind == to:
    raise app.UsageError(f"--from and --to are both {kind!r}; pass --from hf|t5x to import or --to hf to export")
  if to == "hf":  # the exporter fetches parameters to the host one by one: keep them on the CPU
    mesh, rules = sharding.make_mesh({"data": 1}, jax.devices("cpu")[:1]), sharding.get_rules("data_parallel")
  else:
    mesh, rules = sharding.make_mesh({"fsdp": -1}), sharding.get_rules(_SHARDING.value)
  start = time.perf_counter()
  pretrained = _read(mesh, rules)
  n = sum(x.size for x in jax.tree.leaves(pretrained.params))
  print(f"read {pretrained.source}: {type(pretrained.config).__name__}, {n / 1e6:.1f}M parameters in "
        f"{time.perf_counter() - start:.1f}s")
  if to == "hf":
    files = convert.export_hf(pretrained.config, pretrained.params, _DST.value, hf_base=pretrained.hf_config,
                              dtype=None if _EXPORT_DTYPE.value is None else jnp.dtype(_EXPORT_DTYPE.value),
                              max_shard_bytes=int(_MAX_SHARD_GB.value * 1024**3), tokenizer_src=_SRC.value)
    print(f"wrote {_DST.value}: {', '.join(files)}")
  else:
    convert.save_imported(pretrained, _DST.value, tokenizer_src=_SRC.value)
    print(f"wrote {_DST.value} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  app.run(main)
