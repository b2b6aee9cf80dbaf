"""Training objectives: what a batch holds, its loss, and the sums the step reports.

The train step (`step.train_step`) is the same for every objective: it splits the batch into microbatches, takes
gradients of `loss` with respect to the trainable parameters and applies the optimizer. An objective says

    batch_spec(kind, batch_size, inputs_length, targets_length)
                          the global batch the step receives: {feature: (shape, dtype)}; the trainer sends
                          these features to the devices and keeps the rest on the host
    prepare(batch)        step-wide quantities computed before any forward pass: (per-row arrays, split with the
                          batch into microbatches; shared values, used whole by every microbatch)
    loss(model, params, microbatch, per_row, shared, dropout_rng, packed)
                          (scalar loss, metric sums); summed over microbatches, so each microbatch's loss is its
                          share of the step's loss, not a mean of its own
    zero_metrics()        the metric sums of no data (the accumulator's start)

`SFT` is instruction tuning's: masked next-token cross-entropy on the output tokens (losses.py). The preference
objectives (DPO and relatives) are the other objectives of this seam. `from_config` picks a run's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from instruct_jax import losses
from instruct_jax.data import packing
from instruct_jax.models import build

Batch = dict[str, jax.Array]
MetricGroups = tuple[tuple[str, str, int], ...]


class Objective(Protocol):
  name: str

  def batch_spec(self, kind: str, batch_size: int, inputs_length: int, targets_length: int
                 ) -> dict[str, tuple[tuple[int, ...], Any]]:
    ...

  def prepare(self, batch: Batch) -> tuple[Any, Any]:
    ...

  def loss(self, model: build.Model, params, batch: Batch, per_row, shared, *, dropout_rng, packed: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    ...

  def zero_metrics(self) -> dict[str, jax.Array]:
    ...


@dataclasses.dataclass(frozen=True)
class SFT:
  """Masked cross-entropy on the output tokens (`decoder_loss_weights`), normalised over the whole optimizer step.

  groups: (name, batch feature, n) triples, e.g. ("task", "task_index", 15): the batch carries that per-token
  feature and the metrics get its per-group NLL and weight sums (`losses.loss_and_metrics`)."""
  normalization: str = "tokens"  # tokens | examples | sum (losses.Normalization)
  z_loss: float = 0.0
  label_smoothing: float = 0.0
  groups: MetricGroups = ()
  name: str = dataclasses.field(default="sft", init=False)

  def batch_spec(self, kind: str, batch_size: int, inputs_length: int, targets_length: int):
    """The pipeline's rows (packing.batch_spec) and the per-token features of the metric groups."""
    return packing.batch_spec(kind, inputs_length, targets_length, batch_size,
                              meta_features=[feature for _, feature, _ in self.groups])

  def prepare(self, batch: Batch):
    scale_BL, denominator = losses.token_scale_and_denominator(
        batch["decoder_loss_weights"], batch.get("decoder_segment_ids"), self.normalization)
    return scale_BL, denominator

  def loss(self, model: build.Model, params, batch: Batch, per_row, shared, *, dropout_rng, packed: bool):
    batch = dict(batch)
    groups = {name: (batch.pop(feature), n) for name, feature, n in self.groups}
    logits = model.apply(params, batch, dropout_rng=dropout_rng, packed=packed)
    return losses.loss_and_metrics(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                   scale_BL=per_row, denominator=shared, z_loss=self.z_loss,
                                   label_smoothing=self.label_smoothing, groups=groups)

  def zero_metrics(self) -> dict[str, jax.Array]:
    sums = {"weight_sum": jnp.zeros(()), "correct": jnp.zeros(()), "nll_sum": jnp.zeros(())}
    for name, _, n in self.groups:
      sums[f"{name}_nll"] = sums[f"{name}_weight"] = jnp.zeros((n,))
    return sums


def from_config(config, groups: MetricGroups = ()) -> Objective:
  """A run's objective: config.loss's settings, with the data's metric groups (`plan.metric_groups`)."""
  return SFT(**config.loss.to_dict(), groups=tuple(groups))
