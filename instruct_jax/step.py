"""Train state born sharded, and the pure train step of an objective (jitted once, with shardings and donation).

The objective (objectives.py: SFT, ...) computes its step-wide normalisation before the forward pass (see
losses.py), so k microbatches of gradient accumulation give the same update as one batch k times the size.

With LoRA (config.lora of the model) only the adapters train: the optimizer state is built over
`model.trainable(params)` alone, gradients are taken with respect to that subtree, and the base parameters
pass through the step untouched (bitwise).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from instruct_jax import objectives, sharding
from instruct_jax.models import build

Batch = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  reference: Any = None  # a frozen copy of the starting parameters, for objectives that compare with them


def reference_params(model: build.Model, state: TrainState):
  """The reference model's parameters: the state's frozen copy, or with LoRA the base with its adapters off (no
  second copy is held); None when neither."""
  if state.reference is not None:
    return state.reference
  if model.config.lora is not None:
    return model.with_trainable(state.params, jax.tree.map(jnp.zeros_like, model.trainable(state.params)))
  return None


def needs_reference_copy(model: build.Model, objective) -> bool:
  """Whether the train state holds a frozen copy of the parameters: an objective with a reference model, trained
  without LoRA (LoRA's reference is its base)."""
  return objective.needs_reference and model.config.lora is None


def forward(model: build.Model, params, batch: Batch, *, dropout_rng=None, packed: bool = True) -> jax.Array:
  """fp32 logits [B, L, V] for the decoder targets of `batch` (`packed`: see `build.Model.apply`)."""
  return model.apply(params, batch, dropout_rng=dropout_rng, packed=packed)


def _init_state_fn(model: build.Model, tx: optax.GradientTransformation, reference: bool = False):
  def init_state(rng):
    params = nn.meta.unbox(model.init(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(model.trainable(params)),
                      reference=jax.tree.map(jnp.copy, params) if reference else None)
  return init_state


def abstract_train_state(model: build.Model, tx: optax.GradientTransformation, mesh, rules, rng,
                         reference: bool = False):
  """(state as ShapeDtypeStructs, its shardings); `mesh` may be an AbstractMesh (nothing is allocated). `reference`:
  the state holds a frozen copy of the parameters (`needs_reference_copy`)."""
  boxed = jax.eval_shape(model.init, rng)
  params_sh = sharding.param_shardings(boxed, mesh, rules)
  abstract = jax.eval_shape(_init_state_fn(model, tx, reference), rng)
  state_sh = TrainState(
      step=NamedSharding(mesh, P()), params=params_sh,
      opt_state=sharding.like_params_shardings(abstract.opt_state, model.trainable(abstract.params),
                                               model.trainable(params_sh), mesh),
      reference=params_sh if reference else None)
  return abstract, state_sh


def jit_init_state(model: build.Model, tx: optax.GradientTransformation, state_shardings):
  """rng -> the train state, jitted to create every array directly in its sharding (call it under the mesh)."""
  return jax.jit(_init_state_fn(model, tx, state_shardings.reference is not None), out_shardings=state_shardings)


def create_train_state(model: build.Model, tx: optax.GradientTransformation, mesh: Mesh, rules, rng,
                       reference: bool = False):
  """Parameters and optimizer state (and `reference`: a frozen copy of the parameters) created directly in their
  shardings; returns (state, shardings)."""
  _, state_sh = abstract_train_state(model, tx, mesh, rules, rng, reference)
  with jax.set_mesh(mesh):
    state = jit_init_state(model, tx, state_sh)(rng)
  return state, state_sh


def _split_microbatches(x, k: int):
  """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, j+k, ... (spread over the data devices)."""
  if x.shape[0] % k:
    raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={k}")
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def train_step(state: TrainState, batch: Batch, rng, *, model: build.Model, tx: optax.GradientTransformation,
               objective: objectives.Objective, schedule: Callable, mesh: Mesh, rules, num_microbatches: int = 1,
               packed: bool = True):
  """One optimizer step of `objective` (objectives.py); pure. Returns the new state and step metrics (the
  objective's sums, the loss, norms and the learning rate).

  packed=False: the batch rows hold one example each, padded at their end (data.pack=False), which lets the
  cuDNN attention take per-row lengths (`build.Model.apply`).
  """
  with sharding.activation_sharding(mesh, rules):
    per_row, shared = objective.prepare(batch)
    step_rng = jax.random.fold_in(rng, state.step)

    reference = reference_params(model, state) if objective.needs_reference else None

    def loss_fn(trainable, mb, mb_per_row, mb_rng):
      params = model.with_trainable(state.params, trainable)
      return objective.loss(model, params, mb, mb_per_row, shared,
                            dropout_rng=mb_rng if _has_dropout(model) else None, packed=packed, reference=reference)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    trainable = model.trainable(state.params)
    if num_microbatches == 1:
      (loss, sums), grads = grad_fn(trainable, batch, per_row, step_rng)
    else:
      micro = jax.tree.map(functools.partial(_split_microbatches, k=num_microbatches), (batch, per_row))

      def accumulate(carry, xs):
        j, (mb, mb_per_row) = xs
        (mb_loss, mb_sums), mb_grads = grad_fn(trainable, mb, mb_per_row, jax.random.fold_in(step_rng, j))
        return jax.tree.map(jnp.add, carry, (mb_loss, mb_sums, mb_grads)), None

      zeros = jax.tree.map(jnp.zeros_like, (jnp.zeros(()), objective.zero_metrics(), trainable))
      (loss, sums, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), micro))

    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    params = model.with_trainable(state.params, optax.apply_updates(trainable, updates))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
               "learning_rate": schedule(state.step), **sums}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _has_dropout(model: build.Model) -> bool:
  lora = model.config.lora
  return model.config.dropout_rate > 0 or (lora is not None and lora.dropout > 0)


def jit_train_step(model, tx, objective: objectives.Objective, schedule, mesh: Mesh, rules, state_shardings,
                   num_microbatches: int = 1, packed: bool = True):
  """The train step of `objective` jitted once with explicit in/out shardings and the state donated."""
  replicated = NamedSharding(mesh, P())
  step = functools.partial(train_step, model=model, tx=tx, objective=objective, schedule=schedule, mesh=mesh,
                           rules=rules, num_microbatches=num_microbatches, packed=packed)
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))
