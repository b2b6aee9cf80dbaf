"""LoRA: low-rank adapters on the projections of both model kinds, a frozen base, and merging.

    cfg = LoraConfig(rank=16, alpha=32.0, targets=("query", "value"))
    model = build.from_config(decoder.config_for("tiny", lora=cfg))   # params gain lora_a / lora_b leaves
    adapters = trainable(params, cfg)                                  # the subtree the optimizer sees
    params = with_trainable(params, adapters, cfg)                     # back into the full tree
    base_config, base_params = merge(model.config, params)             # kernel + alpha/rank * A @ B

A targeted projection W (a `layers.Dense` kernel, e.g. query [D, H, K]) computes
x W + (alpha / rank) * dropout(x) A B, with A [in..., rank] drawn like PEFT's default (uniform with bound
1/sqrt(fan_in)) and B [rank, out...] zero, so the adapted model equals the base model until B moves. A and
B carry the kernel's logical axes on their in / out dimensions and "lora_rank" on the rank dimension (never
sharded), so they shard like everything else; a scanned stack stacks them on its "layers" axis.

Targets are the projection names of our models. Their Hugging Face names (what PEFT's target_modules holds):

    ours     query   key     value   out     wi_0       wi_1     wo
    LLaMA    q_proj  k_proj  v_proj  o_proj  gate_proj  up_proj  down_proj
    T5       q       k       v       o       wi_0       wi_1     wo

In T5 a target applies to every attention that has it (encoder self-attention, decoder self- and
cross-attention), as PEFT's target_modules does.

Why a small wrapper and not qwix (MaxText's LoRA; its 0.1.8 source read, not run here): qwix finds the weight
of a matmul by intercepting `dot_general` / `einsum` and matching its right operand to a param, but our
projections reach the dot as a cast, reshaped copy inside a custom_vjp (`layers._matmul`, the CPU fast path),
where that match would fail; its LoRA dropout runs whenever the rate is non-zero, with no switch for inference; and
the PEFT export needs A and B laid out as the kernel's (in, out) split, which is simplest when we create
them. The adapter is ~20 lines in `layers.Dense`; the tree functions below are what the trainer needs.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp

from instruct_jax import errors

TARGETS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")
ADAPTER_LEAVES = ("lora_a", "lora_b")


class LoraError(errors.UserError, ValueError):
  """LoRA settings that cannot be used (the message names the config key)."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float = 16.0
  dropout: float = 0.0  # on the adapter's input, in training only
  targets: tuple[str, ...] = ("query", "value")

  def __post_init__(self):
    check(self.rank, self.alpha, self.dropout, self.targets, lambda k: k)
    object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in self.targets))  # one order, no repeats

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def check(rank, alpha, dropout, targets, key, aliases: Mapping[str, str] | None = None) -> None:
  """One-line errors naming `key(field)` (e.g. "config.model.lora.rank") for settings LoRA cannot take; `aliases`
  ({a checkpoint's module name: our projection name}, e.g. "q_proj": "query") turn a foreign name into a hint."""
  if not isinstance(rank, int) or rank < 1:
    raise LoraError(f"{key('rank')}={rank!r}: the adapter rank must be a positive integer (0 turns LoRA off)")
  if not alpha > 0:
    raise LoraError(f"{key('alpha')}={alpha!r}: must be positive (the adapter output is scaled by alpha / rank)")
  if not 0 <= dropout < 1:
    raise LoraError(f"{key('dropout')}={dropout!r}: must be in [0, 1)")
  if isinstance(targets, str) or not targets:
    raise LoraError(f"{key('targets')}={targets!r}: expected a non-empty tuple of projection names from {TARGETS}")
  for t in targets:
    if t not in TARGETS:
      hint = (aliases or {}).get(t)
      close = [hint] if hint else difflib.get_close_matches(str(t), TARGETS, n=1)
      raise LoraError(f"{key('targets')}: unknown projection {t!r}; choose from {TARGETS}"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))


def from_section(section, key=lambda k: f"config.model.lora.{k}", aliases: Mapping[str, str] | None = None
                 ) -> LoraConfig | None:
  """The LoRA config of a config.model.lora section (None when rank is 0); `aliases` as `check`'s."""
  if section.rank == 0:
    return None
  targets = section.targets
  targets = tuple(t.strip() for t in (targets.split(",") if isinstance(targets, str) else
                                      [part for t in targets for part in str(t).split(",")]) if t.strip())
  check(section.rank, section.alpha, section.dropout, targets, key, aliases)  # "query,value" from a flag is two targets
  return LoraConfig(int(section.rank), float(section.alpha), float(section.dropout), targets)


# ---------------------------------------------------------------- parameter trees

def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree)


def is_adapter(path: tuple) -> bool:
  return path[-1] in ADAPTER_LEAVES


def trainable(tree, lora: LoraConfig | None):
  """The adapter subtree of a params-shaped tree (params, shardings, shapes) when LoRA is on, else the tree."""
  if lora is None:
    return tree
  return flax.traverse_util.unflatten_dict({p: v for p, v in _flat(tree).items() if is_adapter(p)})


def base(tree):
  """Every leaf of a params-shaped tree that is not an adapter."""
  return flax.traverse_util.unflatten_dict({p: v for p, v in _flat(tree).items() if not is_adapter(p)})


def with_trainable(tree, sub, lora: LoraConfig | None):
  """`tree` with the leaves of `sub` (from `trainable`) in place of its own."""
  if lora is None:
    return sub
  flat = _flat(tree)
  new = _flat(sub)
  if not set(new) <= set(flat):
    raise ValueError(f"not a subtree of the params: {sorted(set(new) - set(flat))[:3]}")
  return flax.traverse_util.unflatten_dict({**flat, **new})


def combine(base_params, adapters):
  """One params tree from a base model's params and adapters (from `trainable`) that it lacks."""
  flat, new = _flat(base_params), _flat(adapters)
  if set(flat) & set(new) or not all(is_adapter(p) for p in new):
    raise ValueError("combine takes a base model's params and adapter leaves (lora_a, lora_b) only")
  return flax.traverse_util.unflatten_dict({**flat, **new})


def overlay_base(params, weights):
  """`params` (with adapters) whose base leaves are replaced by `weights` (a base model's params)."""
  flat, new = _flat(params), _flat(weights)
  want = {p for p in flat if not is_adapter(p)}
  if set(new) != want:
    extra, missing = sorted(set(new) - want), sorted(want - set(new))
    raise ValueError(f"base weights do not fit the model (extra: {extra[:3]}, missing: {missing[:3]})")
  return flax.traverse_util.unflatten_dict({**flat, **new})


def delta(a, b, kernel_ndim: int) -> jax.Array:
  """A @ B in the kernel's shape: A [lead..., in..., r], B [lead..., r, out...] (lead: a scanned layer axis)."""
  n_lead = a.ndim + b.ndim - 2 - kernel_ndim
  n_in = a.ndim - 1 - n_lead
  letters = "abcdefghijklmnopq"
  lead, ins, outs = letters[:n_lead], letters[n_lead:n_lead + n_in], letters[n_lead + n_in:kernel_ndim]
  return jnp.einsum(f"{lead}{ins}z,{lead}z{outs}->{lead}{ins}{outs}", a.astype(jnp.float32), b.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def merge(config, params):
  """(config without LoRA, params with every adapter folded into its kernel: W + alpha/rank * A @ B)."""
  lora = config.lora
  if lora is None:
    return config, params
  flat = _flat(params)
  out = {p: v for p, v in flat.items() if not is_adapter(p)}
  for p in flat:
    if p[-1] == "lora_a":
      k = p[:-1] + ("kernel",)
      kernel = flat[k]
      out[k] = (kernel.astype(jnp.float32) + lora.scale * delta(flat[p], flat[p[:-1] + ("lora_b",)], kernel.ndim)
                ).astype(kernel.dtype)
  return dataclasses.replace(config, lora=None), flax.traverse_util.unflatten_dict(out)
