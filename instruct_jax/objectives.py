"""Training objectives: what a batch holds, its loss, and the sums the step reports.

The train step (`step.train_step`) is the same for every objective: it splits the batch into microbatches, takes
gradients of `loss` with respect to the trainable parameters and applies the optimizer. An objective says

    batch_spec(kind, batch_size, inputs_length, targets_length)
                          the global batch the step receives: {feature: (shape, dtype)}; the trainer sends
                          these features to the devices and keeps the rest on the host
    prepare(batch)        step-wide quantities computed before any forward pass: (per-row arrays, split with the
                          batch into microbatches; shared values, used whole by every microbatch)
    loss(model, params, microbatch, per_row, shared, dropout_rng, packed, reference)
                          (scalar loss, metric sums); summed over microbatches, so each microbatch's loss is its
                          share of the step's loss, not a mean of its own. `reference`: the frozen reference
                          model's parameters, for objectives with `needs_reference`
    zero_metrics()        the metric sums of no data (the accumulator's start)

`SFT` is instruction tuning's: masked next-token cross-entropy on the output tokens (losses.py). `Preference` is
DPO and its relatives on chosen/rejected pairs (`losses.preference_losses`). `from_config` picks a run's
(config.objective).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from instruct_jax import errors, losses
from instruct_jax.models import build

Batch = dict[str, jax.Array]


class ObjectiveConfigError(errors.UserError, ValueError):
  """config.objective or config.preference names settings no objective takes; the message names the key."""


def _batch_spec(kind: str, inputs_length: int, targets_length: int, rows: int, meta_features):
  # Imported here: the step (and the benchmarks that build it on a GPU image without grain) needs no data pipeline.
  from instruct_jax.data import packing  # pylint: disable=g-import-not-at-top
  return packing.batch_spec(kind, inputs_length, targets_length, rows, meta_features=meta_features)
MetricGroups = tuple[tuple[str, str, int], ...]


class Objective(Protocol):
  name: str
  needs_reference: bool
  pairs: bool  # the batch holds preference pairs (data/packing.py pad_pairs_and_batch)
  groups: MetricGroups  # per-group loss sums the metrics break down by (e.g. per task)

  def batch_spec(self, kind: str, batch_size: int, inputs_length: int, targets_length: int
                 ) -> dict[str, tuple[tuple[int, ...], Any]]:
    ...

  def prepare(self, batch: Batch) -> tuple[Any, Any]:
    ...

  def loss(self, model: build.Model, params, batch: Batch, per_row, shared, *, dropout_rng, packed: bool,
           reference=None) -> tuple[jax.Array, dict[str, jax.Array]]:
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
  needs_reference: bool = dataclasses.field(default=False, init=False)
  pairs: bool = dataclasses.field(default=False, init=False)

  def batch_spec(self, kind: str, batch_size: int, inputs_length: int, targets_length: int):
    """The pipeline's rows (packing.batch_spec) and the per-token features of the metric groups."""
    return _batch_spec(kind, inputs_length, targets_length, batch_size, [feature for _, feature, _ in self.groups])

  def prepare(self, batch: Batch):
    scale_BL, denominator = losses.token_scale_and_denominator(
        batch["decoder_loss_weights"], batch.get("decoder_segment_ids"), self.normalization)
    return scale_BL, denominator

  def loss(self, model: build.Model, params, batch: Batch, per_row, shared, *, dropout_rng, packed: bool,
           reference=None):
    del reference
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


def _halves(x, hosts: int):
  """Per-row values of a batch of pairs -> (chosen, rejected): each host's rows are its pairs' chosen responses, then
  their rejected ones (`packing.pad_pairs_and_batch`); the global batch is the hosts' rows in order."""
  x = x.reshape(hosts, 2, -1, *x.shape[1:])
  return x[:, 0].reshape(-1, *x.shape[3:]), x[:, 1].reshape(-1, *x.shape[3:])


PREFERENCE_SUMS = ("pairs", "rewards_chosen", "rewards_rejected", "rewards_accuracies", "rewards_margins",
                   "logps_chosen", "logps_rejected")


@dataclasses.dataclass(frozen=True)
class Preference:
  """A preference loss (losses.preference_losses: dpo, ipo, cdpo, simpo, orpo) on batches of pairs, averaged over the
  step's pairs; ORPO adds the chosen responses' NLL, averaged over the step's chosen tokens, and weights its
  odds-ratio term by `lambda_`. The reference model (dpo, ipo, cdpo) is a frozen copy of the starting weights, or
  with LoRA the base with its adapters off (`step.reference_params`).

  Metric sums (names as TRL logs them, `metrics.summarize_step`): rewards of the chosen and rejected responses, the
  share of pairs whose chosen reward is higher, their margin, and the log-probabilities the loss compares; plus the
  chosen responses' token NLL and accuracy as SFT reports them."""
  kind: str = "dpo"
  beta: float = 0.1
  label_smoothing: float = 0.0
  gamma: float = 0.5
  lambda_: float = 0.1
  hosts: int = 1  # processes whose rows make the global batch (`_halves`)
  groups: MetricGroups = ()
  packed: bool = False  # pairs packed into shared rows, a segment per response (PipelineConfig.packed_pairs)
  pairs: bool = dataclasses.field(default=True, init=False)

  @property
  def name(self) -> str:
    return self.kind

  @property
  def needs_reference(self) -> bool:
    return self.kind in losses.NEEDS_REFERENCE

  def batch_spec(self, kind: str, batch_size: int, inputs_length: int, targets_length: int):
    """2 * batch_size one-example rows: each pair's chosen response, then its rejected one; packed, batch_size rows
    of twice the length."""
    meta = [feature for _, feature, _ in self.groups]
    if self.packed:
      return _batch_spec(kind, 2 * inputs_length, 2 * targets_length, batch_size, meta)
    return _batch_spec(kind, inputs_length, targets_length, 2 * batch_size, meta)

  def _by_response(self, per_token_BL, batch: Batch):
    """A per-token value summed over each pair's chosen and over its rejected response ([P] each). Padded layout:
    rows [chosen..., rejected...] (`_halves`); packed: a row's segments 2k - 1 and 2k are its k-th pair, up to L / 2
    pairs a row (slots without a pair sum to 0)."""
    if not self.packed:
      return _halves(jnp.sum(per_token_BL, axis=-1), self.hosts)
    segments = batch["decoder_segment_ids"]
    rows, length = segments.shape
    ids = jnp.arange(rows, dtype=jnp.int32)[:, None] * (length + 1) + segments
    sums = jax.ops.segment_sum(per_token_BL.reshape(-1), ids.reshape(-1), num_segments=rows * (length + 1))
    sums = sums.reshape(rows, length + 1)
    pairs = length // 2
    return sums[:, 1:2 * pairs:2].reshape(-1), sums[:, 2:2 * pairs + 1:2].reshape(-1)

  def prepare(self, batch: Batch):
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    chosen_tokens, rejected_tokens = self._by_response(weights, batch)
    pairs = jnp.sum((chosen_tokens > 0) & (rejected_tokens > 0)).astype(jnp.float32)
    return None, (pairs, jnp.sum(chosen_tokens))

  def loss(self, model: build.Model, params, batch: Batch, per_row, shared, *, dropout_rng, packed: bool,
           reference=None):
    del per_row
    step_pairs, step_chosen_tokens = shared
    batch = dict(batch)
    for _, feature, _ in self.groups:
      batch.pop(feature)
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32)
    logits = model.apply(params, batch, dropout_rng=dropout_rng, packed=packed)
    (chosen, rejected) = self._by_response(-losses.cross_entropy(logits, targets)[1] * weights, batch)
    chosen_n, rejected_n = self._by_response(weights, batch)
    ref_chosen = ref_rejected = None
    if self.needs_reference:
      ref_logits = jax.lax.stop_gradient(model.apply(reference, batch, dropout_rng=None, packed=packed))
      ref_chosen, ref_rejected = self._by_response(-losses.cross_entropy(ref_logits, targets)[1] * weights, batch)
    valid = ((chosen_n > 0) & (rejected_n > 0)).astype(jnp.float32)
    # A slot without a pair (packed rows; a response truncated away) gets harmless stand-in values: ORPO's log odds
    # of an empty response's log-probability 0 are infinite, and a NaN masked out afterwards still poisons gradients.
    stand_in = lambda x, value: None if x is None else jnp.where(valid > 0, x, value)
    per_pair, reward_c, reward_r, (compared_c, compared_r) = losses.preference_losses(
        self.kind, stand_in(chosen, -1.0), stand_in(rejected, -2.0), stand_in(chosen_n, 1.0),
        stand_in(rejected_n, 1.0), stand_in(ref_chosen, -1.0), stand_in(ref_rejected, -2.0), beta=self.beta,
        label_smoothing=self.label_smoothing, gamma=self.gamma)
    loss = jnp.sum(valid * per_pair) / jnp.maximum(step_pairs, 1.0)
    if self.kind == "orpo":
      loss = self.lambda_ * loss - jnp.sum(valid * chosen) / jnp.maximum(step_chosen_tokens, 1.0)
    if self.packed:  # the chosen responses' tokens: odd segments
      chosen_weights = weights * (batch["decoder_segment_ids"] % 2 == 1).astype(jnp.float32)
      chosen_logits, chosen_targets = logits, targets
    else:
      chosen_weights, _ = _halves(weights, self.hosts)
      chosen_logits, _ = _halves(logits, self.hosts)
      chosen_targets, _ = _halves(targets, self.hosts)
    _, sums = losses.loss_and_metrics(chosen_logits, chosen_targets, chosen_weights, scale_BL=chosen_weights,
                                      denominator=1.0)
    sums.update(pairs=jnp.sum(valid), rewards_chosen=jnp.sum(valid * reward_c),
                rewards_rejected=jnp.sum(valid * reward_r),
                rewards_accuracies=jnp.sum(valid * (reward_c > reward_r).astype(jnp.float32)),
                rewards_margins=jnp.sum(valid * (reward_c - reward_r)), logps_chosen=jnp.sum(valid * compared_c),
                logps_rejected=jnp.sum(valid * compared_r))
    return loss, sums

  def zero_metrics(self) -> dict[str, jax.Array]:
    return {"weight_sum": jnp.zeros(()), "correct": jnp.zeros(()), "nll_sum": jnp.zeros(()),
            **{name: jnp.zeros(()) for name in PREFERENCE_SUMS}}


OBJECTIVES = ("sft", *losses.PREFERENCE_LOSSES)


# The config.preference keys each objective reads (beta: every preference loss's temperature and rewards).
_READS = {"sft": (), "dpo": ("beta",), "ipo": ("beta",), "cdpo": ("beta", "label_smoothing"),
          "simpo": ("beta", "gamma"), "orpo": ("beta", "lambda")}
_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "gamma": 0.5, "lambda": 0.1}  # configs.base()'s


def from_config(config, groups: MetricGroups = ()) -> Objective:
  """A run's objective (config.objective): SFT with config.loss's settings and the data's metric groups
  (`plan.metric_groups`), or a preference loss with config.preference's. A config.preference key the objective does
  not read, set to other than its default, is an error naming it (it would have no effect)."""
  if config.objective not in OBJECTIVES:
    raise ObjectiveConfigError(f"config.objective={config.objective!r}: expected one of {OBJECTIVES}")
  p = config.preference
  for key, default in _DEFAULTS.items():
    if key not in _READS[config.objective] and p[key] != default:
      users = [o for o, keys in _READS.items() if key in keys]
      if key == "label_smoothing":
        raise ObjectiveConfigError(f"config.preference.label_smoothing={p[key]!r} is conservative DPO's: set "
                                   "--config.objective=cdpo, or 0")
      raise ObjectiveConfigError(f"config.preference.{key}={p[key]!r} has no effect with "
                                 f"config.objective={config.objective!r}; it is read by {', '.join(users)}")
  if config.objective == "sft":
    return SFT(**config.loss.to_dict(), groups=tuple(groups))
  if not p.beta > 0:
    raise ObjectiveConfigError(f"config.preference.beta={p.beta!r}: must be positive")
  if config.objective == "cdpo" and not 0 < p.label_smoothing < 0.5:
    raise ObjectiveConfigError(f"config.preference.label_smoothing={p.label_smoothing!r}: conservative DPO "
                               "(objective cdpo) assumes a share of flipped labels in (0, 0.5), e.g. 0.1")
  return Preference(config.objective, beta=float(p.beta), label_smoothing=float(p.label_smoothing),
                    gamma=float(p.gamma), lambda_=float(p["lambda"]), hosts=jax.process_count())
