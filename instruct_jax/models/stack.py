"""A stack of identical layers, unrolled or scanned, with an optional rematerialisation policy.

Unrolled stacks name their layers `layer_0`, `layer_1`, ...; scanned stacks hold one `layers` subtree
whose parameters have a leading logical axis "layers". Scanning compiles one layer instead of N, which
matters for 24-layer T5-XXL and 32-layer 7B models.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from instruct_jax.models import attention, layers
from instruct_jax.models.lora import LoraConfig

_cp = jax.checkpoint_policies
# On CPU the weight matmuls are custom_vjp calls (layers.MATMUL_NAME), which the dot policies cannot see;
# saving that name as well keeps those policies' meaning on every backend.
_weight_matmuls = _cp.save_only_these_names(layers.MATMUL_NAME)
REMAT_POLICIES = {
    "none": None,
    "full": _cp.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": _cp.save_from_both_policies(_cp.checkpoint_dots, _weight_matmuls),  # keep matmul outputs
    "dots_no_batch": _cp.save_from_both_policies(_cp.dots_with_no_batch_dims_saveable,  # weight matmuls only
                                                 _weight_matmuls),
}


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """Settings every model config shares."""
  dtype: Any = jnp.float32  # compute dtype (bfloat16 is the usual TPU/GPU choice)
  param_dtype: Any = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False
  attention: str = "xla"  # the attention core: xla | cudnn | pallas_tpu | auto (see models/attention.py)
  lora: LoraConfig | None = None  # low-rank adapters on the named projections (models/lora.py)

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r}: choose one of {sorted(REMAT_POLICIES)}")
    attention.check_implementation(self.attention)
    if self.attention not in ("xla", "auto") and getattr(self, "dropout_rate", 0.0):
      raise attention.AttentionError(f"config.model.attention={self.attention!r} has no dropout of attention probabilities "
                       f"(dropout_rate is {self.dropout_rate}): set config.model.dropout_rate=0, or attention "
                       "'auto' (xla while dropout is active) or 'xla'")


class LayerStack(nn.Module):
  """Applies `num_layers` copies of `layer_cls(config, **layer_kwargs)` to x; other args are shared.

  `with_index`: each layer is also given its index, after x: a Python int when unrolled, a traced int32 when
  scanned (layers whose settings differ by index, such as Gemma's sliding and global layers).
  """
  layer_cls: Any
  config: StackConfig
  num_layers: int
  layer_kwargs: dict
  with_index: bool = False

  @nn.compact
  def __call__(self, x, *shared):
    cfg = self.config
    cls = self.layer_cls
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      static = (2,) if self.with_index and not cfg.scan_layers else ()  # (self, x, index): the index stays an int
      cls = nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers, static_argnums=static)
    if not cfg.scan_layers:
      for i in range(self.num_layers):
        index = (i,) if self.with_index else ()
        x = cls(cfg, name=f"layer_{i}", **self.layer_kwargs)(x, *index, *shared)
      return x

    def body(layer, carry, *args):
      return layer(carry, *args), None

    index = (jnp.arange(self.num_layers, dtype=jnp.int32),) if self.with_index else ()
    scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0,) * len(index) + (nn.broadcast,) * len(shared),
                      length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(cls(cfg, name="layers", **self.layer_kwargs), x, *index, *shared)
    return x


def take_rows(state: dict, src_B, scan_layers: bool) -> dict:
  """Rows `src_B` of every per-row array of a decoding state (beam search's parent pointers).

  A key/value cache of a scanned stack leads with the layer axis, so its rows are axis 1.
  """
  cache_axis = 1 if scan_layers else 0
  out = {k: v[src_B] for k, v in state.items() if k != "cache"}
  if "cache" in state:
    out["cache"] = jax.tree.map(lambda x: jnp.take(x, src_B, axis=cache_axis) if x.ndim > cache_axis else x,
                                state["cache"])
  return out
