"""Every config key at its default: the starting point of every shipped config and of your own.

    python -m instruct_jax.train --config configs/base.py --dry_run \\
        --config.model.kind=decoder --config.model.size=tiny

Each key is listed, with a one-line comment, in `instruct_jax/configs.py` (`base()`); a config file starts
with `c = instruct_jax.configs.base()` and changes what it needs. This file names no model (model.kind and
model.size are empty): pass them, or config.init_from, on the command line.
Hardware: what the model you name needs. Runtime: 1000 steps of 8 rows of 512 + 128 tokens (seconds per
step for a tiny model on a CPU). Expected result: the loss falls; the evaluation is the built-in one.
"""
import ml_collections

from instruct_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return configs.base()
