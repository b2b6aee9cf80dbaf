"""Fixtures: an 8-device CPU mesh (fsdp 4 x tensor 2) and tiny transformers models saved once per session."""
import pytest

from instruct_jax import sharding


@pytest.fixture(scope="session")
def mesh_rules():
  return sharding.make_mesh({"fsdp": 4, "tensor": 2}), sharding.get_rules("fsdp_tensor")


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
  """saved(name) -> (checkpoint dir, torch model); each model is built and saved once."""
  from tests.convert import hf_models  # skips the session's convert tests without torch/transformers
  cache = {}

  def get(name: str):
    if name not in cache:
      model = hf_models.build(name)
      cache[name] = (hf_models.save(model, tmp_path_factory.mktemp(name), name), model)
    return cache[name]

  return get


@pytest.fixture(scope="session")
def imported(saved, mesh_rules):
  """imported(name, scan=False) -> (Pretrained, jitted forward(params, batch), torch model); cached."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from instruct_jax import step  # pylint: disable=g-import-not-at-top
  from instruct_jax import convert  # pylint: disable=g-import-not-at-top
  from instruct_jax.models import build  # pylint: disable=g-import-not-at-top
  cache = {}

  def get(name: str, scan: bool = False):
    if (name, scan) not in cache:
      path, model = saved(name)
      pretrained = convert.import_hf(path, *mesh_rules, scan_layers=scan)
      fwd = jax.jit(functools.partial(step.forward, build.Model(pretrained.config)))
      cache[(name, scan)] = (pretrained, fwd, model)
    return cache[(name, scan)]

  return get
