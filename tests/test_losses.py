"""Losses against independent float64 NumPy references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaled_ql import losses


def reference_projection(target_atoms, probs, support):
  """C51's Algorithm 1 (Bellemare et al. 2017), atom by atom, in float64."""
  target_atoms = np.asarray(target_atoms, np.float64)
  support = np.asarray(support, np.float64)
  v_min, v_max, k = support[0], support[-1], len(support)
  dz = (v_max - v_min) / (k - 1)
  m = np.zeros(k)
  for tz, p in zip(target_atoms, probs):
    tz = min(max(tz, v_min), v_max)
    b = (tz - v_min) / dz
    lo, hi = int(np.floor(b)), int(np.ceil(b))
    # Guard float noise at the edges (b = k-1 + 1e-12).
    lo, hi = min(max(lo, 0), k - 1), min(max(hi, 0), k - 1)
    if lo == hi:
      m[lo] += p
    else:
      m[lo] += p * (hi - b)
      m[hi] += p * (b - lo)
  return m


def softmax64(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
def test_projection_matches_bruteforce_reference(seed):
  rng = np.random.default_rng(seed)
  k = int(rng.integers(3, 60))
  v_min = float(rng.uniform(-30, -1))
  v_max = float(rng.uniform(1, 30))
  support = np.linspace(v_min, v_max, k).astype(np.float32)
  probs = softmax64(rng.normal(size=k) * 3)
  for reward, done, n in [(0.0, False, 1), (rng.uniform(-3, 3), False, 3),
                          (rng.uniform(-3, 3), True, 3), (50.0, False, 5), (-50.0, False, 2),
                          (v_max + 1.0, True, 1)]:
    discount = 0.0 if done else 0.99**n
    target_atoms = reward + discount * support.astype(np.float64)
    want = reference_projection(target_atoms, probs, support)
    got = np.asarray(losses.project_distribution(
        jnp.asarray(target_atoms, jnp.float32), jnp.asarray(probs, jnp.float32),
        jnp.asarray(support)))
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert abs(got.sum() - 1.0) < 1e-5  # Mass conserved.
    assert (got >= 0).all()


def test_projection_of_terminal_is_a_point_mass_split_between_neighbours():
  support = losses.make_support(-10, 10, 51)  # dz = 0.4
  probs = jnp.full((51,), 1 / 51)
  got = np.asarray(losses.project_distribution(jnp.full((51,), 0.5), probs, support))
  # 0.5 lies a quarter of the way from atom 26 (0.4) to atom 27 (0.8).
  np.testing.assert_allclose(got[26], 0.75, atol=1e-5)
  np.testing.assert_allclose(got[27], 0.25, atol=1e-5)
  assert np.isclose(got.sum(), 1.0)


def reference_n_step(rewards, terminals, valid, gamma):
  ret, k = 0.0, 0
  for r, t, v in zip(rewards, terminals, valid):
    if not v:
      break
    ret += gamma**k * np.clip(r, -1, 1)
    k += 1
    if t:
      return ret, 0.0
  return ret, gamma**k


@pytest.mark.parametrize("seed", range(5))
def test_n_step_return_clips_and_stops_at_terminals(seed):
  rng = np.random.default_rng(seed)
  for _ in range(20):
    n = int(rng.integers(1, 6))
    rewards = rng.choice([-5.0, -1.0, -0.3, 0.0, 0.5, 1.0, 7.0], size=n)
    terminals = rng.random(n) < 0.3
    valid = np.arange(n) < rng.integers(1, n + 1)
    want = reference_n_step(rewards, terminals, valid, 0.99)
    got = losses.n_step_return(rewards, terminals, valid, 0.99)
    np.testing.assert_allclose([float(got[0]), float(got[1])], want, rtol=1e-6, atol=1e-6)


def random_batch(rng, batch=16, actions=18, atoms=11):
  logits = rng.normal(size=(batch, actions, atoms)).astype(np.float32)
  next_logits = rng.normal(size=(batch, actions, atoms)).astype(np.float32) * 2
  counts = rng.integers(3, actions + 1, size=batch)
  legal = np.arange(actions)[None] < counts[:, None]
  action = np.array([rng.integers(0, c) for c in counts])
  reward = rng.uniform(-2, 2, size=batch).astype(np.float32)
  discount = np.where(rng.random(batch) < 0.3, 0.0, 0.99**3).astype(np.float32)
  return logits, next_logits, legal, action, reward, discount


def test_c51_loss_matches_reference_and_ignores_illegal_actions():
  rng = np.random.default_rng(0)
  logits, next_logits, legal, action, reward, discount = random_batch(rng)
  support = np.linspace(-10, 10, logits.shape[-1]).astype(np.float32)
  # Make an illegal action look best for the target network: it must never be chosen.
  next_logits[:, -1, -1] = 50.0
  legal[:, -1] = False
  got = np.asarray(losses.batched_c51_td_loss(logits, action, next_logits, reward, discount,
                                              legal, support))
  for i in range(len(action)):
    p_next = softmax64(next_logits[i])
    q_next = p_next @ support
    q_next[~legal[i]] = -np.inf
    a_star = int(np.argmax(q_next))
    assert legal[i, a_star]
    target = reference_projection(reward[i] + discount[i] * support.astype(np.float64),
                                  p_next[a_star], support)
    log_p = np.log(softmax64(logits[i, action[i]]))
    np.testing.assert_allclose(got[i], -(target * log_p).sum(), rtol=1e-4)


def test_cql_penalty_matches_reference_over_legal_actions_only():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(32, 18)).astype(np.float32) * 3
  counts = rng.integers(3, 19, size=32)
  legal = np.arange(18)[None] < counts[:, None]
  action = np.array([rng.integers(0, c) for c in counts])
  q_poisoned = np.where(legal, q, 1e6).astype(np.float32)  # Huge illegal values must not count.
  got = np.asarray(losses.batched_cql_penalty(q_poisoned, action, legal))
  for i in range(32):
    ql = q[i, legal[i]].astype(np.float64)
    want = np.log(np.exp(ql - ql.max()).sum()) + ql.max() - q[i, action[i]]
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    assert got[i] >= -1e-6  # logsumexp >= any of its terms.


def test_masked_argmax_never_picks_illegal_even_with_inf_or_nan():
  q = jnp.array([0.1, 0.3, jnp.inf, jnp.nan, 100.0])
  legal = jnp.array([True, True, False, False, False])
  assert int(losses.masked_argmax(q, legal)) == 1
  assert float(losses.masked_max(q, legal)) == pytest.approx(0.3)
  assert float(losses.masked_logsumexp(q, legal)) == pytest.approx(np.log(np.exp(0.1) + np.exp(0.3)))


def test_mse_and_bc_match_references():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(8, 18)).astype(np.float32)
  next_q = rng.normal(size=(8, 18)).astype(np.float32)
  legal = np.arange(18)[None] < np.array([3, 4, 6, 18, 9, 10, 5, 7])[:, None]
  next_q[~legal] = 1e3
  action = np.array([0, 3, 5, 17, 8, 1, 4, 6])
  reward = rng.normal(size=8).astype(np.float32)
  discount = np.full(8, 0.97, np.float32)
  got = np.asarray(losses.batched_mse_td_loss(q, action, next_q, reward, discount, legal))
  best = np.where(legal, next_q, -np.inf).max(1)
  want = 0.5 * (q[np.arange(8), action] - (reward + discount * best)) ** 2
  np.testing.assert_allclose(got, want, rtol=1e-5)
  logits = np.where(legal, q, 1e3).astype(np.float32)
  got_bc = np.asarray(losses.batched_bc_loss(logits, action, legal))
  for i in range(8):
    ql = q[i, legal[i]].astype(np.float64)
    want_bc = np.log(np.exp(ql).sum()) - q[i, action[i]]
    np.testing.assert_allclose(got_bc[i], want_bc, rtol=1e-5)


@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_total_loss_gradients_never_reach_illegal_actions(kind):
  rng = np.random.default_rng(3)
  atoms = 11 if kind in losses.DISTRIBUTIONAL_KINDS else 1
  logits, next_logits, legal, action, reward, discount = random_batch(rng, atoms=atoms)
  support = losses.value_support(kind, -10, 10, atoms)

  def total(lg):
    return losses.scaled_ql_loss(kind, lg, next_logits, action, reward, discount, legal,
                                 support, cql_alpha=0.5).loss

  grad = np.asarray(jax.grad(total)(jnp.asarray(logits)))
  assert np.isfinite(grad).all()
  assert np.all(grad[~legal] == 0.0)
  assert np.abs(grad[legal]).sum() > 0


def test_c51_gradient_is_softmax_minus_target():
  """d CE / d logits = softmax(logits) - target at the data action: the loss really is a CE."""
  support = losses.make_support(-10, 10, 51)
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(18, 51)), jnp.float32)
  next_logits = jnp.asarray(rng.normal(size=(18, 51)), jnp.float32)
  legal = jnp.arange(18) < 6
  grad = jax.grad(losses.c51_td_loss)(logits, 2, next_logits, 0.7, 0.99, legal, support)
  next_probs = jax.nn.softmax(next_logits)
  a_star = losses.masked_argmax(next_probs @ support, legal)
  target = losses.project_distribution(0.7 + 0.99 * support, next_probs[a_star], support)
  np.testing.assert_allclose(grad[2], jax.nn.softmax(logits[2]) - target, atol=1e-6)
  assert float(jnp.abs(grad).sum() - jnp.abs(grad[2]).sum()) == 0.0


def test_scaled_ql_loss_parts_add_up():
  rng = np.random.default_rng(5)
  logits, next_logits, legal, action, reward, discount = random_batch(rng)
  support = losses.make_support(-10, 10, 11)
  out = losses.scaled_ql_loss("c51", logits, next_logits, action, reward, discount, legal,
                              support, cql_alpha=0.3)
  np.testing.assert_allclose(out.loss, out.td + 0.3 * out.cql, rtol=1e-6)
  np.testing.assert_allclose(out.cql, out.q_logsumexp - out.q_data, rtol=1e-5, atol=1e-6)


def test_bad_loss_configs_name_the_field():
  with pytest.raises(ValueError, match="loss.kind"):
    losses.check_loss_config("dqn", 51, 0.1, 3, 0.99)
  with pytest.raises(ValueError, match="num_atoms"):
    losses.check_loss_config("mse", 51, 0.1, 3, 0.99)
  with pytest.raises(ValueError, match="num_atoms"):
    losses.check_loss_config("c51", 1, 0.1, 3, 0.99)
  with pytest.raises(ValueError, match="cql_alpha"):
    losses.check_loss_config("c51", 51, -1.0, 3, 0.99)
  with pytest.raises(ValueError, match="num_atoms"):
    losses.check_loss_config("hl_gauss", 1, 0.1, 3, 0.99)
  losses.check_loss_config("hl_gauss", 51, 0.1, 3, 0.99)
  with pytest.raises(ValueError, match="v_min"):
    losses.make_support(1.0, -1.0, 51)


# -- HL-Gauss (Farebrother et al. 2024), against a reference written from the paper. -----------
def reference_hl_gauss(target, v_min, v_max, num_bins, sigma_ratio=0.75):
  """Bins of width w = (v_max - v_min) / num_bins; p_i = the mass of N(target, (0.75 w)^2) in
  bin i over the mass in [v_min, v_max] (the paper's Appendix A), from math.erf, float64."""
  w = (v_max - v_min) / num_bins
  sigma = sigma_ratio * w
  target = min(max(float(target), v_min), v_max)
  cdf = [0.5 * (1 + math.erf((v_min + i * w - target) / (math.sqrt(2) * sigma)))
         for i in range(num_bins + 1)]
  return np.diff(cdf) / (cdf[-1] - cdf[0]), v_min + w * (np.arange(num_bins) + 0.5)


def test_hl_gauss_support_is_the_bin_centres():
  np.testing.assert_allclose(losses.bin_centers(-10, 10, 4), [-7.5, -2.5, 2.5, 7.5])
  np.testing.assert_allclose(losses.value_support("hl_gauss", -10, 10, 51),
                             reference_hl_gauss(0.0, -10, 10, 51)[1], atol=1e-5)
  np.testing.assert_allclose(losses.value_support("c51", -10, 10, 51),
                             np.linspace(-10, 10, 51), atol=1e-5)
  assert losses.value_support("mse", -10, 10, 1) is None
  with pytest.raises(ValueError, match="v_min"):
    losses.bin_centers(1.0, -1.0, 51)


@pytest.mark.parametrize("target", [0.0, 0.13, -3.7, 9.9, 10.0, -10.0, 25.0, -1e4, 0.2])
def test_hl_gauss_target_matches_reference(target):
  centres = losses.bin_centers(-10.0, 10.0, 51)
  got = np.asarray(losses.hl_gauss_target(jnp.float32(target), centres, 0.75 * 20 / 51))
  want, _ = reference_hl_gauss(target, -10.0, 10.0, 51)
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert abs(got.sum() - 1) < 1e-5 and (got >= 0).all()
  if abs(target) <= 8:  # Away from the edges the histogram's mean is the target itself.
    assert abs(float(got @ centres) - target) < 1e-3


def test_hl_gauss_target_at_a_bin_centre_by_hand():
  """Target on a centre: that bin holds P(|X| < w/2) = erf(0.5 / (0.75 sqrt 2)) of N(0, (0.75w)^2),
  its neighbours each P(w/2 < X < 3w/2) (the tails beyond +-10 are negligible here)."""
  centres = losses.bin_centers(-10.0, 10.0, 51)
  got = np.asarray(losses.hl_gauss_target(centres[25], centres, 0.75 * 20 / 51))
  mid = math.erf(0.5 / (0.75 * math.sqrt(2)))
  side = 0.5 * (math.erf(1.5 / (0.75 * math.sqrt(2))) - mid)
  np.testing.assert_allclose(got[24:27], [side, mid, side], rtol=1e-4)


def test_hl_gauss_loss_matches_reference_and_ignores_illegal_actions():
  rng = np.random.default_rng(6)
  logits, next_logits, legal, action, reward, discount = random_batch(rng, atoms=21)
  reward = reward * 3  # Some targets beyond the support: clipped into it.
  next_logits[:, -1, -1] = 50.0  # An illegal action that looks best must never be chosen.
  legal[:, -1] = False
  centres = losses.value_support("hl_gauss", -5.0, 5.0, 21)
  got = np.asarray(losses.batched_hl_gauss_td_loss(logits, action, next_logits, reward,
                                                   discount, legal, centres))
  for i in range(len(action)):
    _, ref_centres = reference_hl_gauss(0.0, -5.0, 5.0, 21)
    q_next = softmax64(next_logits[i]) @ ref_centres
    target = float(reward[i]) + float(discount[i]) * q_next[legal[i]].max()
    probs, _ = reference_hl_gauss(target, -5.0, 5.0, 21)
    want = -(probs * np.log(softmax64(logits[i, action[i]]))).sum()
    np.testing.assert_allclose(got[i], want, rtol=2e-5)
  out = losses.scaled_ql_loss("hl_gauss", logits, next_logits, action, reward, discount, legal,
                              centres, cql_alpha=0.3)
  np.testing.assert_allclose(out.td, got.mean(), rtol=1e-6)
  q = np.einsum("bak,k->ba", np.stack([softmax64(x) for x in logits]), np.asarray(centres))
  np.testing.assert_allclose(out.q_data, q[np.arange(len(action)), action].mean(), rtol=1e-5)
  np.testing.assert_allclose(out.loss, out.td + 0.3 * out.cql, rtol=1e-6)


def test_hl_gauss_gradient_is_softmax_minus_histogram():
  centres = losses.bin_centers(-10, 10, 51)
  rng = np.random.default_rng(7)
  logits = jnp.asarray(rng.normal(size=(18, 51)), jnp.float32)
  next_logits = jnp.asarray(rng.normal(size=(18, 51)), jnp.float32)
  legal = jnp.arange(18) < 4
  grad = jax.grad(losses.hl_gauss_td_loss)(logits, 1, next_logits, 0.5, 0.9, legal, centres)
  q_next = jax.nn.softmax(next_logits) @ centres
  target = 0.5 + 0.9 * float(jnp.max(jnp.where(legal, q_next, -jnp.inf)))
  probs, _ = reference_hl_gauss(target, -10, 10, 51)
  np.testing.assert_allclose(grad[1], jax.nn.softmax(logits[1]) - probs, atol=2e-6)
  assert float(jnp.abs(grad).sum() - jnp.abs(grad[1]).sum()) == 0.0
