"""The fast ROUGE-L novelty filter against plain pairwise rouge_score."""
import json
import random

import numpy as np
import pytest
from rouge_score import rouge_scorer

from instruct_jax.synthetic import rouge_novelty

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _lcs_reference(a, b):
  return rouge_scorer._lcs_table(list(a), list(b))[-1][-1]  # pylint: disable=protected-access


def test_lcs_lengths_match_rouge_score_table():
  rng = random.Random(0)
  for _ in range(60):
    m = rng.choice([1, 5, 63, 64, 65, 127, 128, 129, 200])   # word-boundary sizes
    query = np.array([rng.randrange(6) for _ in range(m)])
    others = [[rng.randrange(6) for _ in range(rng.randint(1, 150))] for _ in range(8)]
    width = max(map(len, others))
    pad = 99
    matrix = np.array([o + [pad] * (width - len(o)) for o in others])
    got = rouge_novelty.lcs_lengths(query, matrix, pad)
    assert got.tolist() == [_lcs_reference(query.tolist(), o) for o in others]


def test_tokenizer_is_rouge_scores():
  text = "Héllo, WORLD!! it's 3.14 e-mail"
  assert rouge_novelty.rouge_tokens(text) == SCORER._tokenizer.tokenize(text)  # pylint: disable=protected-access


def _texts(rng, n, vocab, max_len):
  return [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


@pytest.mark.parametrize("float_compat", [False, True])
def test_decisions_identical_to_naive_on_random_pools(float_compat):
  rng = random.Random(1 if float_compat else 2)
  vocab = "a b c d e f g h".split()  # a tiny vocabulary makes ties and near-ties common
  index = rouge_novelty.NoveltyIndex(0.7, float_compat=float_compat)
  pool = []
  decisions = []
  for text in _texts(rng, 300, vocab, 16):
    naive = rouge_novelty.naive_is_novel(text, pool, 0.7, float_compat=float_compat, scorer=SCORER)
    fast = index.add_if_novel(text).novel
    decisions.append(naive)
    assert fast == naive, text
    if naive:
      pool.append(text)
  assert 0 < sum(decisions) < len(decisions)
  assert index.lcs_pairs < index.pairs_seen  # the bound skipped pairs


def test_exact_point_seven_is_kept_by_default():
  # LCS 7 of lengths 10 and 10: F = 14 / 20 = 0.7 exactly.
  pool = ["a b c d e f g h i j"]
  tie = "a b c d e f g x y z"
  assert SCORER.score(tie, pool[0])["rougeL"].fmeasure == pytest.approx(0.7)
  index = rouge_novelty.NoveltyIndex(0.7)
  index.extend(pool)
  assert index.check(tie).novel
  # One more shared token (F = 0.8) is rejected and reports the match.
  verdict = index.check("a b c d e f g h y z")
  assert not verdict.novel and verdict.match == 0 and verdict.score == pytest.approx(0.8)


def test_float_compat_follows_rouge_scores_rounding():
  # Lengths 7 and 13 with LCS 7: exact F is 0.7, rouge_score's float is 0.7000000000000001.
  pool = ["a b c d e f g"]
  cand = "a b c d e f g h i j k l m"
  f = SCORER.score(cand, pool[0])["rougeL"].fmeasure
  assert f > 0.7
  exact = rouge_novelty.NoveltyIndex(0.7)
  exact.extend(pool)
  compat = rouge_novelty.NoveltyIndex(0.7, float_compat=True)
  compat.extend(pool)
  assert exact.check(cand).novel
  assert not compat.check(cand).novel
  assert rouge_novelty.naive_is_novel(cand, pool, float_compat=False, scorer=SCORER)
  assert not rouge_novelty.naive_is_novel(cand, pool, float_compat=True, scorer=SCORER)


def test_edge_cases():
  index = rouge_novelty.NoveltyIndex(0.7)
  assert index.check("anything at all").novel       # empty pool
  index.add("")                                       # a pool entry without tokens
  index.add("Explain how tides work.")
  assert index.check("!!!").novel                     # a candidate without tokens
  assert index.check("totally unseen vocabulary words").novel
  assert not index.check("explain HOW tides work").novel
  assert len(index) == 2
  with pytest.raises(ValueError, match="threshold"):
    rouge_novelty.NoveltyIndex(1.5)


def test_real_seed_pool_matches_naive(shared_data):
  seeds = [json.loads(line)["instruction"]
           for line in open(shared_data / "self-instruct" / "seed_tasks.jsonl", encoding="utf-8")]
  rng = random.Random(3)
  index = rouge_novelty.NoveltyIndex(0.7)
  index.extend(seeds)
  pool = list(seeds)
  kept = 0
  for _ in range(60):
    words = rng.choice(seeds).split()
    for _ in range(rng.randint(0, 4)):  # a few random edits of a seed
      i = rng.randrange(len(words))
      words[i] = rng.choice(rng.choice(seeds).split())
    cand = " ".join(words)
    naive = rouge_novelty.naive_is_novel(cand, pool, scorer=SCORER)
    assert index.add_if_novel(cand).novel == naive
    if naive:
      pool.append(cand)
      kept += 1
  assert 0 < kept < 60


def test_bulk_extend_equals_adding_one_by_one():
  rng = random.Random(4)
  texts = _texts(rng, 400, "a b c d e f g h i j".split(), 12) + ["", "!!"]
  one, bulk = rouge_novelty.NoveltyIndex(0.7), rouge_novelty.NoveltyIndex(0.7)
  for t in texts:
    one.add(t)
  bulk.extend(texts[:150])
  bulk.extend(texts[150:])
  probes = _texts(rng, 100, "a b c d e f g h i j k".split(), 12)
  assert [one.check(t) for t in probes] == [bulk.check(t) for t in probes]
  assert any(not one.check(t).novel for t in probes) and any(one.check(t).novel for t in probes)
