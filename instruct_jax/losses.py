"""Masked cross-entropy for instruction tuning: a pure function of logits, targets and loss weights.

Which tokens are scored is decided by the data (`decoder_loss_weights`: 0 on the instruction, 1 on the
output and its end-of-text token; see `instruct_jax.data.transforms`). This module decides how the
scored tokens are averaged. Every normalisation has the form

    loss = sum_t scale_t * CE_t / denominator

where `scale` and `denominator` depend only on the data, so they can be computed for the whole optimizer
step before any forward pass. Summing the numerator over devices and gradient-accumulation microbatches
and dividing once by the step's denominator is then exact (not a mean of per-microbatch means).

    Normalization.TOKENS    scale = w,                    denominator = sum(w)   (global token mean)
    Normalization.EXAMPLES  scale = w / tokens of its example, denominator = examples (each packed
                            segment counts once, so packing does not change the loss)
    Normalization.SUM       scale = w,                    denominator = 1
"""
from __future__ import annotations

import enum

import jax
import jax.numpy as jnp


class Normalization(enum.Enum):
  TOKENS = "tokens"
  EXAMPLES = "examples"
  SUM = "sum"


def token_scale_and_denominator(weights_BL, segment_ids_BL, normalization: Normalization | str):
  """Per-token scale and the denominator for `normalization` (see module docstring)."""
  normalization = Normalization(normalization)
  weights_BL = weights_BL.astype(jnp.float32)
  if normalization is Normalization.TOKENS:
    return weights_BL, jnp.sum(weights_BL)
  if normalization is Normalization.SUM:
    return weights_BL, jnp.ones((), jnp.float32)
  B, L = weights_BL.shape
  if segment_ids_BL is None:
    segment_ids_BL = (weights_BL > 0).astype(jnp.int32)
  # Count scored tokens per (row, segment) with one segment_sum over B * (L + 1) slots.
  slot_BL = jnp.arange(B)[:, None] * (L + 1) + segment_ids_BL
  per_slot = jax.ops.segment_sum(weights_BL.reshape(-1), slot_BL.reshape(-1), num_segments=B * (L + 1))
  tokens_in_example_BL = per_slot[slot_BL]
  scale_BL = jnp.where(weights_BL > 0, weights_BL / jnp.maximum(tokens_in_example_BL, 1e-9), 0.0)
  return scale_BL, jnp.sum(per_slot > 0).astype(jnp.float32)


def cross_entropy(logits_BLV, targets_BL, *, z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Per-token training loss [B, L] (cross-entropy, optional z-loss and label smoothing) and the plain
  negative log-likelihood of the target [B, L] (for metrics).

  Label smoothing puts 1 - s on the target and s / (V - 1) elsewhere, minus the entropy of that
  distribution so a perfect prediction scores 0 (as T5X does). z-loss adds z_loss * log(Z)^2.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  logits_BLV = logits_BLV.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = log_z_BL - target_logit_BL
  plain_nll_BL = nll_BL
  if label_smoothing:
    vocab = logits_BLV.shape[-1]
    on, off = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    mean_nll_BL = log_z_BL - jnp.mean(logits_BLV, axis=-1)  # -(1/V) sum_v log p_v
    nll_BL = (on - off) * nll_BL + off * vocab * mean_nll_BL
    nll_BL -= -(on * jnp.log(on) + (vocab - 1) * off * jnp.log(off + 1e-20))
  return nll_BL + z_loss * jnp.square(log_z_BL), plain_nll_BL


def loss_and_metrics(logits_BLV, targets_BL, weights_BL, *, scale_BL, denominator, z_loss: float = 0.0,
                     label_smoothing: float = 0.0, groups=None):
  """Normalised loss plus sums for metrics.

  Args:
    logits_BLV: fp32 logits.
    targets_BL: target token ids.
    weights_BL: the data's loss weights (0/1); only used for the metric counts.
    scale_BL, denominator: from `token_scale_and_denominator`, computed over the whole optimizer step.
    groups: optional {name: (ids_BL, n)}: per-token group ids in [0, n) (e.g. each token's task index), for
      per-group sums.
  Returns:
    (loss, metrics) with metrics["weight_sum"] (scored tokens), ["correct"] (scored tokens predicted
    exactly by argmax) and ["nll_sum"] (plain negative log-likelihood) summed over scored tokens; per group
    name, metrics[f"{name}_nll"] and [f"{name}_weight"]: those sums per group id ([n] each).
  """
  ce_BL, nll_BL = cross_entropy(logits_BLV, targets_BL, z_loss=z_loss, label_smoothing=label_smoothing)
  loss = jnp.sum(scale_BL * ce_BL) / jnp.maximum(denominator, 1e-9)
  w = weights_BL.astype(jnp.float32)
  correct = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
  metrics = {
      "weight_sum": jnp.sum(w),
      "correct": jnp.sum(w * correct),
      "nll_sum": jnp.sum(w * nll_BL),  # the target's plain negative log-likelihood
  }
  for name, (ids_BL, n) in (groups or {}).items():
    ids = ids_BL.reshape(-1)
    metrics[f"{name}_nll"] = jax.ops.segment_sum((w * nll_BL).reshape(-1), ids, num_segments=n)
    metrics[f"{name}_weight"] = jax.ops.segment_sum(w.reshape(-1), ids, num_segments=n)
  return loss, metrics


# ---------------------------------------------------------------- preference losses

PREFERENCE_LOSSES = ("dpo", "ipo", "cdpo", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "ipo", "cdpo")  # SimPO and ORPO compare the policy's own log-probabilities
LENGTH_NORMALISED = ("ipo", "simpo", "orpo")  # log-probabilities averaged over the response's tokens (as TRL)


def sequence_logps(logits_BLV, targets_BL, weights_BL):
  """Per row: the sum of log p(target) over its scored tokens, and how many tokens are scored ([B] each)."""
  _, nll_BL = cross_entropy(logits_BLV, targets_BL)
  w = weights_BL.astype(jnp.float32)
  return -jnp.sum(w * nll_BL, axis=-1), jnp.sum(w, axis=-1)


def preference_losses(kind: str, chosen_logps_P, rejected_logps_P, chosen_tokens_P, rejected_tokens_P,
                      ref_chosen_logps_P=None, ref_rejected_logps_P=None, *, beta: float = 0.1,
                      label_smoothing: float = 0.0, gamma: float = 0.5):
  """Per pair: (loss, chosen reward, rejected reward, the log-probabilities the loss compares) for one preference
  loss; the log-probabilities are sums over each response's scored tokens ([P] each).

      dpo    -log sigmoid(beta * h), h = (pi_c - pi_r) - (ref_c - ref_r)                (Rafailov et al. 2023)
      cdpo   -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h), e = label_smoothing  (conservative DPO)
      ipo    (h - 1 / (2 beta))^2, h on length-averaged log-probabilities                (Azar et al. 2023)
      simpo  -log sigmoid(beta (avg pi_c - avg pi_r) - gamma), no reference              (Meng et al. 2024)
      orpo   -log sigmoid(log odds(avg pi_c) - log odds(avg pi_r)), no reference; the run's loss adds the
             chosen responses' NLL (`Preference`), weighting this term by lambda         (Hong et al. 2024)

  Rewards are beta * (pi - ref) with a reference, beta * avg pi without (TRL's `rewards/*`).
  """
  if kind not in PREFERENCE_LOSSES:
    raise ValueError(f"unknown preference loss {kind!r}; one of {PREFERENCE_LOSSES}")
  if kind in LENGTH_NORMALISED:
    chosen = chosen_logps_P / jnp.maximum(chosen_tokens_P, 1.0)
    rejected = rejected_logps_P / jnp.maximum(rejected_tokens_P, 1.0)
  else:
    chosen, rejected = chosen_logps_P, rejected_logps_P
  if kind in NEEDS_REFERENCE:
    ref_c, ref_r = ref_chosen_logps_P, ref_rejected_logps_P
    if kind == "ipo":
      ref_c = ref_c / jnp.maximum(chosen_tokens_P, 1.0)
      ref_r = ref_r / jnp.maximum(rejected_tokens_P, 1.0)
    h = (chosen - rejected) - (ref_c - ref_r)
    if kind == "ipo":
      loss = jnp.square(h - 1.0 / (2.0 * beta))
    else:
      eps = label_smoothing if kind == "cdpo" else 0.0
      loss = -(1.0 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    return loss, beta * (chosen - ref_c), beta * (rejected - ref_r), (chosen, rejected)
  if kind == "simpo":
    loss = -jax.nn.log_sigmoid(beta * (chosen - rejected) - gamma)
  else:  # orpo: log odds = log p - log(1 - p) with p the length-averaged probability
    log_odds = (chosen - rejected) - (jnp.log1p(-jnp.exp(chosen)) - jnp.log1p(-jnp.exp(rejected)))
    loss = -jax.nn.log_sigmoid(log_odds)
  return loss, beta * chosen, beta * rejected, (chosen, rejected)
