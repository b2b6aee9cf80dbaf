"""Ablation: how many instruction templates per task should training use? (Flan 2021's template ablation.)

    python -m instruct_jax.sweep --config configs/ablations/templates.py --workdir /tmp/ablate_templates

The quickstart's T5 (1.6M parameters) trained on the built-in tasks but the "check" cluster, with the
first 1, 2, 4 or 8 of each task's templates 0-7, two seeds each: 8 runs of 400 steps of 64 packed rows. Every
run is evaluated on templates 8-10 (never trained on by any run), on template 0 (trained on by every run) and
on the held-out "check" cluster. One tokenizer, trained once by the sweep on every template, serves all runs,
so the number of templates does not also change the vocabulary.
Hardware: 2 CPU cores. Runtime: about 23 minutes, measured (8 runs one after another).
Expected result (measured, BENCHMARKS.md): unseen-template ROUGE-L stays flat (35-38 for 1, 2, 4 and 8
templates) while template 0's falls from 69 to 50 as the same steps are spread over more templates; the
held-out cluster stays at 0 ROUGE-L (rank classification at chance). So at this scale more templates do not
buy transfer to new phrasings, in line with Flan 2021's finding that the count mattered little; no benefit
from template diversity reproduces at 1.6M parameters trained from scratch.
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
  c.data.render.template_ids = (0, 1, 2, 3, 4, 5, 6, 7)
  c.data.render.num_templates = 8  # the grid's knob: train on the first N of templates 0-7
  c.eval.seen_templates = (0,)  # the one template every run trained on
  c.eval.unseen_templates = (8, 9, 10)
  c.eval.num_examples = 20
  c.eval.before_training = False
  return c


def get_sweep(arg: str | None = None) -> dict:
  """The grid over get_config's run, and the plots (see python -m instruct_jax.sweep --help)."""
  del arg
  s = {}
  s["grid"] = {"data.render.num_templates": [1, 2, 4, 8], "seed": [0, 1]}
  s["replicate"] = "seed"
  s["tokenizer"] = {"mixture": "builtin", "vocab_size": 1000, "num_examples": 20000}
  s["plots"] = [
      {"x": "data.render.num_templates", "file": "templates_rougeL.png", "xscale": "log",
       "y": ["by_condition/unseen_templates/rougeL", "by_condition/seen_templates/rougeL",
             "by_condition/held_out_cluster/rougeL"],
       "title": "ROUGE-L vs templates per task in training", "xlabel": "training templates per task",
       "ylabel": "ROUGE-L"},
      {"x": "data.render.num_templates", "file": "templates_exact_match.png", "xscale": "log",
       "y": ["by_condition/unseen_templates/exact_match", "by_condition/seen_templates/exact_match"],
       "title": "Exact match vs templates per task in training", "xlabel": "training templates per task",
       "ylabel": "exact match"},
  ]
  return s
