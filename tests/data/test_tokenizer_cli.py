"""The sentencepiece wrapper (trained here, never downloaded) and the two data CLIs."""
import pickle
import subprocess
import sys

import pytest
import sentencepiece as spm

from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import preview
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib


def test_trained_ids(spm_tokenizer):
  tok = spm_tokenizer
  assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
  assert tok.piece(0) == "<pad>" and tok.piece(1) == "</s>" and tok.piece(3) == "<s>"
  ids = tok.encode("Sort these numbers: 3 1 12")
  assert tok.decode(ids) == "Sort these numbers: 3 1 12"
  assert [tok.piece(i) for i in ids[-2:]] == ["1", "2"]  # digits are split
  assert tok.decode([*ids, tok.eos_id, 57, 58]) == tok.decode(ids)  # stops at end-of-text
  assert tok.decode([tok.pad_id, *ids, tok.pad_id]) == tok.decode(ids)
  assert tok.encode("\u4e2d")[-1] == tok.unk_id
  clone = pickle.loads(pickle.dumps(tok))  # grain worker processes receive the tokenizer pickled
  assert list(clone.encode("Reverse 1 2")) == list(tok.encode("Reverse 1 2"))


def test_loads_a_llama_style_model_without_pad(tmp_path):
  # LLaMA's ids: unk 0, begin 1, end 2, no pad. Padding then uses 0, which differs from end-of-text.
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g the cat sat on a mat"] * 50),
                                 model_prefix=str(tmp_path / "llama"), vocab_size=30, unk_id=0, bos_id=1,
                                 eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
  tok = tokenizer_lib.load(tmp_path / "llama.model")
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)


def test_a_t5_style_model_trains_decoder_rows_that_start_with_the_text(tmp_path, catalogues):
  # T5's spiece.model ids: pad 0, end 1, unk 2, no begin-of-text: a decoder's rows start with the instruction, as
  # Qwen's do (the tokenizer adds no begin-of-text).
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g the cat sat on a mat"] * 50),
                                 model_prefix=str(tmp_path / "t5"), vocab_size=30, pad_id=0, eos_id=1, unk_id=2,
                                 bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  tok = tokenizer_lib.load(tmp_path / "t5.model")
  assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id, tok.adds_bos) == (0, 1, 2, -1, False)
  cfg = pipeline.PipelineConfig(mixture="builtin_check", model_kind="decoder", pack=False, batch_size=2)
  pipe = pipeline.make_pipeline(cfg, tok, tasks=catalogues[0], mixtures=catalogues[1])
  batch = next(iter(pipe.dataset))
  # Each row's first token is the instruction's first (not padding, not end-of-text), and it carries no loss.
  assert all(row[0] not in (tok.pad_id, tok.eos_id) for row in batch["decoder_input_tokens"])
  assert (batch["decoder_loss_weights"][:, 0] == 0).all()


def test_accepts_pad_equal_to_eos_and_refuses_a_missing_file(tmp_path):
  # SmolLM2 and many Llama-3 / Mistral fine-tunes set pad = eos; padding is masked by weights, never by its id.
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c the cat sat"] * 50), model_prefix=str(tmp_path / "m"),
                                 vocab_size=20, unk_id=1, bos_id=-1, eos_id=0, pad_id=-1, hard_vocab_limit=False,
                                 minloglevel=2)
  assert tokenizer_lib.load(tmp_path / "m.model").eos_id == 0
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tokenizer_lib.load(tmp_path / "nope.model")


def test_tokenizer_command_trains_on_a_mixture(tmp_path):
  out = subprocess.run([sys.executable, "-m", "instruct_jax.data.vocab", "--mixture", "builtin_check",
                        "--vocab_size", "300", "--num_examples", "2000", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=True)
  assert "spm.model" in out.stdout
  tok = tokenizer_lib.load(tmp_path / "spm.model")
  assert 100 < tok.vocab_size <= 300 and tok.eos_id == 1
  assert tok.unk_id not in tok.encode("Is 4 in the list 1 2 4?\nOPTIONS:\n- yes\n- no")


def test_tokenizer_command_suggests_names(tmp_path):
  out = subprocess.run([sys.executable, "-m", "instruct_jax.data.vocab", "--mixture", "builtin_chek",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "did you mean 'builtin_check'" in out.stderr


def test_preview_text(spm_tokenizer, catalogues):
  cfg = pipeline.PipelineConfig(mixture="builtin_count", inputs_length=24, targets_length=8,
                                render=pipeline.render_lib.RenderConfig(few_shot_rate=0.5, cot_rate=0.5))
  text = preview.preview(cfg, spm_tokenizer, *catalogues, num_examples=3, stats_examples=300)
  assert text.count("  template ") == 3 and "tokens in " in text
  lines = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("builtin/")}
  assert set(lines) == {"builtin/count_items", "builtin/count_occurrences", "builtin/count_even"}
  shares = [float(v[2]) for v in lines.values()]
  assert sum(shares) == pytest.approx(1.0, abs=0.01) and all(abs(s - 1 / 3) < 0.02 for s in shares)
  assert sum(float(v[6]) for v in lines.values()) > 0  # a 24-token budget truncates few-shot prompts


def test_preview_reports_skipped_records(spm_tokenizer, tmp_path):
  path = tmp_path / "mine.jsonl"
  path.write_text('{"instruction": "Say hi.", "output": "hi"}\n{"instruction": "Nothing.", "output": ""}\n'
                  '{"instruction": "Say yo.", "output": "yo"}\n')
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths(instruction_files={"mine": str(path)}))
  text = preview.preview(pipeline.PipelineConfig(mixture="instructions"), spm_tokenizer, tasks, mixes,
                         num_examples=1, stats_examples=10)
  assert "mine: skipped 0 malformed lines and 1 empty outputs; first: " in text and "mine.jsonl:2" in text


def test_preview_command(tmp_path):
  out = subprocess.run([sys.executable, "-m", "instruct_jax.data.preview", "--mixture", "builtin_transform",
                        "-n", "2", "--stats_examples", "200"], capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.count("  template ") == 2 and "builtin/uppercase" in out.stdout and "trunc%" in out.stdout
