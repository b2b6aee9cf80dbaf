"""Optimizers and learning-rate schedules from a config section.

Gradient accumulation is not done here (no optax.MultiSteps, which averages per-microbatch means): the
train step accumulates gradients of a loss already normalised over the whole step (see losses.py).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = "adamw"  # adamw | adafactor
  learning_rate: float = 1e-3
  schedule: str = "cosine"  # constant | cosine | linear | rsqrt
  warmup_steps: int = 0
  total_steps: int = 1000
  end_lr_fraction: float = 0.0  # cosine and linear decay to learning_rate * end_lr_fraction
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0  # decoupled; never applied to norm scales
  grad_clip_norm: float = 1.0  # global-norm clipping; 0 turns it off
  adafactor_decay_rate: float = 0.8
  adafactor_param_scale: bool = True  # scale updates by parameter RMS, as T5X's Adafactor

  @classmethod
  def from_config(cls, section) -> "OptimConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(section) - fields
    if unknown:
      raise ValueError(f"unknown optimizer config fields {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**dict(section))


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(cfg.total_steps - warmup, 1), alpha=cfg.end_lr_fraction)
  elif cfg.schedule == "linear":  # to end_lr_fraction * lr at the last step (TRL's and Zephyr's default)
    main = optax.linear_schedule(lr, lr * cfg.end_lr_fraction, max(cfg.total_steps - warmup, 1))
  elif cfg.schedule == "rsqrt":
    # Constant through warmup, then lr * sqrt(warmup / step) (T5's inverse square root decay).
    def main(step):
      return lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
    return main
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant, cosine, linear or rsqrt")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params):
  """True for parameters that take weight decay: everything except norm scales."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  schedule = make_schedule(cfg)
  if cfg.optimizer == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=_decay_mask)
  elif cfg.optimizer == "adafactor":
    opt = optax.adafactor(schedule, decay_rate=cfg.adafactor_decay_rate,
                          multiply_by_parameter_scale=cfg.adafactor_param_scale,
                          weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=_decay_mask)
  else:
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or adafactor")
  if cfg.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
