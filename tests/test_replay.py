"""The Reverb layer of online fine-tuning, against real Reverb server processes (tiny tables)."""
import hashlib
import os
import signal
import socket
import time

import numpy as np
import pytest

reverb = pytest.importorskip(
    "reverb", reason="online fine-tuning needs Reverb (dm-reverb), on the pinned stack only "
    "(Python 3.11; no Python 3.12 build)")
# pylint: disable=g-import-not-at-top,wrong-import-position

from scaled_ql import replay
from scaled_ql.data import sampler as sampler_lib
from scaled_ql.envs import VectorAtariEnv

N_STEP, GAMMA = 3, 0.9


@pytest.fixture(scope="module")
def server():
  tables = replay.ReplayTables(max_size=5_000, min_size_to_sample=1, offline_size=1_000)
  with replay.start_server(tables=tables) as s:
    yield s


@pytest.fixture
def address(server):
  client = reverb.Client(server.address)
  for table in (replay.ONLINE, replay.OFFLINE):
    client.reset(table)
  return server.address


def digest(array) -> str:
  return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def as_key(obs, action, reward, discount, next_obs, game_id=0) -> tuple:
  return (digest(obs), int(action), np.float32(reward).item(), np.float32(discount).item(),
          digest(next_obs), int(game_id))


def table_contents(address: str, table: str) -> set:
  """Every item of `table` (sampled until all keys were seen)."""
  client = reverb.Client(address)
  size = client.server_info(5)[table].current_size
  items = {}
  for _ in range(40):
    for sample in client.sample(table, 200, emit_timesteps=False, unpack_as_table_signature=True):
      d = sample.data
      items[sample.info.key] = as_key(d["observation"], d["action"], d["reward"],
                                      d["discount"], d["next_observation"], d["game_id"])
    if len(items) == size:
      break
  assert len(items) == size
  return set(items.values())


def unique_stack(rng) -> np.ndarray:
  return rng.integers(0, 256, (84, 84, 4), dtype=np.uint8)


def reference_transitions(episode) -> set:
  """Brute force: every t, k = min(n, steps left), clipped discounted sum, gamma^k or 0."""
  stacks, actions, rewards, terminal, game_id = episode
  steps = len(actions)
  out = set()
  for t in range(steps):
    k = min(N_STEP, steps - t)
    ret = sum(GAMMA**i * float(np.clip(rewards[t + i], -1, 1)) for i in range(k))
    discount = 0.0 if terminal and t + k == steps else GAMMA**k
    out.add(as_key(stacks[t], actions[t], ret, discount, stacks[t + k], game_id))
  return out


def test_writer_matches_brute_force_reference(address):
  rng = np.random.default_rng(0)
  num_envs = 3
  lengths = [[1, 5, 2, 9], [3, 4, 12], [7, 2, 6, 1, 3]]  # Steps per episode, per env.
  ends = [["terminal", "truncated", "terminal", "truncated"], ["truncated", "terminal", "cut"],
          ["terminal", "terminal", "truncated", "truncated", "cut"]]  # "cut": still running.
  episodes = []
  writer = replay.TransitionWriter(address, n_step=N_STEP, gamma=GAMMA, num_envs=num_envs)
  cursors = [[0, 0] for _ in range(num_envs)]  # (episode, step) per env.
  current = [None] * num_envs
  while any(c[0] < len(lengths[i]) for i, c in enumerate(cursors)):
    for i in rng.permutation(num_envs):  # Interleaved in a random order.
      e, t = cursors[i]
      if e >= len(lengths[i]):
        continue
      if t == 0:
        current[i] = ([unique_stack(rng)], [], [], ends[i][e] == "terminal", 10 + i)
        episodes.append(current[i])
      stacks, actions, rewards, _, game_id = current[i]
      stacks.append(unique_stack(rng))
      actions.append(int(rng.integers(6)))
      rewards.append(float(rng.choice([0.0, 1.0, -3.0, 0.5, 7.0])))
      last = t + 1 == lengths[i][e]
      writer.add(i, stacks[-2], actions[-1], rewards[-1], last and ends[i][e] == "terminal",
                 last and ends[i][e] == "truncated", stacks[-1], game_id)
      cursors[i] = [e + 1, 0] if last else [e, t + 1]
  writer.close()  # "cut" episodes are written as truncated at the last stack.
  expected = set().union(*(reference_transitions(e) for e in episodes))
  assert writer.num_transitions == len(expected) == sum(map(sum, lengths))
  assert table_contents(address, replay.ONLINE) == expected


def test_writer_refuses_a_broken_stream(address):
  rng = np.random.default_rng(1)
  with replay.TransitionWriter(address, n_step=N_STEP, gamma=GAMMA, num_envs=2) as writer:
    a, b = unique_stack(rng), unique_stack(rng)
    writer.add(0, a, 0, 0.0, False, False, b, 0)
    with pytest.raises(ValueError, match="episode end missed"):
      writer.add(0, a, 0, 0.0, False, False, b, 0)
    with pytest.raises(ValueError, match="uint8 array"):
      writer.add(1, a[..., :3], 0, 0.0, False, False, b, 0)
    with pytest.raises(ValueError, match="env_index"):
      writer.add(2, a, 0, 0.0, False, False, b, 0)


def make_episode(rng, length: int, terminal: bool, episode_id: int) -> dict:
  flags = np.zeros((3, length), bool)
  flags[0, 0] = flags[1, -1] = True
  flags[2, -1] = terminal
  return dict(observation=rng.integers(0, 256, (length, 84, 84), dtype=np.uint8),
              action=rng.integers(0, 6, length).astype(np.int32),
              reward=rng.choice(np.array([0, 1, -1, 2, -5, 0.25], np.float32), length),
              discount=np.ones(length, np.float32), is_first=flags[0], is_last=flags[1],
              is_terminal=flags[2], game="pong", checkpoint_id=0, episode_id=episode_id)


def test_insert_episodes_gives_the_offline_samplers_transitions(address):
  rng = np.random.default_rng(2)
  episodes = [make_episode(rng, n, term, i)
              for i, (n, term) in enumerate([(9, True), (2, False), (14, False), (3, True)])]
  count = replay.insert_episodes(address, replay.OFFLINE, episodes, 0, n_step=N_STEP,
                                 gamma=GAMMA)
  pool = sampler_lib.FramePool("pong", 1000, n_step=N_STEP, gamma=GAMMA)
  for i, e in enumerate(episodes):
    pool.add(e, i)
  n = pool.num_transitions
  obs, next_obs = np.empty((n, 84, 84, 4), np.uint8), np.empty((n, 84, 84, 4), np.uint8)
  action, reward, discount = np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n,
                                                                                     np.float32)
  pool.gather(np.arange(n), obs, next_obs, action, reward, discount)
  expected = {as_key(*row) for row in zip(obs, action, reward, discount, next_obs)}
  assert count == n == len(expected)
  assert table_contents(address, replay.OFFLINE) == expected


def fill(address, table, num, game_id, action, seed):
  """`num` one-step transitions with the given action and game id."""
  rng = np.random.default_rng(seed)
  with replay.TransitionWriter(address, table, n_step=1, gamma=GAMMA, num_envs=1) as writer:
    current = unique_stack(rng)
    for _ in range(num):
      following = unique_stack(rng)
      writer.add(0, current, action, 1.0, False, False, following, game_id)
      current = following


def test_batches_have_the_learners_layout_and_mix_tables_in_fixed_rows(address):
  fill(address, replay.ONLINE, 40, game_id=0, action=1, seed=3)
  fill(address, replay.OFFLINE, 20, game_id=3, action=5, seed=4)
  with replay.ReplayBatches(address, 16, timeout_s=10) as batches:
    batch = next(batches)
    assert batches.block_size == 16
  shapes = {k: (v.shape, v.dtype) for k, v in batch._asdict().items()}
  assert shapes == dict(observation=((16, 84, 84, 4), np.uint8), action=((16,), np.int32),
                        reward=((16,), np.float32), discount=((16,), np.float32),
                        next_observation=((16, 84, 84, 4), np.uint8), game_id=((16,), np.int32))
  assert np.all(batch.action == 1) and np.allclose(batch.discount, GAMMA)
  with replay.ReplayBatches(address, 16, timeout_s=10, single_game=False,
                            tables_and_fractions={"offline": 0.25, "online": 0.75}) as batches:
    assert batches.counts == {"offline": 4, "online": 12} and batches.block_size == 1
    for _ in range(3):
      batch = next(batches)
      np.testing.assert_array_equal(batch.action, [5] * 4 + [1] * 12)
      np.testing.assert_array_equal(batch.game_id, [3] * 4 + [0] * 12)
  with pytest.raises(ValueError, match="whole rows"):
    replay.ReplayBatches(address, 10, tables_and_fractions={"offline": 0.25, "online": 0.75})
  with replay.ReplayBatches(address, 16, timeout_s=5,
                            tables_and_fractions={"offline": 0.5, "online": 0.5}) as batches:
    with pytest.raises(replay.ReplayError, match="mixes games"):
      next(batches)


def test_rate_limiter_holds_sampling_to_samples_per_insert():
  # error_buffer (0, huge): at most samples_per_insert x inserts samples; inserts never wait.
  tables = replay.ReplayTables(max_size=1000, min_size_to_sample=4, samples_per_insert=1.0,
                               error_buffer=(0.0, 1e9))
  with replay.start_server(tables=tables) as server:
    fill(server.address, replay.ONLINE, 16, 0, 0, seed=5)
    with replay.ReplayBatches(server.address, 4, prefetch=1, timeout_s=2) as batches:
      for _ in range(4):
        next(batches)
      start = time.monotonic()
      with pytest.raises(replay.ReplayError, match="'online': 16 items.*16 sampled"):
        next(batches)
      assert time.monotonic() - start < 4
      fill(server.address, replay.ONLINE, 8, 0, 0, seed=6)
      next(batches), next(batches)
      with pytest.raises(replay.ReplayError, match="within timeout_s"):
        next(batches)


def test_params_round_trip_bit_exactly_and_the_newest_wins(address):
  rng = np.random.default_rng(7)

  def params():
    return {"conv": {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
                     "bias": rng.standard_normal(8).astype(np.float32)},
            "head": [rng.integers(-9, 9, (5,)).astype(np.int32), np.float64(rng.random())]}

  template = params()
  client = replay.ParamsClient(address, template)
  first, second = params(), params()
  replay.publish_params(address, first, 10)
  replay.publish_params(address, second, 20)
  got, step = replay.fetch_params(address, template, timeout_s=5)
  assert step == 20
  for a, b in zip(jax_leaves(got), jax_leaves(second), strict=True):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
  latest = client.latest()
  assert latest[1] == 20 and client.latest() is latest  # Nothing new: the cached one.
  replay.publish_params(address, first, 30)
  newest = client.latest()
  assert newest[1] == 30 and all(a.tobytes() == b.tobytes()
                                 for a, b in zip(jax_leaves(newest[0]), jax_leaves(first)))
  bad = dict(template, conv=dict(template["conv"], bias=np.zeros(9, np.float32)))
  with pytest.raises(replay.ReplayError, match=r"\['conv'\]\['bias'\].*\(8,\).*\(9,\)"):
    replay.fetch_params(address, bad, timeout_s=5)


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_unreachable_address_and_unknown_tables_are_clear_errors(address):
  start = time.monotonic()
  dead = f"localhost:{free_port()}"
  with pytest.raises(replay.ReplayError, match=f"no Reverb server at {dead}"):
    replay.check_address(dead, timeout_s=2)
  with pytest.raises(replay.ReplayError, match="no Reverb server"):
    replay.ReplayBatches(dead, 8, timeout_s=2)
  with pytest.raises(replay.ReplayError, match="no Reverb server"):
    replay.TransitionWriter(dead, n_step=1, gamma=GAMMA, num_envs=1)
  with pytest.raises(replay.ReplayError, match="no Reverb server"):
    replay.fetch_params(dead, {}, timeout_s=2)
  assert time.monotonic() - start < 5
  with pytest.raises(replay.ReplayError, match=r"no table\(s\) \['onlin'\]"):
    replay.TransitionWriter(address, "onlin", n_step=1, gamma=GAMMA, num_envs=1)
  with pytest.raises(replay.ReplayError, match=r"no table\(s\) \['nope'\]"):
    replay.ReplayBatches(address, 8, tables_and_fractions={"nope": 1.0})
  with pytest.raises(replay.ReplayError, match="does not hold transitions"):
    replay.ReplayBatches(address, 8, tables_and_fractions={"variables": 1.0})


def test_a_killed_server_gives_replay_errors_within_the_timeout():
  tables = replay.ReplayTables(max_size=1000, min_size_to_sample=1)
  with replay.start_server(tables=tables) as server:
    fill(server.address, replay.ONLINE, 8, 0, 0, seed=8)
    replay.publish_params(server.address, {"w": np.ones(3, np.float32)}, 1)
    batches = replay.ReplayBatches(server.address, 4, prefetch=2, timeout_s=10)
    next(batches)
    writer = replay.TransitionWriter(server.address, n_step=1, gamma=GAMMA, num_envs=1)
    os.kill(server.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(replay.ReplayError, match=f"no Reverb server at {server.address}"):
      for _ in range(100):  # Batches sampled before the kill may come first.
        next(batches)
    assert time.monotonic() - start < 10
    batches.close()
    start = time.monotonic()
    rng = np.random.default_rng(9)
    with pytest.raises(replay.ReplayError, match=f"no Reverb server at {server.address}"):
      current = unique_stack(rng)
      for _ in range(100):
        following = unique_stack(rng)
        writer.add(0, current, 0, 0.0, False, False, following, 0)
        current = following
      writer.add(0, current, 0, 0.0, True, False, unique_stack(rng), 0)  # Flushes.
    assert time.monotonic() - start < 10
    with pytest.raises(replay.ReplayError, match="no Reverb server"):
      replay.fetch_params(server.address, {"w": np.ones(3, np.float32)}, timeout_s=5)
    assert not server.alive()


def test_emulator_transitions_round_trip(address):
  num_envs, steps = 2, 300
  rng = np.random.default_rng(10)
  written = set()
  with VectorAtariEnv([("pong", 0), ("pong", 1)], max_episode_frames=480) as env, \
      replay.TransitionWriter(address, n_step=N_STEP, gamma=GAMMA, num_envs=num_envs) as writer:
    obs = env.reset()
    truncations = 0
    for _ in range(steps):
      actions = rng.integers(0, 6, num_envs)
      next_obs, rewards, terminated, truncated, info = env.step(actions)
      for i in range(num_envs):
        writer.add(i, obs[i], actions[i], rewards[i], terminated[i], truncated[i],
                   info["next_observation"][i], 0)
        written.add(digest(obs[i]))
        written.add(digest(info["next_observation"][i]))
      truncations += int(truncated.sum())
      obs = next_obs
  assert truncations >= 2  # 480 frames: episodes of 120 steps, cut.
  assert replay.server_info(address)[replay.ONLINE].current_size == num_envs * steps
  discounts = {np.float32(GAMMA**k).item() for k in range(1, N_STEP + 1)} | {0.0}
  with replay.ReplayBatches(address, 64, timeout_s=10) as batches:
    for _ in range(3):
      batch = next(batches)
      assert {digest(o) for o in batch.observation} <= written
      assert {digest(o) for o in batch.next_observation} <= written
      assert set(batch.discount.tolist()) <= discounts
      assert np.all(np.abs(batch.reward) <= sum(GAMMA**i for i in range(N_STEP)) + 1e-6)
