"""Losses of Scaled Q-Learning and the variants the paper compares, as pure functions.

Each loss is written for ONE example and `jax.vmap`'d over the batch (the `batched_*` forms).
Shapes per example: logits [A, K] (A = 18 action slots, K atoms), q [A], legal [A] bool.

- C51 cross-entropy TD loss (Bellemare et al. 2017) with n-step targets from the target network;
  the next action is the argmax of the target network's mean Q over the game's legal actions.
- CQL penalty (Kumar et al. 2020, the CQL(H) form): logsumexp over legal actions of Q(s, .)
  minus Q(s, a_data), with Q the mean of the categorical distribution, weighted by alpha.
- MSE TD loss: the same target with a scalar Q per action (the paper shows it scales worse).
- BC: cross-entropy of a policy over legal actions on the data action.
- HL-Gauss (Farebrother et al. 2024, "Stop Regressing", arXiv 2403.03950): the scalar n-step
  target (the target network's categorical mean at the greedy legal next action) spread into a
  histogram over K bins of [v_min, v_max] by a Gaussian of sigma = 0.75 bin widths, and the
  cross-entropy of the online logits against it. Q = the mean over the bin centres. CQL as
  for C51.

Rewards are clipped to [-1, 1] before n-step returns are summed (`n_step_return`). A target is
built from `reward` = the n-step clipped discounted return and `discount` = gamma^k * (1 - done),
where k is the number of steps summed; a transition whose episode ended stops bootstrapping.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOSS_KINDS = ("c51", "mse", "bc", "hl_gauss")
DISTRIBUTIONAL_KINDS = ("c51", "hl_gauss")  # K > 1 logits per action, Q = mean over a support.
# [HLG] Farebrother et al. 2024: sigma / bin width = 0.75, the ratio the paper recommends and
# uses in its Atari experiments.
HL_GAUSS_SIGMA_RATIO = 0.75


def make_support(v_min: float, v_max: float, num_atoms: int) -> jax.Array:
  """The C51 atoms z_i, evenly spaced in [v_min, v_max]."""
  if not v_min < v_max or num_atoms < 2:
    raise ValueError(f"a C51 support needs v_min < v_max and >= 2 atoms, got v_min={v_min}, "
                     f"v_max={v_max}, num_atoms={num_atoms}.")
  return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def bin_centers(v_min: float, v_max: float, num_bins: int) -> jax.Array:
  """HL-Gauss's support: the centres of `num_bins` equal bins tiling [v_min, v_max]."""
  if not v_min < v_max or num_bins < 2:
    raise ValueError(f"an HL-Gauss support needs v_min < v_max and >= 2 bins, got "
                     f"v_min={v_min}, v_max={v_max}, num_atoms={num_bins}.")
  edges = jnp.linspace(v_min, v_max, num_bins + 1, dtype=jnp.float32)
  return (edges[:-1] + edges[1:]) / 2


def value_support(kind: str, v_min: float, v_max: float, num_atoms: int):
  """The values Q averages over for loss `kind`: C51's atoms, HL-Gauss's bin centres, or None
  for the scalar kinds ("mse", "bc")."""
  if kind == "c51":
    return make_support(v_min, v_max, num_atoms)
  if kind == "hl_gauss":
    return bin_centers(v_min, v_max, num_atoms)
  return None


def project_distribution(target_support, probabilities, support):
  """Projects a distribution on `target_support` onto the evenly spaced `support`.

  Bellemare et al. 2017, eq. 7, in closed form:
    (Phi T z)_i = sum_j [ 1 - |clip(T z_j, v_min, v_max) - z_i| / dz ]_0^1 * p_j
  target_support [K'] (e.g. r + gamma^n z), probabilities [K'], support [K]. Returns [K].
  Mass is conserved: every clipped target atom splits its mass between its two neighbours.
  """
  v_min, v_max = support[0], support[-1]
  delta_z = support[1] - support[0]
  clipped = jnp.clip(target_support, v_min, v_max)
  weights = jnp.clip(1.0 - jnp.abs(clipped[None, :] - support[:, None]) / delta_z, 0.0, 1.0)
  return weights @ probabilities


def mean_q(logits, support):
  """Q = E[Z] under softmax(logits): [..., K] -> [...]."""
  return jax.nn.softmax(logits, axis=-1) @ support


def masked_argmax(q, legal):
  """argmax over legal actions only; illegal actions never win, even at -inf or NaN."""
  return jnp.argmax(jnp.where(legal, q, -jnp.inf))


def masked_max(q, legal):
  return jnp.max(jnp.where(legal, q, -jnp.inf))


def masked_logsumexp(q, legal):
  """logsumexp over legal actions only (illegal entries contribute exactly zero mass)."""
  return jax.nn.logsumexp(jnp.where(legal, q, -jnp.inf))


def n_step_return(rewards, terminals, valid, gamma: float):
  """Clipped n-step return of one transition and the discount to bootstrap with.

  rewards [n] (r_t .. r_{t+n-1}); terminals [n]: step i ended the episode (no value after it);
  valid [n]: step i exists (False past the end of a truncated episode or of the data).
  Returns (sum_i gamma^i clip(r_i) over the steps up to and including the first terminal,
           gamma^k * (1 - terminated)) with k the number of steps summed.
  """
  rewards = jnp.clip(jnp.asarray(rewards, jnp.float32), -1.0, 1.0)
  terminals = jnp.asarray(terminals, bool)
  valid = jnp.asarray(valid, bool)
  # alive[i]: no terminal before step i and step i exists (valid is a prefix).
  ended_before = jnp.concatenate([jnp.zeros((1,), bool), jnp.cumsum(terminals) > 0])[:-1]
  alive = valid & ~ended_before
  powers = gamma ** jnp.arange(rewards.shape[0], dtype=jnp.float32)
  ret = jnp.sum(jnp.where(alive, powers * rewards, 0.0))
  steps = jnp.sum(alive)
  terminated = jnp.any(alive & terminals)
  return ret, jnp.where(terminated, 0.0, gamma ** steps.astype(jnp.float32))


def c51_td_loss(logits, action, next_target_logits, reward, discount, legal, support):
  """Cross-entropy between the projected n-step target distribution and the online one."""
  next_probs = jax.nn.softmax(next_target_logits, axis=-1)  # [A, K]
  next_action = masked_argmax(next_probs @ support, legal)
  target = project_distribution(reward + discount * support, next_probs[next_action], support)
  target = jax.lax.stop_gradient(target)
  return -jnp.sum(target * jax.nn.log_softmax(logits[action]))


def hl_gauss_target(target, support, sigma):
  """The histogram of N(target, sigma^2) over the bins centred on `support` (equal widths),
  renormalised to the mass inside [v_min, v_max]: [K].

  [HLG] Appendix A: p_i = (Phi(e_{i+1}) - Phi(e_i)) / (Phi(e_K) - Phi(e_0)) over the bin edges
  e_0..e_K, with Phi(x) = erf((x - target) / (sqrt(2) sigma)) (the 1/2 of the CDF cancels).
  The target is clipped into [v_min, v_max] first, as C51 clips its target atoms: far outside
  the range the in-range mass underflows to 0 and the ratio would be 0 / 0.
  """
  width = support[1] - support[0]
  edges = jnp.concatenate([support - width / 2, support[-1:] + width / 2])
  target = jnp.clip(target, edges[0], edges[-1])
  cdf = jax.lax.erf((edges - target) / (jnp.sqrt(2.0) * sigma))
  return (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])


def hl_gauss_td_loss(logits, action, next_target_logits, reward, discount, legal, support):
  """Cross-entropy between the HL-Gauss histogram of the scalar n-step target and the online
  distribution at the data action. The target: reward + discount * (the target network's
  mean Q at its greedy legal next action)."""
  next_q = mean_q(next_target_logits, support)  # [A]
  target = reward + discount * masked_max(next_q, legal)
  sigma = HL_GAUSS_SIGMA_RATIO * (support[1] - support[0])
  probs = jax.lax.stop_gradient(hl_gauss_target(target, support, sigma))
  return -jnp.sum(probs * jax.nn.log_softmax(logits[action]))


def cql_penalty(q, action, legal):
  """logsumexp_{a legal} Q(s, a) - Q(s, a_data)."""
  return masked_logsumexp(q, legal) - q[action]


def mse_td_loss(q, action, next_target_q, reward, discount, legal):
  """0.5 * (Q(s, a) - (R + discount * max_{a' legal} Q_target(s', a')))^2."""
  target = jax.lax.stop_gradient(reward + discount * masked_max(next_target_q, legal))
  return 0.5 * jnp.square(q[action] - target)


def bc_loss(logits, action, legal):
  """-log pi(a_data | s), pi = softmax over legal actions."""
  return -jax.nn.log_softmax(jnp.where(legal, logits, -jnp.inf))[action]


batched_c51_td_loss = jax.vmap(c51_td_loss, in_axes=(0, 0, 0, 0, 0, 0, None))
batched_hl_gauss_td_loss = jax.vmap(hl_gauss_td_loss, in_axes=(0, 0, 0, 0, 0, 0, None))
batched_cql_penalty = jax.vmap(cql_penalty)
batched_mse_td_loss = jax.vmap(mse_td_loss)
batched_bc_loss = jax.vmap(bc_loss)
batched_masked_logsumexp = jax.vmap(masked_logsumexp)


class LossOutput(NamedTuple):
  loss: jax.Array  # scalar: the mean over the batch of td + alpha * cql (or the BC loss).
  td: jax.Array  # mean TD (or BC) loss.
  cql: jax.Array  # mean CQL penalty (0 for BC).
  q_data: jax.Array  # mean Q(s, a_data).
  q_logsumexp: jax.Array  # mean logsumexp over legal actions of Q(s, .).


def scaled_ql_loss(kind: str, logits, next_target_logits, action, reward, discount, legal,
                   support, cql_alpha: float) -> LossOutput:
  """The total loss of one batch for the loss `kind`, with its parts for logging.

  logits, next_target_logits [B, A, K] (K = 1 for "mse" and "bc"); action [B] int;
  reward, discount [B] float (see module docstring); legal [B, A] bool; support [K]: the
  kind's `value_support` (None for "mse" and "bc").
  """
  if kind == "c51":
    q = mean_q(logits, support)
    td = batched_c51_td_loss(logits, action, next_target_logits, reward, discount, legal, support)
  elif kind == "hl_gauss":
    q = mean_q(logits, support)
    td = batched_hl_gauss_td_loss(logits, action, next_target_logits, reward, discount, legal,
                                  support)
  elif kind == "mse":
    q = logits[..., 0]
    td = batched_mse_td_loss(q, action, next_target_logits[..., 0], reward, discount, legal)
  elif kind == "bc":
    q = logits[..., 0]
    td = batched_bc_loss(q, action, legal)
  else:
    raise ValueError(f"loss.kind={kind!r} is not a loss; choose one of {LOSS_KINDS}.")
  q_data = jnp.take_along_axis(q, action[:, None], axis=1)[:, 0]
  lse = batched_masked_logsumexp(q, legal)
  cql = lse - q_data if kind != "bc" else jnp.zeros_like(q_data)
  total = jnp.mean(td) + cql_alpha * jnp.mean(cql)
  return LossOutput(total, jnp.mean(td), jnp.mean(cql), jnp.mean(q_data), jnp.mean(lse))


def check_loss_config(kind: str, num_atoms: int, cql_alpha: float, n_step: int,
                      gamma: float) -> None:
  """Raises a ValueError naming the field when `config.loss` / `config.model` disagree."""
  if kind not in LOSS_KINDS:
    raise ValueError(f"loss.kind={kind!r} is not a loss; choose one of {LOSS_KINDS}.")
  if kind in DISTRIBUTIONAL_KINDS and num_atoms < 2:
    raise ValueError(f"loss.kind={kind!r} needs model.num_atoms >= 2, got {num_atoms}.")
  if kind in ("mse", "bc") and num_atoms != 1:
    raise ValueError(f"loss.kind={kind!r} needs model.num_atoms=1 (a scalar per action), "
                     f"got {num_atoms}.")
  if cql_alpha < 0:
    raise ValueError(f"loss.cql_alpha must be >= 0, got {cql_alpha}.")
  if n_step < 1:
    raise ValueError(f"loss.n_step must be >= 1, got {n_step}.")
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"loss.gamma must lie in [0, 1], got {gamma}.")
