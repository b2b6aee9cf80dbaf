"""Tiny models and batches shared by the core tests."""
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax.data import packing, transforms
from instruct_jax.models import build

EOS = 1
BOS = 2
KINDS = ("encoder_decoder", "decoder")
# Both kinds, the costlier T5 one marked slow (for tests whose decoder case covers the same code path).
KINDS_T5_SLOW = (pytest.param("encoder_decoder", marks=pytest.mark.slow), "decoder")


def tiny_model(kind: str, **overrides) -> build.Model:
  return build.from_config(build.config_for(kind, "tiny", **overrides))


def random_examples(kind: str, n: int, seed: int = 0, max_in: int = 10, max_out: int = 7):
  """n examples of random lengths (outputs of different lengths), made by the real transforms."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    inputs = rng.integers(3, 500, rng.integers(2, max_in))
    targets = rng.integers(3, 500, rng.integers(1, max_out))
    if kind == "encoder_decoder":
      out.append(transforms.seq2seq_features(inputs, targets, eos_id=EOS, max_input_len=32, max_target_len=32))
    else:
      out.append(transforms.decoder_features(inputs, targets, bos_id=BOS, eos_id=EOS, max_len=32))
  return out


def make_batches(kind: str, examples, *, pack: bool, batch_size: int, inputs_len: int, targets_len: int):
  """All batches the real packing code makes from `examples`, as a list of dicts of jnp arrays."""
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  lengths = packing.feature_lengths(kind, inputs_len, targets_len)
  batches = packing.pack_and_batch(ds, lengths=lengths, batch_size=batch_size, pack=pack,
                                   num_packing_bins=batch_size, drop_remainder=False)
  return [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]


def concat_batches(batches):
  return {k: jnp.concatenate([b[k] for b in batches]) for k in batches[0]}


def init_params(model: build.Model, seed: int = 0):
  import flax.linen as nn
  return nn.meta.unbox(model.init(jax.random.key(seed)))


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def max_tree_rel_err(ta, tb) -> float:
  return max(jax.tree.leaves(jax.tree.map(rel_err, ta, tb)))
