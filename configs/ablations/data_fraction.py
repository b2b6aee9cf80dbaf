"""Ablation: how much instruction data is enough? (The "quick learners" and LIMA question, at toy scale.)

    python -m instruct_jax.sweep --config configs/ablations/data_fraction.py --workdir /tmp/ablate_fraction

The quickstart's T5 trained on 1%, 5%, 25% or 100% of each built-in task's 20,000 training examples (the
first 200, 1,000, 5,000 or all of them, `data.train_fraction`), two seeds each: 8 runs of the same 400 steps
of 64 packed rows, so the smaller pools are simply seen more often. Evaluated on the trained templates, on
templates 8-10 and on the held-out "check" cluster, as the quickstart is. One tokenizer, trained once by the
sweep, serves all runs.
Hardware: 2 CPU cores. Runtime: about 19 minutes, measured (8 runs one after another).
Expected result (measured, BENCHMARKS.md): from 5% up every condition is flat (seen ROUGE-L about 51.5);
1% is about 2 points lower on seen templates while its training loss halves (each example seen ~24 times),
and unseen-template ROUGE-L does not fall with less data (35-40, no clear trend with two seeds). So 1,000
examples per task are as good as 20,000 at this step budget, the LIMA direction.
"""
import pathlib

import ml_collections

from instruct_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = configs.load(pathlib.Path(__file__).resolve().parents[1] / "quickstart.py")
  c.total_steps = 400
  c.log_every = 50
  c.checkpoint_every = 200
  c.keep_checkpoints = 1
  c.data.train_fraction = 1.0  # the grid's knob
  c.eval.num_examples = 20
  c.eval.before_training = False
  return c


def get_sweep(arg: str | None = None) -> dict:
  """The grid over get_config's run, and the plots (see python -m instruct_jax.sweep --help)."""
  del arg
  s = {}
  s["grid"] = {"data.train_fraction": [0.01, 0.05, 0.25, 1.0], "seed": [0, 1]}
  s["replicate"] = "seed"
  s["tokenizer"] = {"mixture": "builtin", "vocab_size": 1000, "num_examples": 20000}
  s["plots"] = [
      {"x": "data.train_fraction", "file": "fraction_rougeL.png", "xscale": "log",
       "y": ["by_condition/seen_templates/rougeL", "by_condition/unseen_templates/rougeL",
             "by_condition/held_out_cluster/rougeL"],
       "title": "ROUGE-L vs share of each task's training examples", "xlabel": "share of training examples",
       "ylabel": "ROUGE-L"},
      {"x": "data.train_fraction", "file": "fraction_exact_match.png", "xscale": "log",
       "y": ["by_condition/seen_templates/exact_match", "by_condition/unseen_templates/exact_match"],
       "title": "Exact match vs share of each task's training examples", "xlabel": "share of training examples",
       "ylabel": "exact match"},
  ]
  return s
