"""Load a trained workdir (config.json, tokenizer, newest checkpoint) for decoding and evaluation."""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import ml_collections

from instruct_jax import checkpoint as ckpt_lib
from instruct_jax import sharding, step
from instruct_jax.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  model: object
  params: object
  tokenizer: tokenizer_lib.Tokenizer
  mesh: object
  rules: dict
  step: int | None


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a workdir written by instruct_jax.train?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(workdir: str, *, config: ml_collections.ConfigDict | None = None, checkpoint_dir: str | None = None,
         step_number: int | None = None) -> Loaded:
  """The model of `workdir` with the parameters of its newest checkpoint (or of `checkpoint_dir`)."""
  from instruct_jax import train  # the trainer owns how configs become models and tokenizers
  config = config or read_config(workdir)
  tok_path = config.tokenizer.get("path") or os.path.join(workdir, "tokenizer", tokenizer_lib.MODEL_FILENAME)
  tokenizer = tokenizer_lib.Tokenizer(tok_path)
  model = train.build_model(config.model, train.padded_vocab(tokenizer.vocab_size))
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.get_rules(config.sharding)
  boxed = jax.eval_shape(lambda r: model.init(r, **step.dummy_batch(model))["params"], jax.random.key(0))
  shardings = sharding.param_shardings(boxed, mesh, rules)
  abstract = ckpt_lib.abstract_like(nn.meta.unbox(boxed), shardings)
  ckpt_dir = checkpoint_dir or os.path.join(workdir, "checkpoints")
  params = ckpt_lib.restore_params(ckpt_dir, abstract, step_number)
  return Loaded(config, model, params, tokenizer, mesh, rules, step_number)
