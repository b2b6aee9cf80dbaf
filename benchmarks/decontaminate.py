"""Benchmark: n-gram decontamination of a 1M-example training set against 100k eval examples, by the CLI.

    python benchmarks/decontaminate.py                                   # 1M train x 100k eval, 13-grams
    python benchmarks/decontaminate.py --train_examples 100000 --eval_examples 10000

Writes a synthetic Alpaca-style training JSONL ({instruction, input, output}, about --words words per example)
and an eval JSONL ({input, output}) to a temporary directory, then times the command line program
`python -m instruct_jax.data.decontaminate --train T --eval E --out R` in a subprocess: reading, normalising,
hashing, indexing the eval side and looking the training side up, and writing the report. Prints the wall time,
the program's own "seconds", and its peak RSS (`os.wait4`'s rusage of that child; the files are written by another
child first, as Linux carries a process's peak RSS across fork and exec).

Words are drawn from a Zipf-like distribution over a generated vocabulary of --vocab words, with capitals and
punctuation, so texts look like text to the normaliser; random text of that kind shares no 13-gram by chance.
--planted training examples each get a 13-to-20-word span of a different eval example pasted into their
output, upper-cased and with punctuation added; the script checks that the report finds exactly those training
examples and exactly those eval examples, and exits 1 otherwise. Expected runtime with the defaults on the
2-core machine: about a minute to write the files, then the timed run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

_TRAIN = flags.DEFINE_integer("train_examples", 1_000_000, "Training examples.")
_EVAL = flags.DEFINE_integer("eval_examples", 100_000, "Eval examples.")
_WORDS = flags.DEFINE_integer("words", 60, "Mean words per example.")
_VOCAB = flags.DEFINE_integer("vocab", 50_000, "Distinct words.")
_PLANTED = flags.DEFINE_integer("planted", 1000, "Training examples that copy a span of an eval example.")
_NGRAM = flags.DEFINE_integer("ngram", 13, "--ngram of the run.")
_DIR = flags.DEFINE_string("dir", None, "Write the files here (default: a temporary directory, removed after).")
_GENERATE_ONLY = flags.DEFINE_bool("generate_only", False, "Only write the files into --dir (the first child).")

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  lengths = rng.integers(2, 10, size)
  words = {"".join(rng.choice(letters, n)) for n in lengths}
  words = np.array(sorted(words), dtype=object)
  rng.shuffle(words)
  # Some surface variety: capitals, trailing commas and full stops, an apostrophe.
  variant = rng.random(len(words))
  words[variant < 0.05] = [w.capitalize() for w in words[variant < 0.05]]
  words[(variant >= 0.05) & (variant < 0.1)] = [w + "," for w in words[(variant >= 0.05) & (variant < 0.1)]]
  words[(variant >= 0.1) & (variant < 0.12)] = [w + "." for w in words[(variant >= 0.1) & (variant < 0.12)]]
  words[(variant >= 0.12) & (variant < 0.13)] = [w + "'s" for w in words[(variant >= 0.12) & (variant < 0.13)]]
  return words


def _word_ids(count: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
  """Zipf-like ranks (p ~ 1 / (rank + 10)) clipped to the vocabulary."""
  p = 1.0 / (np.arange(vocab) + 10.0)
  return rng.choice(vocab, size=count, p=p / p.sum())


def _write(path: str, n: int, fields: Sequence[tuple[str, float]], words: np.ndarray, rng: np.random.Generator,
           mean: int, planted: dict[int, str] | None = None) -> list[list[str]]:
  """Writes n records; returns each record's words (eval side only: kept for planting)."""
  lengths = np.maximum(rng.poisson(mean, n), 4)
  ids = _word_ids(int(lengths.sum()), len(words), rng)
  tokens = words[ids].tolist()
  kept = []
  with open(path, "w", encoding="utf-8") as f:
    at = 0
    for i, length in enumerate(lengths.tolist()):
      text = tokens[at:at + length]
      at += length
      record, start = {}, 0
      for j, (field, share) in enumerate(fields):
        stop = length if j == len(fields) - 1 else start + int(length * share)
        record[field] = " ".join(text[start:stop])
        start = stop
      if planted is not None and i in planted:
        record[fields[-1][0]] += " " + planted[i]
      if planted is None:
        kept.append(text)
      f.write(json.dumps(record) + "\n")
  return kept


def _generate(directory: str) -> None:
  rng = np.random.default_rng(0)
  words = _vocabulary(_VOCAB.value, rng)
  train, evals = (os.path.join(directory, f) for f in ("train.jsonl", "eval.jsonl"))
  began = time.perf_counter()
  eval_words = _write(evals, _EVAL.value, [("input", 0.6), ("output", 0.4)], words, rng, _WORDS.value)
  sources = rng.choice(_EVAL.value, _PLANTED.value, replace=False)
  targets = rng.choice(_TRAIN.value, _PLANTED.value, replace=False)
  planted = {}
  for target, source in zip(targets.tolist(), sources.tolist()):
    text = eval_words[source]
    span = min(len(text), int(rng.integers(_NGRAM.value, _NGRAM.value + 8)))
    start = int(rng.integers(0, len(text) - span + 1))
    planted[target] = "; ".join(w.upper() for w in text[start:start + span]) + "!"
  _write(train, _TRAIN.value, [("instruction", 0.2), ("input", 0.25), ("output", 0.55)], words, rng,
         _WORDS.value, planted)
  size = sum(os.path.getsize(p) for p in (train, evals)) / 2**20
  print(f"wrote {_TRAIN.value:,} training and {_EVAL.value:,} eval examples ({size:,.0f} MiB) in "
        f"{time.perf_counter() - began:.0f} s", flush=True)


def main(argv: Sequence[str]) -> None:
  del argv
  if _GENERATE_ONLY.value:
    _generate(_DIR.value)
    return
  with tempfile.TemporaryDirectory() as tmp:
    directory = _DIR.value or tmp
    os.makedirs(directory, exist_ok=True)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--generate_only", f"--dir={directory}",
                    *(f"--{f.name}={f.value}" for f in (_TRAIN, _EVAL, _WORDS, _VOCAB, _PLANTED, _NGRAM))], check=True)
    train, evals, out, log = (os.path.join(directory, f)
                              for f in ("train.jsonl", "eval.jsonl", "report.json", "stdout.txt"))
    command = [sys.executable, "-m", "instruct_jax.data.decontaminate", f"--train={train}", f"--eval={evals}",
               f"--ngram={_NGRAM.value}", f"--out={out}"]
    began = time.perf_counter()
    with open(log, "w") as f:
      child = subprocess.Popen(command, cwd=_ROOT, stdout=f, stderr=subprocess.STDOUT)
      _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    with open(log) as f:
      print(f.read())
    if os.waitstatus_to_exitcode(status):
      sys.exit(f"the command failed with status {os.waitstatus_to_exitcode(status)}")
    with open(out, encoding="utf-8") as f:
      result = json.load(f)
    found_train = result["train"][train]["contaminated"]
    found_eval = result["eval"][evals]["contaminated"]
    print(f"whole command: {wall:.1f} s wall ({result['seconds']} s inside), peak RSS "
          f"{usage.ru_maxrss / 2**20:.2f} GiB")
    print(f"planted {_PLANTED.value}: found {found_train} training and {found_eval} eval examples")
    if found_train != _PLANTED.value or found_eval != _PLANTED.value:
      sys.exit(1)


if __name__ == "__main__":
  app.run(main)
