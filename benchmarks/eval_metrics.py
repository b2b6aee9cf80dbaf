"""Throughput of SuperNI scoring (instances/s) on the shared SuperNI references.

Command (from the repository root; about 2 s on 2 CPU cores):

  python -m benchmarks.eval_metrics [--repeats=5]

Times `instruct_jax.evals.score.score` (exact match + ROUGE-L + aggregation), and each metric alone,
for two prediction sets: the first reference with its last word dropped (short outputs), and the
copy-input baseline (long outputs, the instance input). Prints the best of --repeats runs and the
implied time for the full SuperNI test set (11,810 instances).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import glob
import os
import pathlib
import time

from absl import app
from absl import flags

from instruct_jax.evals import baselines
from instruct_jax.evals import metrics
from instruct_jax.evals import score as score_lib

_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "natural-instructions"
_FULL_TEST_SET = 11_810

_REFERENCES = flags.DEFINE_string("references", str(_DATA / "test_references.jsonl"), "References JSONL.")
_TASK_GLOB = flags.DEFINE_string("task_glob", str(_DATA / "tasks" / "*.json"), "SuperNI task files (copy-input).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement; the best is reported.")


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
  fn()  # Warm up: builds the scorer and imports the stemmer.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv: Sequence[str]) -> None:
  del argv
  references = score_lib.load_references(_REFERENCES.value)
  prediction_sets = {
      "first reference minus last word": {
          r["id"]: " ".join(r["references"][0].split()[:-1]) for r in references},
      "copy input (long)": baselines.predict(
          "copy_input", sorted(glob.glob(_TASK_GLOB.value)), references, allow_missing=True),
  }
  n = len(references)
  print(f"{n} instances from {_REFERENCES.value}; best of {_REPEATS.value}; cpu count {os.cpu_count()}")
  for name, preds in prediction_sets.items():
    mean_chars = sum(len(preds.get(r["id"], "")) for r in references) / n
    timings = {
        "score()": lambda: score_lib.score(references, preds),
        "exact_match": lambda: [metrics.exact_match(preds.get(r["id"]), r["references"]) for r in references],
        "rouge_l": lambda: [metrics.rouge_l(preds.get(r["id"]), r["references"]) for r in references],
    }
    print(f"\npredictions: {name} (mean {mean_chars:.0f} chars)")
    for label, fn in timings.items():
      seconds = _best_seconds(fn, _REPEATS.value)
      print(f"  {label:<12} {n / seconds:>10,.0f} instances/s   "
            f"({_FULL_TEST_SET * seconds / n:.2f} s for {_FULL_TEST_SET:,} instances)")


if __name__ == "__main__":
  app.run(main)
