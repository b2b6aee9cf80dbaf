"""Preference pairs in the data pipeline: the pair task and mixture, rows of chosen then rejected responses that
score only the responses, and the chat-format rendering of a pair."""
import numpy as np
import pytest

from instruct_jax.data import chat, mixtures, pipeline, preferences
from instruct_jax.data import tasks as tasks_lib
from tests import test_preference


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_pair_rows_score_only_the_responses_and_share_the_prompt(kind, tmp_path, spm_tokenizer):
  paths = tasks_lib.DataPaths(preference_files={"rev": test_preference._pairs_file(tmp_path / "p.jsonl")})
  tasks, mixes = mixtures.catalogues(paths)
  assert mixes["preferences"].members == ("rev",)
  cfg = pipeline.PipelineConfig(mixture="preferences", model_kind=kind, inputs_length=48, targets_length=16,
                                batch_size=4, pairs=True, shuffle=False, pack=False)
  assert not cfg.packed_pairs
  batch = next(iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes,
                                           process_index=0, process_count=1).dataset))
  w, targets = batch["decoder_loss_weights"], batch["decoder_target_tokens"]
  assert w.shape[0] == 8 and (w.sum(-1) > 0).all()  # 4 pairs: 4 chosen rows, then their 4 rejected rows
  for i in range(4):
    chosen = spm_tokenizer.decode([int(t) for t, x in zip(targets[i], w[i]) if x > 0])
    rejected = spm_tokenizer.decode([int(t) for t, x in zip(targets[4 + i], w[4 + i]) if x > 0])
    assert chosen.split()[:3] == list(reversed(rejected.split()[:3]))  # the same words, the other order
    if kind == "decoder":  # the prompt (unscored) is the same in both rows
      prompt = lambda r: [int(t) for t, x in zip(targets[r], w[r]) if x == 0 and t > 0][:10]
      assert prompt(i) == prompt(4 + i)
    else:
      np.testing.assert_array_equal(batch["encoder_input_tokens"][i], batch["encoder_input_tokens"][4 + i])




def test_a_chat_format_renders_the_prompt_once_and_scores_only_the_response():
  fmt = chat.resolve_format("chatml")
  pair = preferences.parse_preference({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                                                       "content": "Hello"},
                                                  {"role": "user", "content": "Name a prime."}],
                                       "chosen": "7", "rejected": "8"}, "f.jsonl:1")
  fields = preferences.PreferenceFields(fmt)(pair)
  for key, response in (("chat", "7"), ("rejected_chat", "8")):
    rendered = fields[key]
    assert rendered["text"].startswith(fields["prompt"]) and len(rendered["spans"]) == 1  # the prompt's own
    a, b = rendered["spans"][0]                                                           # assistant turn: unscored
    assert rendered["text"][a:b].startswith(response)
  with pytest.raises(preferences.PreferenceError, match="f.jsonl:1: a prompt of several turns needs a chat format"):
    preferences.PreferenceFields(None)(pair)


def test_a_bad_line_is_an_error_naming_it_or_with_strict_off_is_skipped_and_counted(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
  with pytest.raises(preferences.PreferenceError, match=f"{path}:2: missing field 'rejected'"):
    preferences.PreferenceSource({"train": str(path)}).load("train")
  path.write_text(path.read_text() + "not json\n")
  lenient = preferences.PreferenceSource({"train": str(path)}, strict=False)
  assert [r["chosen"] for r in lenient.load("train")] == ["b"]
  assert lenient.stats.bad_records == 1 and lenient.stats.bad_lines == 1


def test_a_decoder_packs_whole_pairs_into_rows_a_segment_per_response(tmp_path, spm_tokenizer):
  paths = tasks_lib.DataPaths(preference_files={"rev": test_preference._pairs_file(tmp_path / "p.jsonl")})
  tasks, mixes = mixtures.catalogues(paths)
  cfg = pipeline.PipelineConfig(mixture="preferences", model_kind="decoder", inputs_length=48, targets_length=16,
                                batch_size=4, pairs=True, shuffle=False)
  assert cfg.packed_pairs  # data.pack (the default) packs a decoder's pairs
  batch = next(iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes,
                                           process_index=0, process_count=1).dataset))
  seg, w, targets = batch["decoder_segment_ids"], batch["decoder_loss_weights"], batch["decoder_target_tokens"]
  assert seg.shape == (4, 128) and seg.max() >= 4  # rows of twice the length, several pairs in a row
  pairs = 0
  for r in range(4):
    for s in range(1, seg[r].max() + 1, 2):
      text = lambda s, r=r: spm_tokenizer.decode([int(t) for t, x, g in zip(targets[r], w[r], seg[r])
                                                  if x > 0 and g == s])
      prompt = lambda s, r=r: [int(t) for t, x, g in zip(targets[r], w[r], seg[r]) if x == 0 and g == s][:10]
      assert text(s).split()[:3] == list(reversed(text(s + 1).split()[:3])) and prompt(s) == prompt(s + 1)
      pairs += 1
  assert pairs > 4 and (batch["task_index"][seg > 0] == 0).all()
