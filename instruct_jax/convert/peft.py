"""LoRA adapters in and out as Hugging Face PEFT adapter directories.

    export_peft(config, params, "adapter/", base_model="meta-llama/Llama-3.2-1B")  # config.lora must be set
    peft.PeftModel.from_pretrained(hf_base_model, "adapter/")                         # the same logits
    lora_cfg = read_peft_config("adapter/", "decoder")                               # rank, alpha, targets
    adapters = import_peft("adapter/", config, mesh, rules)                         # placed sharded

An adapter directory holds adapter_config.json (peft_type LORA, r, lora_alpha, lora_dropout, target_modules
as Hugging Face module names: q_proj ... for LLaMA, q ... for T5; see models/lora.py for the mapping) and
adapter_model.safetensors. PEFT names the adapter of a Hugging Face Linear `X.weight` [out, in]
`base_model.model.X.lora_A.weight` [r, in] and `...lora_B.weight` [out, r], and adds
lora_alpha / r * B A x to its output, as `layers.Dense` does; the tensors follow the same TensorMaps as the
base kernels (transposed; A splits where the kernel does, B after the rank). Only plain LoRA is read:
adapters with rsLoRA, DoRA, biases, per-layer patterns or regex targets are refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
from jax.sharding import Mesh
from safetensors.numpy import save_file

from instruct_jax import errors
from instruct_jax.convert import outdir, tensors
from instruct_jax.convert.tensors import ConversionError, TensorMap
from instruct_jax.models import build, families, lora as lora_lib

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# adapter_config.json fields that must keep PEFT's plain-LoRA value for the adapter to compute what ours does.
_PLAIN = {"use_rslora": False, "use_dora": False, "bias": "none", "fan_in_fan_out": False, "layers_to_transform": None,
          "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
          "megatron_config": None, "trainable_token_indices": None, "alora_invocation_tokens": None,
          "use_qalora": False, "lora_bias": False, "target_parameters": None, "layer_replication": None,
          "exclude_modules": None}


def adapter_maps(config: build.ModelConfig) -> dict[tensors.Path, TensorMap]:
  """{adapter parameter path: TensorMap} of a model config with LoRA (the same for import and export)."""
  if config.lora is None:
    raise ConversionError("the model has no LoRA adapters (config.model.lora.rank is 0)")
  maps = {}
  for path, tmap in families.of_config(config).tensor_maps(dataclasses.replace(config, lora=None)).items():
    if path[-1] != "kernel" or path[-2] not in config.lora.targets:
      continue
    modules = [n.removesuffix(".weight") for n in tmap.names]
    for leaf, part, split in (("lora_a", "lora_A", tmap.split), ("lora_b", "lora_B", 1)):
      maps[path[:-1] + (leaf,)] = TensorMap(tuple(f"{PREFIX}{m}.{part}.weight" for m in modules), transpose=True,
                                            split=split, stacked=tmap.stacked)
  return maps


def export_peft(config: build.ModelConfig, params, dst: str | os.PathLike, *, base_model: str | None = None,
                dtype=None) -> list[str]:
  """Writes the adapters of `params` as a PEFT adapter directory; returns the files written."""
  maps = adapter_maps(config)
  adapters = lora_lib.trainable(params, config.lora)
  tensors.check_paths(maps, tensors.param_paths(adapters), str(dst))
  np_dtype = np.dtype(dtype if dtype is not None else jax.tree.leaves(adapters)[0].dtype)
  out = {name: produce() for name, produce, _ in tensors.export_tensors(
      adapters, maps, np_dtype)}
  with outdir.replacing(dst, to="peft", base_model=base_model) as tmp:
    _write_adapter(config, out, tmp, base_model)
  return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def _write_adapter(config: build.ModelConfig, out: dict[str, np.ndarray], dst: pathlib.Path,
                   base_model: str | None) -> None:
  save_file(out, dst / ADAPTER_WEIGHTS, metadata={"format": "pt"})
  family = families.of_config(config)
  names = family.LORA_NAMES
  blob = {"peft_type": "LORA", "task_type": family.PEFT_TASK_TYPE, "base_model_name_or_path": base_model,
          "r": config.lora.rank, "lora_alpha": config.lora.alpha, "lora_dropout": config.lora.dropout,
          "target_modules": sorted(names[t] for t in config.lora.targets), "init_lora_weights": True,
          "inference_mode": True, "revision": None,
          **{k: v for k, v in _PLAIN.items() if k in ("use_rslora", "use_dora", "bias", "fan_in_fan_out",
                                                      "layers_to_transform", "rank_pattern", "alpha_pattern",
                                                      "modules_to_save")}}
  (dst / ADAPTER_CONFIG).write_text(json.dumps(blob, indent=2) + "\n")


def base_model_name(path: str | os.PathLike) -> str | None:
  """What a workdir or imported directory started from (its model_config.json `source`), for adapter_config.json."""
  try:
    return json.loads((pathlib.Path(path) / "model_config.json").read_text()).get("source") or None
  except (OSError, ValueError):
    return None


def read_peft_config(src: str | os.PathLike, kind: str, where: str | None = None) -> lora_lib.LoraConfig:
  """The LoRA settings (rank, alpha, dropout, targets in our names) of a PEFT adapter directory."""
  path = pathlib.Path(src) / ADAPTER_CONFIG
  where = f"{where}: {path}" if where else str(path)
  try:
    blob = errors.loads_json(path.read_text())
  except FileNotFoundError:
    raise ConversionError(f"{where}: no such file; not a PEFT adapter directory") from None
  except json.JSONDecodeError as e:
    raise ConversionError(f"{where}: line {e.lineno}: invalid JSON ({e.msg})") from None
  if blob.get("peft_type") != "LORA":
    raise ConversionError(f"{where}: peft_type {blob.get('peft_type')!r}; only LORA adapters are supported")
  for field, plain in _PLAIN.items():
    if field in blob and blob[field] not in (plain, None, {}, [], False):
      raise ConversionError(f"{where}: {field}={blob[field]!r} is not supported (only plain LoRA: {field}={plain!r})")
  modules = blob.get("target_modules")
  if not isinstance(modules, list) or not modules:
    raise ConversionError(f"{where}: target_modules={modules!r}; expected a list of module names (regex targets "
                          "are not supported)")
  ours = families.lora_names(kind)
  unknown = [m for m in modules if m not in ours]
  if unknown:
    raise ConversionError(f"{where}: target_modules {unknown} are not projections of a {kind} model; known: "
                          f"{sorted(ours)}")
  try:
    return lora_lib.LoraConfig(rank=blob.get("r"), alpha=float(blob.get("lora_alpha", 8)),
                               dropout=float(blob.get("lora_dropout", 0.0)),
                               targets=tuple(t for t in lora_lib.TARGETS if t in {ours[m] for m in modules}))
  except lora_lib.LoraError as e:
    raise ConversionError(f"{where}: {e}") from None


def import_peft(src: str | os.PathLike, config: build.ModelConfig, mesh: Mesh, rules):
  """The adapters of a PEFT directory as the `trainable` subtree of `config`'s params, placed on `mesh`.

  `config.lora` must agree with the directory's rank, alpha and targets (see `read_peft_config`).
  """
  got = read_peft_config(src, config.kind)
  want = config.lora
  if want is None or (got.rank, got.alpha, got.targets) != (want.rank, want.alpha, want.targets):
    raise ConversionError(f"{src}: adapter (rank {got.rank}, alpha {got.alpha}, targets {got.targets}) does not fit "
                          f"the model's LoRA config {want}")
  maps = adapter_maps(config)
  abstract = lora_lib.trainable(build.Model(config).abstract_params(mesh, rules), config.lora)
  shapes = tensors.param_paths(abstract)
  source = tensors.TensorSource(src)
  tensors.check_tensors(source, maps, shapes)
  tensors.check_unused(source, maps, lambda name: False)
  return tensors.place_params(source, maps, abstract, jax.tree.map(lambda a: a.sharding, abstract))
