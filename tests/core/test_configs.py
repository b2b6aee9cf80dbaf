"""Every shipped config loads, its model and optimizer state have shapes, and its sharding rules place it."""
import pathlib

import flax.linen as nn
import jax
import pytest

from instruct_jax import configs, optim, sharding, step, train

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
SHIPPED = [("quickstart.py", None), ("quickstart_decoder.py", None), ("tiny.py", None), ("tiny.py", "decoder"),
           *[("flan_t5.py", s) for s in ("small", "base", "large", "xl", "xxl")],
           *[("decoder_llama.py", s) for s in ("1b", "7b")]]


def test_every_config_file_is_covered():
  assert {f.name for f in CONFIG_DIR.glob("*.py")} == {name for name, _ in SHIPPED}


@pytest.mark.parametrize("name,arg", SHIPPED, ids=[f"{n}:{a}" for n, a in SHIPPED])
def test_config_loads_and_eval_shapes(name, arg):
  config = configs.load(CONFIG_DIR / name, arg)
  assert config.total_steps > 0 and config.data.batch_size > 0
  model = train.build_model(config.model, None)
  tx = optim.make_optimizer(optim.OptimConfig.from_config({**config.optim.to_dict(),
                                                           "total_steps": config.total_steps}))
  boxed = jax.eval_shape(lambda r: model.init(r, **step.dummy_batch(model))["params"], jax.random.key(0))
  params = nn.meta.unbox(boxed)
  opt_state = jax.eval_shape(tx.init, params)
  assert jax.tree.leaves(opt_state)
  # The config's sharding preset places every parameter on an 8-device mesh without collisions.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  shardings = sharding.param_shardings(boxed, mesh, sharding.get_rules(config.sharding))
  assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(params))
  assert "python -m instruct_jax" in (CONFIG_DIR / name).read_text().split(chr(34) * 3)[1]  # docstring has the command
