"""ROUGE-L novelty filter: is a new instruction too similar to any instruction already in the pool?

Self-Instruct scores a candidate against every pool instruction with ROUGE-L F (rouge_score, no
stemming) and rejects it when the best score is above 0.7. This module gives the same decisions
much faster:

1. Texts are tokenized once with rouge_score's own tokenizer and mapped to integer ids.
2. ROUGE-L F of token sequences of lengths m and n with LCS length L is 2L / (m + n). The LCS is at
   most the size U of the multiset intersection of the two bags of tokens, which an inverted index
   gives for the whole pool at once (one `np.bincount`). Pairs with 2U / (m + n) at or below the
   threshold cannot be rejected and are skipped; typically almost all pairs stop here.
3. The remaining pairs get their exact LCS length from a bit-parallel LCS (Allison-Dix / Hyyro)
   run on a batch of pool entries at once with numpy uint64 words, most promising first, stopping
   at the first pair over the threshold.

Threshold rule. A candidate is rejected when F > threshold for some pool entry, so a score of
exactly 0.7 is KEPT (the released Self-Instruct code's `> 0.7`; the paper's wording "< 0.7" would
drop it). By default F is compared exactly, in integers: reject iff 2 * L * den > num * (m + n),
where threshold = num / den. rouge_score computes F in float64 as 2PR / (P + R), and for about half
of the pairs whose exact F is 7/10 that float comes out as 0.7000000000000001, so `f > 0.7` on
rouge_score's float rejects some exact ties by rounding accident. `float_compat=True` reproduces
that float arithmetic bit for bit instead (decisions identical to the released code's, ties and
all). `naive_is_novel` is the plain pairwise reference for either rule, used by tests and the
benchmark.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
from rouge_score import tokenize as rouge_tokenize

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def rouge_tokens(text: str) -> list[str]:
  """rouge_score's default tokenization without stemming (lowercase [a-z0-9]+ runs)."""
  return rouge_tokenize.tokenize(text, None)


class _Growable:
  """An append-only numpy array with amortised O(1) appends."""

  def __init__(self, dtype, capacity: int = 8):
    self.data = np.empty(capacity, dtype)
    self.size = 0

  def extend(self, values: np.ndarray) -> None:
    need = self.size + len(values)
    if need > len(self.data):
      grown = np.empty(max(need, 2 * len(self.data)), self.data.dtype)
      grown[:self.size] = self.data[:self.size]
      self.data = grown
    self.data[self.size:need] = values
    self.size = need

  def append(self, value) -> None:
    if self.size == len(self.data):
      grown = np.empty(2 * len(self.data), self.data.dtype)
      grown[:self.size] = self.data
      self.data = grown
    self.data[self.size] = value
    self.size += 1

  def view(self) -> np.ndarray:
    return self.data[:self.size]


@dataclasses.dataclass(frozen=True)
class Verdict:
  """novel: keep the candidate; match: index of a pool entry over the threshold; score: its F."""
  novel: bool
  match: int | None = None
  score: float | None = None


def _add_words(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(K, W) little-endian multiword unsigned addition, carry out of the top word dropped."""
  if a.shape[1] == 1:
    return a + b
  out = np.empty_like(a)
  carry = np.zeros(a.shape[0], bool)
  for w in range(a.shape[1]):
    s = a[:, w] + b[:, w] + carry.astype(np.uint64)
    carry = (s < a[:, w]) | (carry & (s == a[:, w]))
    out[:, w] = s
  return out


def lcs_lengths(query: np.ndarray, others: np.ndarray, pad: int) -> np.ndarray:
  """LCS length of `query` (int ids, shape (m,)) with each row of `others` (K, n), rows padded with
  `pad` (an id that must not occur in `query`). Bit-parallel over the query, vectorised over rows."""
  m = len(query)
  k = others.shape[0]
  if m == 0 or k == 0:
    return np.zeros(k, np.int64)
  words = (m + 63) // 64
  vocab = max(int(others.max()), int(query.max()), pad) + 1
  table = np.zeros((vocab, words), np.uint64)
  pos = np.arange(m)
  np.bitwise_or.at(table, (query, pos // 64), np.left_shift(np.uint64(1), (pos % 64).astype(np.uint64)))
  table[pad] = 0
  top = np.full(words, _ALL_ONES)
  if m % 64:
    top[-1] = np.uint64((1 << (m % 64)) - 1)
  v = np.broadcast_to(top, (k, words)).copy()
  matches = table[others]  # (K, n, W)
  for j in range(others.shape[1]):
    u = v & matches[:, j, :]
    v = (_add_words(v, u) | (v & ~u)) & top
  return m - np.bitwise_count(v).sum(axis=1, dtype=np.int64)


class NoveltyIndex:
  """A growing pool of instructions answering "is this new text novel?" exactly and fast."""

  def __init__(self, threshold: float = 0.7, *, float_compat: bool = False, batch: int = 256):
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"ROUGE-L threshold must be in [0, 1], got {threshold}")
    self.threshold = threshold
    frac = Fraction(str(threshold))
    self._num, self._den = frac.numerator, frac.denominator
    self.float_compat = float_compat
    self.batch = batch
    self.texts: list[str] = []
    self._vocab: dict[str, int] = {}
    self._flat = _Growable(np.int32, 1024)
    self._offsets = _Growable(np.int64, 256)
    self._lengths = _Growable(np.int64, 256)
    self._postings: dict[int, tuple[_Growable, _Growable]] = {}
    self.lcs_pairs = 0     # pairs whose LCS was computed
    self.pairs_seen = 0    # pairs a naive filter would have scored

  def __len__(self) -> int:
    return len(self.texts)

  def _ids(self, tokens: Sequence[str], grow: bool) -> np.ndarray:
    if grow:
      return np.array([self._vocab.setdefault(t, len(self._vocab)) for t in tokens], np.int32)
    return np.array([self._vocab.get(t, -1) for t in tokens], np.int32)

  def add(self, text: str) -> int:
    """Adds `text` to the pool without checking it; returns its index."""
    ids = self._ids(rouge_tokens(text), grow=True)
    index = len(self.texts)
    self.texts.append(text)
    self._offsets.append(self._flat.size)
    self._lengths.append(len(ids))
    self._flat.extend(ids)
    uniq, counts = np.unique(ids, return_counts=True)
    for t, c in zip(uniq.tolist(), counts.tolist()):
      post = self._postings.get(t)
      if post is None:
        post = self._postings[t] = (_Growable(np.int32), _Growable(np.int32))
      post[0].append(index)
      post[1].append(c)
    return index

  def extend(self, texts: Iterable[str]) -> None:
    """Adds many texts without checking them (same result as `add` one by one, faster)."""
    texts = list(texts)
    if not texts:
      return
    ids = [self._ids(rouge_tokens(t), grow=True) for t in texts]
    first = len(self.texts)
    lengths = np.array([len(x) for x in ids], np.int64)
    self.texts.extend(texts)
    self._offsets.extend(self._flat.size + np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    self._lengths.extend(lengths)
    flat = np.concatenate(ids) if lengths.sum() else np.zeros(0, np.int32)
    self._flat.extend(flat)
    if not flat.size:
      return
    docs = np.repeat(np.arange(first, first + len(texts), dtype=np.int64), lengths)
    key = flat.astype(np.int64) * (first + len(texts)) + docs   # sorted by token, then doc
    uniq, counts = np.unique(key, return_counts=True)
    tokens, doc_ids = np.divmod(uniq, first + len(texts))
    bounds = np.flatnonzero(np.diff(tokens)) + 1
    for tok_docs, tok_counts, tok in zip(np.split(doc_ids, bounds), np.split(counts, bounds),
                                         tokens[np.concatenate([[0], bounds])].tolist()):
      post = self._postings.get(tok)
      if post is None:
        post = self._postings[tok] = (_Growable(np.int32), _Growable(np.int32))
      post[0].extend(tok_docs)
      post[1].extend(tok_counts)

  def _over(self, lcs: np.ndarray, m: int, n: np.ndarray) -> np.ndarray:
    """Which pairs are over the threshold, under the configured comparison rule."""
    if not self.float_compat:
      return 2 * self._den * lcs > self._num * (m + n)
    return self._float_f(lcs, m, n) > self.threshold

  @staticmethod
  def _float_f(lcs: np.ndarray, m: int, n: np.ndarray) -> np.ndarray:
    """rouge_score's float64 F: P = L / n (pool side is the prediction), R = L / m."""
    lcs = lcs.astype(np.float64)
    p = lcs / n
    r = lcs / m
    with np.errstate(invalid="ignore", divide="ignore"):
      f = 2 * p * r / (p + r)
    return np.where(lcs > 0, f, 0.0)

  def check(self, text: str) -> Verdict:
    """Whether `text` is novel with respect to every pool entry (the pool is not changed)."""
    tokens = rouge_tokens(text)
    size = len(self.texts)
    self.pairs_seen += size
    m = len(tokens)
    if m == 0 or size == 0:
      return Verdict(True)
    ids = self._ids(tokens, grow=False)
    uniq, counts = np.unique(ids[ids >= 0], return_counts=True)
    idx_parts, weight_parts = [], []
    for t, c in zip(uniq.tolist(), counts.tolist()):
      post_ids, post_counts = self._postings[t]
      idx_parts.append(post_ids.view())
      weight_parts.append(np.minimum(post_counts.view(), c))
    if not idx_parts:
      return Verdict(True)
    bound = np.bincount(np.concatenate(idx_parts), weights=np.concatenate(weight_parts),
                        minlength=size).astype(np.int64)
    lengths = self._lengths.view()
    if self.float_compat:  # exact ties may round either way in float64, so they need the LCS
      maybe = 2 * self._den * bound >= self._num * (m + lengths)
    else:
      maybe = 2 * self._den * bound > self._num * (m + lengths)
    cand = np.flatnonzero(maybe)
    if cand.size == 0:
      return Verdict(True)
    cand = cand[np.argsort(-bound[cand] / (m + lengths[cand]), kind="stable")]
    query = np.where(ids >= 0, ids, len(self._vocab) + 1).astype(np.int64)
    pad = len(self._vocab)
    flat, offsets = self._flat.view(), self._offsets.view()
    for start in range(0, cand.size, self.batch):
      chunk = cand[start:start + self.batch]
      n = lengths[chunk]
      width = int(n.max())
      cols = np.arange(width)
      pos = offsets[chunk][:, None] + cols[None, :]
      valid = cols[None, :] < n[:, None]
      others = np.where(valid, flat[np.minimum(pos, len(flat) - 1)], pad).astype(np.int64)
      lcs = lcs_lengths(query, others, pad)
      self.lcs_pairs += len(chunk)
      over = self._over(lcs, m, n)
      if over.any():
        i = int(np.argmax(over))
        score = float(self._float_f(lcs[i:i + 1], m, n[i:i + 1])[0])
        return Verdict(False, int(chunk[i]), score)
    return Verdict(True)

  def add_if_novel(self, text: str) -> Verdict:
    """Checks `text` and, when novel, adds it to the pool at once."""
    verdict = self.check(text)
    if verdict.novel:
      self.add(text)
    return verdict


def naive_is_novel(candidate: str, pool: Sequence[str], threshold: float = 0.7, *,
                   float_compat: bool = False, scorer=None) -> bool:
  """Reference: rouge_score ROUGE-L F of the candidate against every pool entry, one by one.

  With float_compat the decision is rouge_score's float `f > threshold`; otherwise a float within
  1e-9 of the threshold counts as equal to it (distinct rational scores with fewer than 10^6 tokens
  differ by far more), which is the exact rule.
  """
  if scorer is None:
    from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  for other in pool:
    f = scorer.score(candidate, other)["rougeL"].fmeasure
    if (f > threshold) if float_compat else (f > threshold + 1e-9):
      return False
  return True
