"""Tests for instruct_jax.evals.rank with a deterministic toy scoring function."""
import numpy as np
import pytest

from instruct_jax.evals import rank


class ToyLoglik:
  """Per character: log-prob -1 if the character occurs in the prompt, else -3. Records its calls."""

  def __init__(self):
    self.calls = []

  def pair(self, prompt: str, continuation: str) -> float:
    return float(sum(-1.0 if ch in prompt else -3.0 for ch in continuation))

  def __call__(self, prompts, continuations):
    self.calls.append((list(prompts), list(continuations)))
    return np.array([self.pair(p, c) for p, c in zip(prompts, continuations)])


EXAMPLES = [
    rank.RankExample("the cat sat", ["dog", "cat", "zz"]),
    rank.RankExample("xyz", ("q", "xyz", "yx")),
    rank.RankExample("hello", ["hell", "z"]),
]


def test_one_batched_call_and_argmax_per_example():
  loglik = ToyLoglik()
  result = rank.rank_classify(loglik, EXAMPLES)
  assert len(loglik.calls) == 1
  prompts, continuations = loglik.calls[0]
  assert continuations == ["dog", "cat", "zz", "q", "xyz", "yx", "hell", "z"]
  assert prompts == ["the cat sat"] * 3 + ["xyz"] * 3 + ["hello"] * 2
  for example, index, choice, scores in zip(EXAMPLES, result.indices, result.choices, result.scores):
    expected = [loglik.pair(example.prompt, option) for option in example.options]
    assert scores.tolist() == expected
    assert index == expected.index(max(expected))
    assert choice == example.options[index]
  assert result.choices == ["cat", "yx", "z"]


def test_length_normalisation_changes_the_choice():
  # Unnormalised, "z" (-3) beats "hell" (-4); per character, "hell" (-1) beats "z" (-3).
  example = [EXAMPLES[2]]
  assert rank.rank_classify(ToyLoglik(), example).choices == ["z"]
  result = rank.rank_classify(ToyLoglik(), example, length_fn=len)
  assert result.choices == ["hell"]
  assert result.scores[0].tolist() == [-1.0, -3.0]


def test_ties_go_to_the_first_option():
  example = rank.RankExample("ab", ("ba", "ab", "aa"))
  result = rank.rank_classify(ToyLoglik(), [example])
  assert result.scores[0].tolist() == [-2.0, -2.0, -2.0]
  assert result.indices == [0]
  constant = lambda prompts, conts: np.zeros(len(prompts))
  assert rank.rank_classify(constant, [rank.RankExample("p", ("b", "a"))]).choices == ["b"]


def test_no_examples_makes_no_call():
  loglik = ToyLoglik()
  assert rank.rank_classify(loglik, []).choices == []
  assert not loglik.calls


@pytest.mark.parametrize("fn, examples, kwargs, message", [
    (ToyLoglik(), [rank.RankExample("p", ())], {}, "example 0 has no options"),
    (lambda p, c: np.zeros(len(p) + 1), EXAMPLES, {}, r"shape \(9,\) for 8"),
    (lambda p, c: np.zeros((len(p), 1)), EXAMPLES, {}, r"shape \(8, 1\)"),
    (lambda p, c: np.full(len(p), np.nan), EXAMPLES, {}, "NaN"),
    (ToyLoglik(), [rank.RankExample("p", ("", "a"))], {"length_fn": len}, "non-positive length for option ''"),
])
def test_errors(fn, examples, kwargs, message):
  with pytest.raises(ValueError, match=message):
    rank.rank_classify(fn, examples, **kwargs)
