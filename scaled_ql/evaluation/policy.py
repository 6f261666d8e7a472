"""Evaluation policies: the multi-game network's greedy action, one jitted function for all games.

A greedy policy maps stacked observations [B, 84, 84, 4] uint8 and game indices [B] int32 (into
the evaluated game list) to minimal-set action indices [B]. The network's backbone is applied to
the whole batch and each example takes its own game's head (the head's block_size=1 path), so
any mix of games is one batch and one compilation; the game indices are data.
The action maximises, over the game's legal action slots only,
  - C51 ("c51"): the mean of the return distribution, Q(s, a) = sum_i softmax(logits)_i z_i;
  - HL-Gauss ("hl_gauss"): the same mean, over the bin centres (`losses.value_support`);
  - MSE TD ("mse"): the scalar Q(s, a) the network outputs;
  - behaviour cloning ("bc"): the policy logit (argmax of softmax = argmax of logits).
Exploration (epsilon) is not here: the rollout applies it per env with its own seeded
generator (`rollout.run_episodes`), so an env's episodes do not depend on its batch neighbours.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaled_ql import games as games_lib
from scaled_ql import losses

# greedy(observation [B, 84, 84, 4] uint8, game_index [B] int32) -> actions [B] int.
GreedyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def action_values(loss_kind: str, logits, support=None):
  """The values the greedy action maximises: [B, A, K] logits -> [B, A]; support: the kind's
  `losses.value_support` (distributional kinds only)."""
  if loss_kind in losses.DISTRIBUTIONAL_KINDS:
    return losses.mean_q(logits, support)
  if loss_kind in ("mse", "bc"):
    return logits[..., 0]
  raise ValueError(f"loss kind {loss_kind!r} has no policy; choose one of {losses.LOSS_KINDS}.")


def head_indices(head_games: Sequence[str], games: Sequence[str]) -> np.ndarray:
  """[len(games)] int32: each evaluated game's head; a game without a head is an error."""
  heads = [games_lib.get_game(g).name for g in head_games]
  missing = [g for g in games if games_lib.get_game(g).name not in heads]
  if missing:
    raise ValueError(f"game(s) {missing} have no head in this network: it was trained on "
                     f"{heads}. A game outside that list needs fine-tuning (a new head) first.")
  return np.array([heads.index(games_lib.get_game(g).name) for g in games], np.int32)


@functools.lru_cache(maxsize=16)
def _compiled_greedy(model, loss_kind: str, heads: tuple[int, ...], games: tuple[str, ...],
                     v_min: float, v_max: float) -> Callable:
  """greedy(params, observation, game_index), jitted; cached so that periodic evaluations of
  the same network reuse one compilation."""
  heads = jnp.asarray(heads, jnp.int32)
  legal = jnp.asarray(games_lib.legal_action_mask(games))
  support = losses.value_support(loss_kind, v_min, v_max, model.num_atoms)

  @jax.jit
  def greedy(params, observation, game_index):
    logits = model.apply({"params": params}, observation, heads[game_index], 1).logits
    q = action_values(loss_kind, logits, support)
    return jax.vmap(losses.masked_argmax)(q, legal[game_index])

  return greedy


def make_greedy_policy(model, params: Any, *, loss_kind: str, head_games: Sequence[str],
                       games: Sequence[str], v_min: float = -10.0,
                       v_max: float = 10.0) -> GreedyFn:
  """The greedy policy of `model` with `params` on `games` (each must be one of `head_games`).

  Compiled once per batch size; every game of `games` shares the compilation.
  """
  if loss_kind not in losses.LOSS_KINDS:
    raise ValueError(f"loss kind {loss_kind!r} has no policy; choose one of {losses.LOSS_KINDS}.")
  games = tuple(games_lib.get_game(g).name for g in games)
  heads = tuple(int(h) for h in head_indices(head_games, games))
  greedy = _compiled_greedy(model, loss_kind, heads, games, float(v_min), float(v_max))

  def policy(observation: np.ndarray, game_index: np.ndarray) -> np.ndarray:
    return np.asarray(greedy(params, observation, np.asarray(game_index, np.int32)))

  return policy


def fixed_action_policy(action: int) -> GreedyFn:
  """Always the same minimal-set action index (a policy with a known score, for tests)."""
  def policy(observation: np.ndarray, game_index: np.ndarray) -> np.ndarray:
    del game_index
    return np.full(len(observation), action, np.int64)
  return policy
