"""Turn one tokenized (instruction, output) pair into model features with loss weights.

The loss mask lives here, in the data, as `decoder_loss_weights`; the loss itself stays a pure function
(`instruct_jax.losses`). Feature names follow the T5X/SeqIO model-feature schema.

Encoder-decoder, for inputs [i1 i2 i3] and targets [o1 o2] with end-of-text E (the encoder input ends
with E too, as T5 and Flan-T5 were trained by SeqIO):

    encoder_input_tokens   i1 i2 i3 E
    decoder_input_tokens   0  o1 o2      (targets shifted right; 0 is T5's decoder start id)
    decoder_target_tokens  o1 o2 E
    decoder_loss_weights   1  1  1       (the output and its end-of-text token are scored)

Decoder-only, with begin-of-text B; the model sees B i1 i2 i3 o1 o2 and predicts one token ahead:

    decoder_input_tokens   B  i1 i2 i3 o1 o2
    decoder_target_tokens  i1 i2 i3 o1 o2 E
    decoder_loss_weights   0  0  0  1  1  1   (1 everywhere with train_on_inputs=True)

Truncation keeps the beginning of each part and never silently removes all target tokens. Encoder-decoder
inputs and targets are cut to their own lengths. A decoder-only row is shared: the instruction keeps at
least half of the row (or all of itself, if shorter), the output takes the rest, and what overflows is cut
from the instruction first. A cut output gets no end-of-text token (it did not end there, so the model
must not learn to stop there). If no output token survives, or there is no instruction, the functions
return None and the caller drops and counts the example. Prediction (`instruct_jax.predict`) cuts
prompts the same way.
"""
from __future__ import annotations

import numpy as np

DECODER_START_ID = 0


def _as_ids(x) -> np.ndarray:
  return np.asarray(x, dtype=np.int32).reshape(-1)


def _with_eos(targets: np.ndarray, room: int, eos_id: int) -> np.ndarray:
  """targets + [eos] if that fits in `room`, else targets cut to `room` with no end-of-text."""
  if targets.size + 1 <= room:
    return np.concatenate([targets, [eos_id]]).astype(np.int32)
  return targets[:room]


def encoder_inputs(inputs, *, eos_id: int, max_input_len: int) -> np.ndarray:
  """The encoder's tokens: the inputs' beginning, then end-of-text (also used to build prompts)."""
  inputs = _as_ids(inputs)
  return np.concatenate([inputs[:max_input_len - 1], [eos_id]]).astype(np.int32)


def seq2seq_features(inputs, targets, *, eos_id: int, max_input_len: int,
                     max_target_len: int) -> dict[str, np.ndarray] | None:
  """Features for an encoder-decoder model; None if the output would be truncated away."""
  inputs, targets = _as_ids(inputs), _as_ids(targets)
  if eos_id == DECODER_START_ID:
    raise ValueError("eos_id must differ from the decoder start/pad id 0, or the stop token is never learned")
  if targets.size == 0 or inputs.size == 0 or max_target_len < 1 or max_input_len < 2:
    return None
  targets = _with_eos(targets, max_target_len, eos_id)
  return {
      "encoder_input_tokens": encoder_inputs(inputs, eos_id=eos_id, max_input_len=max_input_len),
      "decoder_input_tokens": np.concatenate([[DECODER_START_ID], targets[:-1]]).astype(np.int32),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones(targets.size, np.float32),
  }


def instruction_budget(max_len: int) -> int:
  """Tokens of a decoder-only row the instruction may always keep, however long the output."""
  return max_len // 2


def decoder_features(inputs, targets, *, bos_id: int | None, eos_id: int, max_len: int,
                     train_on_inputs: bool = False) -> dict[str, np.ndarray] | None:
  """Features for a decoder-only model; None if the output would be truncated away.

  The row is [bos] + instruction + output + [eos], or without `bos_id` (a tokenizer that adds none: Qwen)
  instruction + output + [eos], whose first token is then read but never predicted.
  """
  inputs, targets = _as_ids(inputs), _as_ids(targets)
  if targets.size == 0 or inputs.size == 0 or max_len < 2:
    return None
  lead = [] if bos_id is None else [bos_id]
  # The model predicts len(lead + inputs) - 1 + len(targets) + 1 positions (the +1 is end-of-text).
  room = max_len + 1 - len(lead)
  n_inputs = min(inputs.size, max(room - targets.size - 1, instruction_budget(max_len)))
  targets = _with_eos(targets, room - n_inputs, eos_id)
  seq = np.concatenate([lead, inputs[:n_inputs], targets]).astype(np.int32)
  weights = np.ones(seq.size - 1, np.float32)
  if not train_on_inputs:
    weights[:len(lead) + n_inputs - 1] = 0.0  # targets before the output are instruction tokens
  return {
      "decoder_input_tokens": seq[:-1],
      "decoder_target_tokens": seq[1:],
      "decoder_loss_weights": weights,
  }


def chat_decoder_features(ids, weights, turn_ends, *, bos_id: int | None, max_len: int,
                          train_on_inputs: bool = False) -> dict[str, np.ndarray] | None:
  """Features for a decoder-only model from a rendered conversation (`chat.scored_tokens`): its ids, a weight per
  id (1 on assistant turns and their end-of-turn tokens) and, per assistant turn, the index one past its last
  scored id. The row starts with begin-of-text (unless the rendering does) and ends at the end of the last
  assistant turn that fits whole: leading turns are kept, a turn is never cut, and what follows the last turn
  (trailing newlines, unanswered messages) is left out. None if not even the first turn fits, or nothing is
  scored; the caller drops and counts the example. `bos_id` None: the row is the rendering as it is (the
  template writes a begin-of-text where the model has one).

      ids      B  u1 u2 a1 a2 E  u3 a3 E        (B begin-of-text, E the turn's end marker)
      weights  0  0  0  1  1  1  0  1  1
      decoder_input_tokens   B  u1 u2 a1 a2 E  u3 a3
      decoder_target_tokens  u1 u2 a1 a2 E  u3 a3 E
      decoder_loss_weights   0  0  1  1  1  0  1  1
  """
  ids, weights = _as_ids(ids), np.asarray(weights, np.float32).reshape(-1)
  if ids.size == 0 or not turn_ends or max_len < 1:
    return None
  ends = np.asarray(turn_ends, np.int64)
  if bos_id is not None and ids[0] != bos_id:
    ids, weights, ends = np.concatenate([[bos_id], ids]).astype(np.int32), np.concatenate([[0.0], weights]), ends + 1
  fitting = ends[ends - 1 <= max_len]  # a row of ids[:e] predicts e - 1 tokens
  if fitting.size == 0:
    return None
  e = int(fitting.max())
  row_weights = np.ones(e - 1, np.float32) if train_on_inputs else weights[1:e].astype(np.float32)
  if not weights[1:e].any():
    return None
  return {
      "decoder_input_tokens": ids[:e - 1],
      "decoder_target_tokens": ids[1:e],
      "decoder_loss_weights": row_weights,
  }
