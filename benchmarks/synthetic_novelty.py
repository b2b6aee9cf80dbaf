"""Benchmark: the fast ROUGE-L novelty filter against naive pairwise rouge_score.

    python benchmarks/synthetic_novelty.py                       # pools of 10k and 50k
    python benchmarks/synthetic_novelty.py --pool_sizes=10000 --candidates=100

Pools are the 175 Self-Instruct seed instructions plus generated variations of them (word
replacements, deletions, insertions, swaps, splices of two seeds, added phrases), so many entries
are near-duplicates of each other, as in a real Self-Instruct pool. A stream of new variations is
then filtered against the pool the way Self-Instruct does it: reject when ROUGE-L F > 0.7 against
any pool entry, accepted ones join the pool at once. Both filters see the same stream; the script
checks that every keep/reject decision is identical.

The naive filter scores (candidate, pool entry) pairs one by one with rouge_score, in one process,
and stops at the first pair over the threshold; the released Self-Instruct code scores every pair,
so this baseline is the faster of the two and the speedups are conservative. When the naive filter
would take longer than --naive_budget_s it runs on the first candidates only, its time per
candidate is measured there and multiplied out, and the output says so. Expected runtime with the
defaults: about 8 minutes on a busy 2-core machine, nearly all of it in the naive filter.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from instruct_jax.synthetic.rouge_novelty import NoveltyIndex, naive_is_novel  # noqa: E402

_SEEDS = flags.DEFINE_string(
    "seed_tasks", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                               "data", "self-instruct", "seed_tasks.jsonl"),
    "The 175 Self-Instruct seed tasks (JSONL).")
_POOL_SIZES = flags.DEFINE_list("pool_sizes", ["10000", "50000"], "Pool sizes to test.")
_CANDIDATES = flags.DEFINE_integer("candidates", 200, "New instructions filtered per pool.")
_NAIVE_BUDGET = flags.DEFINE_float("naive_budget_s", 200.0,
                                   "Run the naive filter on all candidates only if the estimate "
                                   "fits this many seconds; else on a timed sample.")
_NAIVE_MIN_SAMPLE = flags.DEFINE_integer("naive_min_sample", 10,
                                         "Fewest candidates the naive filter always runs on.")
_FLOAT_COMPAT = flags.DEFINE_bool("float_compat", False, "Use rouge_score's float comparison.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the generated variations.")

PHRASES = ["Please", "In detail,", "Briefly,", "for a beginner", "with an example",
           "in one paragraph", "step by step", "and explain why", "using simple words"]


def variation(rng: random.Random, seeds: list[list[str]]) -> str:
  """A seed instruction with 1-6 random edits (words drawn from the other seeds)."""
  words = list(rng.choice(seeds))
  for _ in range(rng.randint(1, 6)):
    op = rng.randrange(7)
    other = rng.choice(seeds)
    i = rng.randrange(len(words)) if words else 0
    if op == 0 and words:
      words[i] = rng.choice(other)
    elif op == 1 and len(words) > 3:
      del words[i]
    elif op == 2:
      words.insert(i, rng.choice(other))
    elif op == 3 and len(words) > 1:
      j = min(i + 1, len(words) - 1)
      words[i], words[j] = words[j], words[i]
    elif op == 4:
      words = words[:len(words) // 2] + other[len(other) // 2:]
    elif op == 5:
      words = rng.choice(PHRASES).split() + words
    else:
      words = words + rng.choice(PHRASES).split()
  return " ".join(words)


def main(argv):
  del argv
  with open(_SEEDS.value, encoding="utf-8") as f:
    seeds = [json.loads(line)["instruction"] for line in f if line.strip()]
  seed_words = [s.split() for s in seeds]
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  print(f"{len(seeds)} seeds; threshold 0.7 ({'float' if _FLOAT_COMPAT.value else 'exact'} "
        f"comparison); {_CANDIDATES.value} candidates per pool")
  for size in (int(s) for s in _POOL_SIZES.value):
    rng = random.Random(f"{_SEED.value}:pool:{size}")
    pool = seeds + [variation(rng, seed_words) for _ in range(size - len(seeds))]
    crng = random.Random(f"{_SEED.value}:candidates:{size}")
    cands = [variation(crng, seed_words) for _ in range(_CANDIDATES.value)]

    t0 = time.perf_counter()
    index = NoveltyIndex(0.7, float_compat=_FLOAT_COMPAT.value)
    index.extend(pool)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = [index.add_if_novel(c).novel for c in cands]
    fast_s = time.perf_counter() - t0

    naive_pool = list(pool)
    naive = []
    t0 = time.perf_counter()
    limit = len(cands)
    for k, c in enumerate(cands):
      if k >= limit:
        break
      keep = naive_is_novel(c, naive_pool, 0.7, float_compat=_FLOAT_COMPAT.value, scorer=scorer)
      naive.append(keep)
      if keep:
        naive_pool.append(c)
      if k + 1 == _NAIVE_MIN_SAMPLE.value:
        per = (time.perf_counter() - t0) / (k + 1)
        if per * len(cands) > _NAIVE_BUDGET.value:
          limit = k + 1
    naive_s = time.perf_counter() - t0
    done = len(naive)
    naive_per = naive_s / done
    fast_per = fast_s / len(cands)
    same = fast[:done] == naive
    kept = sum(fast)
    print(f"\npool {size}: index build {build_s:.2f}s "
          f"({1e6 * build_s / size:.1f} us/entry); fast kept {kept}/{len(cands)}")
    print(f"  fast : {1e3 * fast_per:8.2f} ms/candidate over {len(cands)} candidates; "
          f"LCS computed for {index.lcs_pairs} of {index.pairs_seen} pairs "
          f"({100 * index.lcs_pairs / max(1, index.pairs_seen):.3f}%)")
    est = "" if done == len(cands) else (
        f"  [ESTIMATE: naive ran on the first {done} candidates only; total "
        f"{naive_per * len(cands):.0f}s extrapolated]")
    print(f"  naive: {1e3 * naive_per:8.2f} ms/candidate over {done} candidates{est}")
    print(f"  speedup {naive_per / fast_per:.0f}x per candidate; "
          f"{naive_per * len(cands) / (fast_s + build_s):.0f}x counting the index build; "
          f"decisions identical on {done} candidates: {same}")
    if not same:
      raise SystemExit("DECISIONS DIFFER")


if __name__ == "__main__":
  app.run(main)
