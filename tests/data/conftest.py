"""Fixtures for the data tests: a tiny sentencepiece vocabulary trained here from generated text."""
import pytest

from instruct_jax.data import mixtures
from instruct_jax.data import render
from instruct_jax.data import tokenizer as tokenizer_lib

# A little ordinary English, so SuperNI and instruction-file text does not tokenize to <unk> throughout.
_ENGLISH = [
    "Definition: In this task you are given a premise and two alternatives. Choose the more plausible one.",
    "Positive Example 1 - Input: The man broke his toe. What was the cause? Output: He dropped a hammer.",
    "Now complete the following example - Input: Output: Explanation: because the sentence says so.",
    "Write a short story about a cat who learns to sing. Give three reasons why exercise is healthy.",
    "Translate the following sentence into French. Summarize the paragraph in one line.",
    "The quick brown fox jumps over the lazy dog; question, answer, passage, context, title, claim.",
]


@pytest.fixture(scope="session")
def catalogues():
  return mixtures.catalogues()


@pytest.fixture(scope="session")
def spm_tokenizer(tmp_path_factory, catalogues):
  tasks, mixes = catalogues
  cfg = render.RenderConfig(few_shot_rate=0.2, options_rate=0.5, inversion_rate=0.2, cot_rate=0.2)
  texts = render.sample_texts(mixtures.task_rates("builtin", tasks, mixes), tasks, cfg, n=3000, seed=0)
  return tokenizer_lib.train(texts + _ENGLISH * 20, vocab_size=500, out_dir=tmp_path_factory.mktemp("spm"))
