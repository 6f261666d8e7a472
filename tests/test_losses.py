"""Losses against independent float64 NumPy references."""
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
  atoms = 11 if kind == "c51" else 1
  logits, next_logits, legal, action, reward, discount = random_batch(rng, atoms=atoms)
  support = losses.make_support(-10, 10, 11) if kind == "c51" else None

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
  with pytest.raises(ValueError, match="v_min"):
    losses.make_support(1.0, -1.0, 51)
