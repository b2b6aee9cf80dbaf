"""Golden metrics: one train step of the tiny config's model and optimizer on a fixed batch.

If a change is meant to alter the numerics (a new init, a different loss), regenerate the stored values:

    python -m tests.test_golden --update

and say why in the commit. An unintended difference means the change altered training.
"""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from instruct_jax import configs, objectives, optim, sharding, step
from instruct_jax.models import build
from tests import helpers

GOLDEN = pathlib.Path(__file__).with_name("golden_step.json")
CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
KEYS = ("loss", "grad_norm", "param_norm", "weight_sum", "correct", "nll_sum", "learning_rate")


def one_step_metrics(arg: str | None) -> dict[str, float]:
  config = configs.load(CONFIG, arg)
  model = build.from_section(config.model, vocab_size=512)  # the helper batches use ids below 500
  kind = model.kind
  batch = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 48, seed=11), pack=True,
                                                      batch_size=8, inputs_len=32, targets_len=16))
  batch = {k: v[:8] for k, v in batch.items()}
  mesh = sharding.make_mesh({"data": 8})
  rules = sharding.get_rules(config.sharding)
  ocfg = optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps})
  tx = optim.make_optimizer(ocfg)
  state, sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(config.seed))
  train_step = step.jit_train_step(model, tx, objectives.from_config(config), optim.make_schedule(ocfg),
                                   mesh, rules, sh)
  state, m = train_step(state, batch, jax.random.key(0))
  state, m = train_step(state, batch, jax.random.key(0))  # the second step sees a non-zero learning rate
  m = jax.device_get(m)
  return {k: float(m[k]) for k in KEYS}


@pytest.mark.parametrize("arg", [None, "decoder"])
def test_one_step_matches_golden(arg):
  stored = json.loads(GOLDEN.read_text())[str(arg)]
  got = one_step_metrics(arg)
  for k in KEYS:
    assert got[k] == pytest.approx(stored[k], rel=2e-4, abs=1e-6), (
        f"{k}: got {got[k]}, golden {stored[k]}. If this change is meant to alter the numerics, run "
        "`python -m tests.test_golden --update` and explain why in the commit.")


if __name__ == "__main__":
  if "--update" not in sys.argv:
    sys.exit("usage: python -m tests.test_golden --update")
  import os
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  GOLDEN.write_text(json.dumps({str(a): one_step_metrics(a) for a in (None, "decoder")}, indent=1) + "\n")
  print(f"wrote {GOLDEN}")
