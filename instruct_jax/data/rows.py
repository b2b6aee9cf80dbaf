"""How a model kind's training rows are made: one class per kind, looked up once by the name the model factory
gives (`build.Model.kind`, `PipelineConfig.model_kind`), so the pipeline and packing never test a kind.

    rows = rows.for_kind("decoder")
    rows.lengths(inputs_length=256, targets_length=128)        # {"decoder_input_tokens": 384, ...}
    features, truncated = rows.features(tokenizer, inputs, targets, config)

`Seq2Seq` (T5): the encoder reads the instruction + end-of-text, the decoder the output + end-of-text; a
conversation is one example per assistant turn (the conversation so far as the encoder input). `Decoder`: one row
of [begin-of-text,] instruction, output, end-of-text (`transforms.decoder_features`); a conversation is one row,
whole leading turns kept (`transforms.chat_decoder_features`), and its chat format must end a turn with one token.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from instruct_jax.data import chat as chat_lib
from instruct_jax.data import transforms

DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def row_bos(tokenizer) -> int | None:
  """The id a decoder-only row of plain text begins with: begin-of-text where the tokenizer adds it, else none."""
  return tokenizer.bos_id if tokenizer.adds_bos else None


class Seq2Seq:
  """Encoder-decoder rows: inputs_length encoder tokens, targets_length decoder tokens."""
  name = "encoder_decoder"
  chat_per_turn = True  # each assistant turn of a conversation is one example
  packs_pairs = False  # a preference pair is two rows (the prompt in each encoder, each response in a decoder)
  needs_end_of_turn = False  # a T5 reply ends with end-of-text

  def lengths(self, inputs_length: int, targets_length: int) -> dict[str, int]:
    return {"encoder_input_tokens": inputs_length, **{k: targets_length for k in DECODER_FEATURES}}

  def template_room(self, config) -> tuple[int, str]:
    """(tokens a template's own words may take, the setting that bounds them); LengthError-worthy settings raise."""
    if config.targets_length < 2:
      raise ValueError(f"config.data.targets_length={config.targets_length} leaves no room for an output token and "
                       "end-of-text; use at least 2")
    return config.inputs_length - 1, f"config.data.inputs_length={config.inputs_length}"

  def features(self, tokenizer, inputs: np.ndarray, targets: np.ndarray, config) -> tuple[dict | None, bool]:
    features = transforms.seq2seq_features(inputs, targets, eos_id=tokenizer.eos_id,
                                           max_input_len=config.inputs_length, max_target_len=config.targets_length)
    return features, inputs.size > config.inputs_length or targets.size + 1 > config.targets_length

  def chat(self, tokenizer, ex: dict[str, Any], config) -> tuple[dict | None, int, int, bool]:
    """(features, instruction tokens, output tokens, truncated) of a chat-rendered example."""
    inputs, targets = chat_lib.encode(tokenizer, ex["inputs"]), tokenizer.encode(ex["targets"])
    features, truncated = self.features(tokenizer, inputs, targets, config)
    return features, inputs.size, targets.size, truncated


class Decoder:
  """Decoder-only rows of inputs_length + targets_length tokens."""
  name = "decoder"
  chat_per_turn = False  # a conversation is one row
  packs_pairs = True  # with data.pack, preference pairs share rows (packing.pack_pairs_and_batch)
  needs_end_of_turn = True  # a decoder stops at its chat format's end-of-turn token

  def lengths(self, inputs_length: int, targets_length: int) -> dict[str, int]:
    return {k: inputs_length + targets_length for k in DECODER_FEATURES}

  def template_room(self, config) -> tuple[int, str]:
    total = config.inputs_length + config.targets_length
    return total - 2, f"config.data.inputs_length + config.data.targets_length = {total}"

  def features(self, tokenizer, inputs: np.ndarray, targets: np.ndarray, config) -> tuple[dict | None, bool]:
    max_len = config.inputs_length + config.targets_length
    features = transforms.decoder_features(inputs, targets, bos_id=row_bos(tokenizer), eos_id=tokenizer.eos_id,
                                           max_len=max_len, train_on_inputs=config.train_on_inputs)
    return features, inputs.size + targets.size + 1 > max_len

  def chat(self, tokenizer, ex: dict[str, Any], config) -> tuple[dict | None, int, int, bool]:
    ids, weights, turn_ends = chat_lib.scored_tokens(tokenizer, ex["chat"])
    # The tokenizer's own template writes the begin-of-text itself; other formats' rows get it as plain rows do.
    bos = None if ex["chat"].get("writes_bos") else row_bos(tokenizer)
    features = transforms.chat_decoder_features(ids, weights, turn_ends, bos_id=bos,
                                                max_len=config.inputs_length + config.targets_length,
                                                train_on_inputs=config.train_on_inputs)
    n_out = int(weights.sum())
    truncated = False
    if features is not None:  # the whole row would predict every token up to the last turn's end
      whole = turn_ends[-1] - (0 if bos is not None and ids[0] != bos else 1)
      truncated = features["decoder_target_tokens"].size < whole
    return features, ids.size - n_out, n_out, truncated


FORMATS = {f.name: f for f in (Seq2Seq(), Decoder())}
KINDS = tuple(FORMATS)


def for_kind(kind: str):
  """The row format of a model kind (ValueError naming the kinds)."""
  if kind not in FORMATS:
    raise ValueError(f"model kind must be one of {list(FORMATS)}, got {kind!r}")
  return FORMATS[kind]
