"""Rank classification: pick the answer option a model finds most likely, without generating.

Model-agnostic: the caller supplies `loglik_fn(prompts, continuations)`, which returns for each pair
the summed log-probability of the continuation's tokens given the prompt (shape [n_pairs]). Every
(prompt, option) pair of every example goes to ONE call, in example order then option order, so the
caller can batch them however its model likes. Whether an option needs a leading space or a
separator is the caller's business: options are passed through unchanged.

The choice is the argmax of the option scores; ties go to the earliest option. With `length_fn`,
each score is divided by `length_fn(option)` first (e.g. the option's token count, or
`lambda s: len(s.encode("utf-8"))` for a byte-length normalisation).

Example:
  examples = [RankExample("Is the sky blue?", ("yes", "no"))]
  choices = rank_classify(my_loglik_fn, examples).choices   # e.g. ["yes"]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

LoglikFn = Callable[[list[str], list[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RankExample:
  """A prompt and the options to rank as its continuation."""
  prompt: str
  options: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "options", tuple(self.options))


@dataclasses.dataclass(frozen=True)
class RankResult:
  """Per example: the chosen option's index and text, and the (normalised) score of each option."""
  indices: list[int]
  choices: list[str]
  scores: list[np.ndarray]


def rank_classify(
    loglik_fn: LoglikFn, examples: Sequence[RankExample], *, length_fn: Callable[[str], int] | None = None
) -> RankResult:
  """Chooses the highest-scoring option of each example with one call to `loglik_fn`.

  Args:
    loglik_fn: (prompts, continuations) -> summed log-probabilities, one per pair.
    examples: prompts with at least one option each.
    length_fn: if given, scores are divided by `length_fn(option)` (which must be positive).

  Returns:
    The chosen option per example (argmax; ties broken by the first option) and all option scores.

  Raises:
    ValueError: an example without options, a non-positive length, or `loglik_fn` returning the wrong
      number of scores or a NaN.
  """
  prompts, continuations = [], []
  for i, example in enumerate(examples):
    if not example.options:
      raise ValueError(f"example {i} has no options")
    prompts += [example.prompt] * len(example.options)
    continuations += list(example.options)
  if not prompts:
    return RankResult(indices=[], choices=[], scores=[])

  flat = np.asarray(loglik_fn(prompts, continuations), dtype=np.float64)
  if flat.shape != (len(prompts),):
    raise ValueError(f"loglik_fn returned shape {flat.shape} for {len(prompts)} (prompt, option) pairs")
  if np.isnan(flat).any():
    raise ValueError(f"loglik_fn returned NaN for pair(s) {np.flatnonzero(np.isnan(flat))[:5].tolist()}")
  if length_fn is not None:
    lengths = np.array([length_fn(option) for option in continuations], dtype=np.float64)
    if (lengths <= 0).any():
      bad = continuations[int(np.flatnonzero(lengths <= 0)[0])]
      raise ValueError(f"length_fn gave a non-positive length for option {bad!r}")
    flat = flat / lengths

  indices, choices, scores, start = [], [], [], 0
  for example in examples:
    option_scores = flat[start:start + len(example.options)]
    start += len(example.options)
    best = int(np.argmax(option_scores))  # np.argmax returns the first of equal maxima.
    indices.append(best)
    choices.append(example.options[best])
    scores.append(option_scores)
  return RankResult(indices=indices, choices=choices, scores=scores)
