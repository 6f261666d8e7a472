"""The train state and the jitted update step of Scaled Q-Learning (single-program form).

One update: online logits at s, target-network logits at s', the loss of `config.loss.kind`
(C51 + alpha * CQL by default; MSE TD, HL-Gauss or BC) over each example's legal actions, an
Adam step, and the target network copied every `target_update_period` steps
(optax.periodic_update).

`jit_update` compiles the update over a (data, model) device mesh (`scaled_ql.parallel`): the
batch split over `data`, large parameters and their Adam moments split over `model`, the train
state donated so it is updated in place.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scaled_ql import losses, networks, parallel
from scaled_ql.data.batch import Batch


class TrainState(NamedTuple):
  params: Any
  target_params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar: gradient steps taken.
  rng: jax.Array


def make_optimizer(optimizer_config, heads_only: bool = False) -> optax.GradientTransformation:
  """Adam (lr, eps from the config), with global-norm clipping when grad_clip_norm > 0.

  heads_only: only the per-game heads are trained (a frozen backbone, for fine-tuning); the
  backbone's updates are zero and it keeps no Adam moments.
  """
  adam = optax.adam(optimizer_config.learning_rate, eps=optimizer_config.adam_eps)
  if optimizer_config.grad_clip_norm > 0:
    adam = optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adam)
  if not heads_only:
    return adam

  def labels(params):
    return {name: jax.tree_util.tree_map(lambda _, n=name: "train" if n == networks.HEAD
                                         else "frozen", subtree)
            for name, subtree in params.items()}

  return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def init_train_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
  return TrainState(params, jax.tree_util.tree_map(jnp.copy, params), optimizer.init(params),
                    jnp.zeros((), jnp.int32), rng)


def make_update_fn(model, optimizer: optax.GradientTransformation, loss_config,
                   legal_mask, target_update_period: int, block_size: int = 1) -> Callable:
  """update(state, batch) -> (state, metrics); pure, for jax.jit with the state donated.

  legal_mask: [num_games, 18] bool, row g = the legal action slots of config.games[g].
  """
  legal_mask = jnp.asarray(legal_mask)
  kind = loss_config.kind
  support = losses.value_support(kind, loss_config.v_min, loss_config.v_max, model.num_atoms)

  def loss_fn(params, target_params, batch: Batch):
    online = model.apply({"params": params}, batch.observation, batch.game_id, block_size)
    target = model.apply({"params": target_params}, batch.next_observation, batch.game_id,
                         block_size)
    out = losses.scaled_ql_loss(kind, online.logits, jax.lax.stop_gradient(target.logits),
                                batch.action, batch.reward, batch.discount,
                                legal_mask[batch.game_id], support, loss_config.cql_alpha)
    return out.loss, out

  def update(state: TrainState, batch: Batch):
    grads, out = jax.grad(loss_fn, has_aux=True)(state.params, state.target_params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    target_params = optax.periodic_update(params, state.target_params, step, target_update_period)
    metrics = dict(loss=out.loss, td_loss=out.td, cql_penalty=out.cql, q_data=out.q_data,
                   q_logsumexp=out.q_logsumexp, grad_norm=optax.tree_utils.tree_norm(grads))
    return TrainState(params, target_params, opt_state, step, state.rng), metrics

  return update


def create_train_state(model, optimizer: optax.GradientTransformation, rng,
                       shardings=None, initial_params=None) -> TrainState:
  """A fresh train state, built directly in its shardings (no host-side copy of the model).

  shardings: a TrainState-shaped pytree of NamedShardings (see `state_shardings`), or None for
  the default device. initial_params: a pytree of arrays replacing parts of the random
  initialisation, either whole top-level subtrees ({"torso": ..., "projection": ...}: a
  pre-trained backbone) or, under "head", {"rows": int array [k], "kernel": [k, D, A*K],
  "bias": [k, A*K]} to overwrite those games' rows of the head (heads kept from pre-training).
  Shapes are checked against the model's.
  """
  initial_params = dict(initial_params or {})
  if initial_params:
    shapes = networks.param_shapes(model)
    unknown = sorted(set(initial_params) - set(shapes))
    if unknown:
      raise ValueError(f"initial parameters for {unknown}: the model has {sorted(shapes)}.")
    networks.check_param_shapes({k: v for k, v in shapes.items() if k in initial_params
                                 and k != networks.HEAD},
                                {k: v for k, v in initial_params.items() if k != networks.HEAD},
                                source="initial parameters")

  def init(key, overrides):
    params_key, state_key = jax.random.split(key)
    params = dict(networks.init_params(model, params_key))
    head = overrides.pop(networks.HEAD, None)
    params.update(overrides)
    if head is not None:
      params[networks.HEAD] = {
          name: params[networks.HEAD][name].at[head["rows"]].set(head[name])
          for name in ("kernel", "bias")}
    return init_train_state(params, optimizer, state_key)

  return jax.jit(init, out_shardings=shardings)(rng, initial_params)


def abstract_train_state(model, optimizer: optax.GradientTransformation) -> TrainState:
  """The train state's shapes and dtypes, without allocating it."""
  return jax.eval_shape(lambda: init_train_state(
      networks.init_params(model, jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(0)))


def state_shardings(mesh, abstract_state: TrainState, min_size: int = 2**18) -> TrainState:
  """Parameters, target parameters and Adam moments sharded alike; scalars replicated."""
  return parallel.state_shardings(mesh, abstract_state, min_size)


def jit_update(update_fn: Callable, mesh, shardings: TrainState) -> Callable:
  """jax.jit of `update_fn` over the mesh: state in its shardings (donated), batch over `data`,
  metrics replicated."""
  return jax.jit(update_fn,
                 in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=0)
