"""What every checkpoint family declares: tensor maps, config-field checks, and the error they raise.

A `TensorMap` says how one instruct_jax parameter is made from checkpoint tensors. Per layer, the
parameter is the checkpoint tensor (transposed when `transpose`) reshaped to the parameter's shape: its
first `split` dimensions flatten into the tensor's first (post-transpose) dimension and the rest into the
second, e.g. a Hugging Face q_proj weight [H*K, D] transposed is [D, H*K] = query kernel [D, H, K] with
split 1. A scanned parameter stacks one tensor per layer on a leading axis. Reading and writing the
tensors is `instruct_jax.convert`'s.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from absl import logging

from instruct_jax import errors

Path = tuple[str, ...]  # a parameter's key path, e.g. ("layers", "layer_0", "attention", "query", "kernel")


class ConversionError(errors.UserError, ValueError):
  """A checkpoint or config that cannot be converted; the message names the file, tensor or field."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
  names: tuple[str, ...]  # one checkpoint tensor, or one per layer when `stacked`
  transpose: bool = False
  split: int | None = 1  # leading parameter dims that form the tensor's first dim; None: a 1-D tensor
  stacked: bool = False
  scale: float = 1.0  # multiplies the values on import (folds a constant factor into a weight)

  def source_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape the checkpoint tensor must have to make one layer of a parameter of `param_shape`."""
    layer = param_shape[1:] if self.stacked else param_shape
    if self.split is None:
      return (math.prod(layer),)
    shape = (math.prod(layer[:self.split]), math.prod(layer[self.split:]))
    return shape[::-1] if self.transpose else shape


def add_layers(maps: dict[Path, TensorMap], prefix: Path, num_layers: int, scan: bool,
               per_layer: Mapping[Path, tuple[str, bool, int | None]], name_format: str) -> None:
  """Adds the maps of a stack of layers: per_layer is {sub-path: (tensor suffix, transpose, split)}.

  `name_format.format(i=i)` + suffix is layer i's tensor name. Unrolled stacks are `prefix/layer_i/...`,
  scanned ones `prefix/layers/...` with one tensor per layer stacked.
  """
  for sub, (suffix, transpose, split) in per_layer.items():
    names = tuple(name_format.format(i=i) + suffix for i in range(num_layers))
    if scan:
      maps[prefix + ("layers",) + sub] = TensorMap(names, transpose, split, stacked=True)
    else:
      for i, name in enumerate(names):
        maps[prefix + (f"layer_{i}",) + sub] = TensorMap((name,), transpose, split)


GENERIC_FIELDS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "use_cache", "return_dict", "output_attentions", "output_hidden_states", "torchscript", "id2label",
    "label2id", "problem_type", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
    "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "initializer_factor", "gradient_checkpointing", "pruned_heads",
    "chunk_size_feed_forward", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "max_new_tokens",
    "use_bfloat16", "tf_legacy_loss",
    # Token ids and bookkeeping that cannot change the computation (SmolLM2's config.json has unk_token_id).
    "unk_token_id", "_model_name_or_path", "_commit_hash", "_attn_implementation_autoset", "attn_implementation",
})


def check_fields(config: Mapping, known: Iterable[str], where: str, allow_unknown: bool, *,
                 architectures: Iterable[str] = ()) -> None:
  """Refuses config fields this converter does not know (they might change the computation), and
  `architectures` entries other than those given."""
  for arch in config.get("architectures") or ():
    if arch not in architectures:
      raise ConversionError(f"{where}: architecture {arch!r} is not supported for model_type "
                            f"{config.get('model_type')!r}; supported: {list(architectures)}")
  unknown = sorted(set(config) - GENERIC_FIELDS - set(known))
  if not unknown:
    return
  msg = (f"{where}: unknown config field(s) {unknown}; the converter cannot tell whether they change the "
         "model. If they do not, pass --allow_unknown_config_fields (allow_unknown_fields=True)")
  if not allow_unknown:
    raise ConversionError(msg)
  logging.warning("%s", msg)


def require(config: Mapping, field: str, where: str):
  if field not in config or config[field] is None:
    raise ConversionError(f"{where}: missing config field {field!r}")
  return config[field]
