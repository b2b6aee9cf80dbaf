"""Pack (or pad) per-example features into fixed-shape batches in the T5X model-feature schema.

Input examples come from `instruct_jax.data.transforms` (variable-length int/float arrays), plus scalar int
meta features such as `task_index`, `template_id` and `shots`. Output batches hold, per row:

    encoder_input_tokens, encoder_segment_ids, encoder_positions         (encoder-decoder only)
    decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
    decoder_segment_ids, decoder_positions,
    <meta feature> per decoder token (0 on padding), so per-task metrics survive packing.

Segment ids count examples within a row from 1; 0 marks padding. Positions restart at 0 for each example,
so RoPE and relative position biases see each example as if it were alone. Packing uses grain's first-fit
packer, whose state is part of the iterator checkpoint.
"""
from __future__ import annotations

from collections.abc import Sequence

import grain
import grain.experimental as grain_exp
import numpy as np

from instruct_jax.data import rows

# Features whose segment ids and positions become the row's encoder_/decoder_ segment ids and positions.
_ANCHORS = {"encoder_input_tokens": "encoder", "decoder_target_tokens": "decoder"}


def feature_lengths(kind: str, inputs_length: int, targets_length: int) -> dict[str, int]:
  """Row lengths per feature of a model kind's rows (`rows.for_kind(kind).lengths`)."""
  return rows.for_kind(kind).lengths(inputs_length, targets_length)


def batch_spec(kind: str, inputs_length: int, targets_length: int, batch_size: int,
               meta_features: Sequence[str] = ()) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of every feature of the batches `pack_and_batch` yields; packed or not, the schema is one.

  Lets a config's train step be compiled before any data is read (instruct_jax/aot.py).
  """
  lengths = feature_lengths(kind, inputs_length, targets_length)
  spec = {k: ((batch_size, n), np.dtype(np.float32 if k == "decoder_loss_weights" else np.int32))
          for k, n in lengths.items()}
  for feature, prefix in _ANCHORS.items():
    if feature in lengths:
      for suffix in ("segment_ids", "positions"):
        spec[f"{prefix}_{suffix}"] = ((batch_size, lengths[feature]), np.dtype(np.int32))
  for m in meta_features:
    spec[m] = ((batch_size, lengths["decoder_target_tokens"]), np.dtype(np.int32))
  return spec


def check_one_example_rows(batch: dict[str, np.ndarray]) -> None:
  """Raises unless every row holds one example padded at its end (segment ids 1 on a prefix, then 0): what
  `pack=False` batches are, and what the train step's packed=False lets the cuDNN attention assume."""
  for prefix in _ANCHORS.values():
    segments = batch.get(f"{prefix}_segment_ids")
    if segments is None:
      continue
    segments = np.asarray(segments)
    if segments.max(initial=0) > 1 or segments.min(initial=0) < 0 or (np.diff(segments, axis=1) > 0).any():
      raise ValueError(f"{prefix}_segment_ids: a row is not one example padded at its end, but the train step "
                       "was built for such rows (data.pack=False)")


def _broadcast_meta(ex: dict, meta_features: Sequence[str]) -> dict:
  n = len(ex["decoder_target_tokens"])
  out = dict(ex)
  for m in meta_features:
    out[m] = np.full((n,), ex[m], np.int32)
  return out


def _rename_packed(row: dict, lengths: dict[str, int], meta_features: Sequence[str]) -> dict:
  out = {k: row[k] for k in (*lengths, *meta_features)}
  for feature, prefix in _ANCHORS.items():
    if feature in lengths:
      out[f"{prefix}_segment_ids"] = row[f"{feature}_segment_ids"].astype(np.int32)
      out[f"{prefix}_positions"] = row[f"{feature}_positions"].astype(np.int32)
  return out


def _pad_one(ex: dict, lengths: dict[str, int], meta_features: Sequence[str]) -> dict:
  out = {}
  for feature, length in {**lengths, **{m: lengths["decoder_target_tokens"] for m in meta_features}}.items():
    x = np.asarray(ex[feature])
    if x.shape[0] > length:
      raise ValueError(f"feature {feature!r} has length {x.shape[0]} > row length {length}; truncate first")
    out[feature] = np.pad(x, (0, length - x.shape[0]))
  for feature, prefix in _ANCHORS.items():
    if feature in lengths:
      n = len(ex[feature])
      out[f"{prefix}_segment_ids"] = (np.arange(lengths[feature]) < n).astype(np.int32)
      out[f"{prefix}_positions"] = np.where(np.arange(lengths[feature]) < n, np.arange(lengths[feature]), 0).astype(np.int32)
  return out


def pack_and_batch(ds: grain.IterDataset, *, lengths: dict[str, int], batch_size: int, pack: bool = True,
                   num_packing_bins: int | None = None, meta_features: tuple[str, ...] = (),
                   seed: int = 0, drop_remainder: bool = True) -> grain.IterDataset:
  """Packs (or pads) examples to `lengths` and batches `batch_size` rows.

  Args:
    ds: examples with the features named in `lengths` plus scalar `meta_features`.
    lengths: row length per feature, e.g. from `feature_lengths`.
    batch_size: rows per batch (per host).
    pack: first-fit packing of several examples per row; False pads one example per row.
    num_packing_bins: rows the packer keeps open; more bins, less padding (default: batch_size).
    meta_features: scalar int features carried per decoder token.
    seed: seed of the packer's bin shuffle.
    drop_remainder: drop a last partial batch (training); False keeps it (evaluation).
  """
  ds = ds.map(lambda ex: _broadcast_meta(ex, meta_features))
  if pack:
    length_struct = {**lengths, **{m: lengths["decoder_target_tokens"] for m in meta_features}}
    ds = grain_exp.FirstFitPackIterDataset(
        ds, length_struct=length_struct, num_packing_bins=num_packing_bins or batch_size, seed=seed,
        shuffle_bins=True)
    ds = ds.map(lambda row: _rename_packed(row, lengths, meta_features))
  else:
    ds = ds.map(lambda ex: _pad_one(ex, lengths, meta_features))
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def _pad_pair(pair: dict, lengths: dict[str, int], meta_features: Sequence[str]) -> dict:
  """A preference pair's two halves padded to `lengths` and stacked: {feature: [2, length]} (chosen, rejected)."""
  halves = [_pad_one(_broadcast_meta({**pair[side], **{m: pair[m] for m in meta_features}}, meta_features), lengths,
                     meta_features) for side in ("chosen", "rejected")]
  return {k: np.stack([halves[0][k], halves[1][k]]) for k in halves[0]}


def pad_pairs_and_batch(ds: grain.IterDataset, *, lengths: dict[str, int], batch_size: int,
                        meta_features: tuple[str, ...] = (), drop_remainder: bool = True) -> grain.IterDataset:
  """Preference pairs ({"chosen": features, "rejected": features} + scalar meta features) as batches of
  2 * batch_size rows, one example each: the chosen responses of the batch's pairs, then their rejected ones in
  the same order (row i and row batch_size + i are one pair; the layout TRL's concatenated forward uses)."""
  ds = ds.map(lambda pair: _pad_pair(pair, lengths, meta_features)).batch(batch_size, drop_remainder=drop_remainder)
  return ds.map(lambda b: {k: np.concatenate([v[:, 0], v[:, 1]]) for k, v in b.items()})


def pack_pairs_and_batch(ds: grain.IterDataset, *, lengths: dict[str, int], batch_size: int,
                         meta_features: tuple[str, ...] = (), num_packing_bins: int | None = None, seed: int = 0,
                         drop_remainder: bool = True) -> grain.IterDataset:
  """Decoder preference pairs packed: rows of twice `lengths` (so the longest pair fits), each holding whole pairs
  by grain's first-fit packer, `batch_size` rows per batch. A row's k-th pair is segments 2k - 1 (its chosen
  response, with the prompt) and 2k (its rejected one, with the prompt again); positions restart at 0 in every
  segment and attention stays within it, so neither response sees the other (`objectives.Preference` sums each
  response's log-probabilities by segment)."""
  row = {k: 2 * n for k, n in lengths.items()}
  carried = (*meta_features, "pair_half", "pair_positions")  # per-token features the packer carries along

  def join(pair: dict) -> dict:
    chosen, rejected = pair["chosen"], pair["rejected"]
    n_c, n_r = len(chosen["decoder_target_tokens"]), len(rejected["decoder_target_tokens"])
    out = {k: np.concatenate([np.asarray(chosen[k]), np.asarray(rejected[k])]) for k in lengths}
    out["pair_half"] = np.concatenate([np.zeros(n_c, np.int32), np.ones(n_r, np.int32)])
    out["pair_positions"] = np.concatenate([np.arange(n_c), np.arange(n_r)]).astype(np.int32)
    for m in meta_features:
      out[m] = np.full((n_c + n_r,), pair[m], np.int32)
    return out

  def split(packed: dict) -> dict:
    segments = packed["decoder_target_tokens_segment_ids"].astype(np.int32)
    out = {k: packed[k] for k in (*lengths, *meta_features)}
    out["decoder_segment_ids"] = np.where(segments > 0, 2 * segments - 1 + packed["pair_half"], 0).astype(np.int32)
    out["decoder_positions"] = np.where(segments > 0, packed["pair_positions"], 0).astype(np.int32)
    return out

  length_struct = {**row, **{m: row["decoder_target_tokens"] for m in carried}}
  ds = grain_exp.FirstFitPackIterDataset(ds.map(join), length_struct=length_struct,
                                         num_packing_bins=num_packing_bins or batch_size, seed=seed, shuffle_bins=True)
  return ds.map(split).batch(batch_size, drop_remainder=drop_remainder)
