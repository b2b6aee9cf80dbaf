"""Per-example features and the truncation policy."""
import numpy as np
import pytest

from instruct_jax.data import transforms


def test_seq2seq_features_layout():
  f = transforms.seq2seq_features([5, 6, 7], [8, 9], eos_id=1, max_input_len=8, max_target_len=8)
  np.testing.assert_array_equal(f["encoder_input_tokens"], [5, 6, 7, 1])  # inputs end with EOS, as SeqIO's
  np.testing.assert_array_equal(f["decoder_input_tokens"], [0, 8, 9])
  np.testing.assert_array_equal(f["decoder_target_tokens"], [8, 9, 1])
  np.testing.assert_array_equal(f["decoder_loss_weights"], [1, 1, 1])


def test_decoder_features_layout():
  f = transforms.decoder_features([5, 6, 7], [8, 9], bos_id=2, eos_id=1, max_len=16)
  np.testing.assert_array_equal(f["decoder_input_tokens"], [2, 5, 6, 7, 8, 9])
  np.testing.assert_array_equal(f["decoder_target_tokens"], [5, 6, 7, 8, 9, 1])
  np.testing.assert_array_equal(f["decoder_loss_weights"], [0, 0, 0, 1, 1, 1])


def test_truncation_cuts_instruction_first_and_keeps_the_stop_token():
  f = transforms.decoder_features(list(range(10, 30)), [8, 9], bos_id=2, eos_id=1, max_len=6)
  assert len(f["decoder_target_tokens"]) == 6
  np.testing.assert_array_equal(f["decoder_target_tokens"][-3:], [8, 9, 1])
  np.testing.assert_array_equal(f["decoder_input_tokens"][:4], [2, 10, 11, 12])  # beginning kept


def test_cut_output_gets_no_stop_token():
  f = transforms.decoder_features([5], list(range(10, 30)), bos_id=2, eos_id=1, max_len=6)
  np.testing.assert_array_equal(f["decoder_target_tokens"], [5, 10, 11, 12, 13, 14])
  np.testing.assert_array_equal(f["decoder_loss_weights"], [0, 1, 1, 1, 1, 1])
  g = transforms.seq2seq_features([5], list(range(10, 30)), eos_id=1, max_input_len=4, max_target_len=5)
  np.testing.assert_array_equal(g["decoder_target_tokens"], [10, 11, 12, 13, 14])
  np.testing.assert_array_equal(g["encoder_input_tokens"], [5, 1])


def test_a_long_output_never_pushes_out_the_whole_instruction():
  f = transforms.decoder_features(list(range(100, 110)), list(range(200, 300)), bos_id=2, eos_id=1, max_len=64)
  assert len(f["decoder_target_tokens"]) == 64
  n_instruction = int((f["decoder_loss_weights"] == 0).sum())
  assert n_instruction == 10  # shorter than half the row: kept whole
  np.testing.assert_array_equal(f["decoder_input_tokens"][:11], [2, *range(100, 110)])
  g = transforms.decoder_features(list(range(100, 200)), list(range(200, 300)), bos_id=2, eos_id=1, max_len=64)
  assert int((g["decoder_loss_weights"] == 0).sum()) == 32  # half the row, the instruction's beginning


def test_vanishing_targets_return_none():
  assert transforms.decoder_features([5, 6], [], bos_id=2, eos_id=1, max_len=8) is None
  assert transforms.seq2seq_features([5, 6], [], eos_id=1, max_input_len=8, max_target_len=8) is None
  assert transforms.seq2seq_features([5, 6], [7], eos_id=1, max_input_len=8, max_target_len=0) is None
  assert transforms.seq2seq_features([], [7], eos_id=1, max_input_len=8, max_target_len=8) is None
  assert transforms.decoder_features([], [7], bos_id=2, eos_id=1, max_len=8) is None


def test_t5_end_of_text_must_differ_from_the_decoder_start_but_a_decoder_takes_any():
  with pytest.raises(ValueError, match="stop token"):
    transforms.seq2seq_features([5], [6], eos_id=0, max_input_len=8, max_target_len=8)
  # A decoder masks padding by loss weights, not by id: end-of-text may be the filler 0 (or the pad token).
  row = transforms.decoder_features([5], [6], bos_id=2, eos_id=0, max_len=8)
  assert row["decoder_target_tokens"].tolist() == [5, 6, 0] and row["decoder_loss_weights"].tolist() == [0, 1, 1]


def test_decoder_rows_without_begin_of_text_start_with_the_instruction():
  row = transforms.decoder_features([5, 7], [6], bos_id=None, eos_id=1, max_len=8)
  assert row["decoder_input_tokens"].tolist() == [5, 7, 6]
  assert row["decoder_target_tokens"].tolist() == [7, 6, 1]
  assert row["decoder_loss_weights"].tolist() == [0, 1, 1]
  # The budget is the same: max_len predicted tokens (no begin-of-text to spend a slot on).
  row = transforms.decoder_features(list(range(3, 9)), [9, 9], bos_id=None, eos_id=1, max_len=6)
  assert row["decoder_target_tokens"].size == 6 and row["decoder_target_tokens"][-1] == 1
