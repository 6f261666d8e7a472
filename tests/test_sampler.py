"""The multi-game transition sampler against a brute-force reference, on synthetic episodes and on
real emulator episodes; blocked layout, determinism, save/restore, FIFO refresh and bad input."""
import json

import numpy as np
import pytest

from scaled_ql import envs, games, learner, losses
from scaled_ql.data import prefetch as prefetch_lib
from scaled_ql.data import sampler as sampler_lib

GAMES = ("pong", "breakout", "freeway")


# -- Episodes in the RLDS step contract. ------------------------------------------------------
def pack(frames, actions, rewards, terminal, **meta):
  """Episode dict from T frames and the T-1 actions / rewards that followed them."""
  t = len(frames)
  first, last, term = np.zeros(t, bool), np.zeros(t, bool), np.zeros(t, bool)
  first[0], last[-1], term[-1] = True, True, terminal
  discount = np.ones(t, np.float32)
  discount[-1] = 0.0 if terminal else 1.0
  return dict(observation=np.asarray(frames, np.uint8),
              action=np.append(np.asarray(actions, np.int32), 0).astype(np.int32),
              reward=np.append(np.asarray(rewards, np.float32), 0).astype(np.float32),
              discount=discount, is_first=first, is_last=last, is_terminal=term, **meta)


def synthetic(game: str, uid: int, length: int, terminal: bool, rng, checkpoint_id: int = 0):
  """Random frames; the first pixels name (uid, step, game, checkpoint), so rows identify."""
  frames = rng.integers(0, 256, (length, 84, 84), dtype=np.uint8)
  step = np.arange(length)
  frames[:, 0, 0], frames[:, 0, 1] = uid % 256, uid // 256
  frames[:, 0, 2], frames[:, 0, 3] = step % 256, step // 256
  frames[:, 0, 4], frames[:, 0, 5] = GAMES.index(game) + 1, checkpoint_id
  rewards = rng.choice([-7.0, -1.0, -0.5, 0.0, 0.0, 0.25, 1.0, 3.0], length - 1)
  actions = rng.integers(0, games.get_game(game).num_actions, length - 1)
  return pack(frames, actions, rewards, terminal, game=game, run=1,
              checkpoint_id=checkpoint_id, episode_id=uid,
              episode_return=float(rewards.sum()))


def identify(stack):
  """(uid, step) of the newest frame of a stack."""
  px = stack[0, :4, -1].astype(int)
  return px[0] + 256 * px[1], px[2] + 256 * px[3]


def make_stream(game, count, rng, uid0=0, lengths=(2, 3, 4, 5, 9, 40, 120), ckpt=None):
  return [synthetic(game, uid0 + i, int(rng.choice(lengths)), bool(rng.integers(2)), rng,
                    checkpoint_id=(i % 5 if ckpt is None else ckpt)) for i in range(count)]


# -- The brute-force reference, one transition at a time. --------------------------------------
def reference(episode, t, n_step, gamma, stack_size=4):
  """(obs, action, n-step return, discount, next obs) of step t, by the episode's definition."""
  obs, reward = episode["observation"], episode["reward"]
  last = len(obs) - 1

  def stack(i):
    out = np.zeros((84, 84, stack_size), np.uint8)
    for j in range(stack_size):
      if i - (stack_size - 1) + j >= 0:
        out[..., j] = obs[i - (stack_size - 1) + j]
    return out

  ret, k, terminated = 0.0, 0, False
  while k < n_step and t + k < last:
    ret += gamma**k * min(max(float(reward[t + k]), -1.0), 1.0)
    k += 1
    if t + k == last and episode["is_terminal"][last]:
      terminated = True
  discount = 0.0 if terminated else gamma**k
  return stack(t), int(episode["action"][t]), ret, discount, stack(t + k)


def check_rows(batch, rows, by_uid, n_step, gamma):
  for i in rows:
    uid, t = identify(batch.observation[i])
    obs, action, ret, discount, next_obs = reference(by_uid[uid], t, n_step, gamma)
    np.testing.assert_array_equal(batch.observation[i], obs)
    np.testing.assert_array_equal(batch.next_observation[i], next_obs)
    assert batch.action[i] == action
    assert abs(batch.reward[i] - ret) < 1e-6 and abs(batch.discount[i] - discount) < 1e-6


def make_sampler(streams, **kwargs):
  args = dict(games=GAMES, batch_size=24, pool_frames=400, refresh_every=3, refresh_episodes=2)
  args.update(kwargs)
  return sampler_lib.MultiGameSampler(streams, **args)


@pytest.fixture(scope="module")
def streams():
  rng = np.random.default_rng(0)
  return {g: make_stream(g, 30, rng, uid0=100 * i) for i, g in enumerate(GAMES)}


def by_uid(streams):
  return {int(e["episode_id"]): e for s in streams.values() for e in s}


# -- Correctness against the reference. -------------------------------------------------------
@pytest.mark.parametrize("n_step,gamma", [(3, 0.99), (1, 0.9), (5, 0.5)])
def test_batches_match_reference(streams, n_step, gamma):
  s = make_sampler(streams, n_step=n_step, gamma=gamma)
  episodes = by_uid(streams)
  seen_first, seen_end = 0, 0
  for _ in range(25):  # Several refreshes: the 400-frame rings wrap round many times.
    batch = next(s)
    assert isinstance(batch, learner.Batch)
    check_rows(batch, range(s.batch_size), episodes, n_step, gamma)
    seen_first += int(np.sum(batch.observation[:, 0, 0, 0] == 0))
    seen_end += int(np.sum(batch.discount < gamma**n_step - 1e-7))
    for p in s.pools:
      assert p.num_frames <= p.capacity
  assert seen_first and seen_end  # Zero padding and episode ends were both exercised.


def test_pool_gathers_every_transition_of_real_episodes():
  """Real emulator episodes (one to game over, one truncated): every transition, in order."""
  rng = np.random.default_rng(1)
  episodes = []
  for seed, frames_cap in ((3, 108_000), (4, 160)):
    env = envs.AtariEnv("breakout", seed=seed, max_episode_frames=frames_cap)
    frames, actions, rewards, terminated = [env.reset()], [], [], False
    for _ in range(3000):
      a = int(rng.integers(env.num_actions))
      frame, r, terminated, truncated = env.step(a)
      frames.append(frame), actions.append(a), rewards.append(r)
      if terminated or truncated:
        break
    episodes.append(pack(frames, actions, rewards, terminated, game="Breakout", episode_id=seed))
  assert episodes[0]["is_terminal"][-1] and not episodes[1]["is_terminal"][-1]
  assert sum(episodes[0]["reward"]) > 0  # Some rewards: the return sums are non-trivial.
  pool = sampler_lib.FramePool("breakout", 4000, n_step=3, gamma=0.99)
  for i, e in enumerate(episodes):
    assert pool.add(e, i)
  m = pool.num_transitions
  assert m == sum(len(e["action"]) - 1 for e in episodes)
  obs, nxt = np.empty((m, 84, 84, 4), np.uint8), np.empty((m, 84, 84, 4), np.uint8)
  act, ret, disc = np.empty(m, np.int32), np.empty(m, np.float32), np.empty(m, np.float32)
  pool.gather(np.arange(m), obs, nxt, act, ret, disc)
  stacker, i = envs.FrameStacker(), 0
  for e in episodes:
    for t in range(len(e["action"]) - 1):
      ref = reference(e, t, 3, 0.99)
      np.testing.assert_array_equal(obs[i], ref[0])
      np.testing.assert_array_equal(nxt[i], ref[4])
      assert act[i] == ref[1] and abs(ret[i] - ref[2]) < 1e-6 and abs(disc[i] - ref[3]) < 1e-6
      # The acting-side stacker sees the same stacks.
      live = stacker.reset(e["observation"][0]) if t == 0 else stacker.push(e["observation"][t])
      np.testing.assert_array_equal(obs[i], live)
      i += 1
  # The learner's own n-step definition agrees on a few windows, including the terminal one.
  e = episodes[0]
  for t in (0, len(e["action"]) - 4, len(e["action"]) - 2):
    idx = np.arange(t, t + 3)
    valid = idx < len(e["action"]) - 1
    safe = np.minimum(idx, len(e["action"]) - 2)
    term = valid & (idx == len(e["action"]) - 2) & bool(e["is_terminal"][-1])
    r, d = losses.n_step_return(e["reward"][safe], term, valid, 0.99)
    assert abs(float(r) - ret[t]) < 1e-6 and abs(float(d) - disc[t]) < 1e-6  # Episode 0 first.


# -- Layout. ----------------------------------------------------------------------------------
def test_blocked_layout_weights_and_game_ids(streams):
  s = make_sampler(streams, batch_size=40, game_weights=[1, 2, 1])
  assert s.counts == (10, 20, 10) and s.block_size == 10
  for step in range(3):
    b = next(s)
    np.testing.assert_array_equal(b.game_id, np.repeat(np.arange(3, dtype=np.int32), s.counts))
    assert b.observation.shape == b.next_observation.shape == (40, 84, 84, 4)
    assert b.observation.dtype == np.uint8 and b.action.dtype == np.int32
    assert b.reward.dtype == b.discount.dtype == np.float32
    game_px = b.observation[:, 0, 4, -1]
    np.testing.assert_array_equal(game_px, b.game_id + 1)  # Rows come from their game's pool.
    for g, name in enumerate(GAMES):
      acts = b.action[b.game_id == g]
      assert acts.min() >= 0 and acts.max() < games.get_game(name).num_actions


def test_split_batch():
  assert sampler_lib.split_batch(512, [1] * 4, "abcd") == (128,) * 4
  assert sampler_lib.split_batch(10, [0.2, 0.8], "ab") == (2, 8)
  assert sampler_lib.split_batch(6, [1, 2, 3], "abc") == (1, 2, 3)  # Counts as weights.
  with pytest.raises(ValueError, match=r"batch_size 512 cannot be split.*480 or 520"):
    sampler_lib.split_batch(512, [1] * 40, [f"g{i}" for i in range(40)])
  with pytest.raises(ValueError, match="must be > 0"):
    sampler_lib.split_batch(8, [1, 0], "ab")
  with pytest.raises(ValueError, match="2 entries for 3 games"):
    sampler_lib.split_batch(8, [1, 1], "abc")


# -- Determinism and state. -------------------------------------------------------------------
def assert_same(a, b):
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def differs(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_determinism_in_seed_host_step(streams):
  a, b = make_sampler(streams, seed=7), make_sampler(streams, seed=7)
  for _ in range(8):
    assert_same(next(a), next(b))
  c = make_sampler(streams, seed=7, host_index=1)
  d = make_sampler(streams, seed=8)
  e = make_sampler(streams, seed=7)
  assert differs(next(c), e.sample(0)) and differs(next(d), e.sample(0))
  # sample(step) depends on the step, not on the order of calls.
  x5, x2 = e.sample(5), e.sample(2)
  assert_same(e.sample(2), x2)
  assert_same(e.sample(5), x5)
  assert differs(x2, x5)


@pytest.mark.parametrize("save_at", [0, 5, 6, 11])
def test_restore_continues_exactly(streams, save_at):
  """Saved mid-run (around refreshes and source epochs), a fresh sampler continues exactly."""
  a = make_sampler(streams, refresh_every=3, refresh_episodes=4)
  batches = []
  state = a.state_dict() if save_at == 0 else None
  for step in range(16):
    batches.append(next(a))
    if step + 1 == save_at:
      state = json.loads(json.dumps(a.state_dict()))
  assert any(st["epoch_length"] for st in a.state_dict()["games"].values())  # Cycled a source.
  b = make_sampler(streams, refresh_every=3, refresh_episodes=4)
  b.load_state_dict(state)
  assert b.step == save_at
  for step in range(save_at, 16):
    assert_same(next(b), batches[step])
  assert b.state_dict() == a.state_dict()


def test_restore_rejects_other_config_or_source(streams):
  a = make_sampler(streams)
  for _ in range(4):
    next(a)
  state = a.state_dict()
  with pytest.raises(ValueError, match="another configuration.*seed"):
    make_sampler(streams, seed=3).load_state_dict(state)
  changed = dict(streams)
  changed["freeway"] = streams["freeway"][1:]
  with pytest.raises(ValueError, match="'freeway'.*not the one the state was saved with"):
    make_sampler(changed).load_state_dict(state)


def test_prefetcher_gives_the_same_batches_and_state(streams):
  plain = [next(b) for b in [make_sampler(streams)] for _ in range(9)]
  with prefetch_lib.Prefetcher(make_sampler(streams), depth=3) as p:
    got = [next(p) for _ in range(5)]
    state = p.state_dict()
    assert state["step"] == 5
    p.load_state_dict(state)
    got += [next(p) for _ in range(4)]
  for x, y in zip(plain, got):
    assert_same(x, y)


# -- Pool: bound, FIFO, bytes. ----------------------------------------------------------------
def test_pool_fifo_bound_and_filter():
  rng = np.random.default_rng(2)
  stream = make_stream("pong", 40, rng, lengths=(10, 25, 60))
  pool = sampler_lib.FramePool("pong", 200, checkpoint_range=(1, 3))
  accepted = []
  for i, e in enumerate(stream):
    if pool.add(e, i):
      accepted.append(i)
    assert pool.num_frames <= 200
    live = [ep.position for ep in pool.episodes()]
    assert live == accepted[-len(live):]  # The live episodes: the latest accepted, in order.
    if len(live) < len(accepted):  # Evicted only when the next one would not fit.
      assert pool.num_frames + len(stream[accepted[-len(live) - 1]]["action"]) > 200
  assert all(1 <= stream[i]["checkpoint_id"] <= 3 for i in accepted)
  assert len(accepted) < 40


def test_sampler_checkpoint_range(streams):
  s = make_sampler(streams, checkpoint_range=(2, 2))
  for _ in range(5):
    assert np.all(next(s).observation[:, 0, 5, -1] == 2)


def test_bytes_per_frame():
  rng = np.random.default_rng(3)
  pool = sampler_lib.FramePool("pong", 3000)
  for i, e in enumerate(make_stream("pong", 60, rng, lengths=(50, 80))):
    pool.add(e, i)
  assert pool.num_frames > 2900
  assert pool.bytes_per_frame <= 1.1 * 84 * 84, pool.bytes_per_frame


def test_fill_keeps_a_small_dataset_resident_and_cycle_false_stops():
  rng = np.random.default_rng(4)
  small = {g: make_stream(g, 3, rng, uid0=10 * i) for i, g in enumerate(GAMES)}
  s = make_sampler(small, pool_frames=5000)
  next(s)
  before = [p.episodes() for p in s.pools]
  for _ in range(10):
    next(s)
  assert [p.episodes() for p in s.pools] == before  # Everything fits: never re-read.
  big = {g: make_stream(g, 12, rng, uid0=10 * i) for i, g in enumerate(GAMES)}
  s = make_sampler(big, pool_frames=130, cycle=False, refresh_episodes=3)
  for _ in range(30):
    next(s)
  st = s.state_dict()["games"]
  assert all(g["ended"] and g["consumed"] == 12 for g in st.values())


# -- Bad input. -------------------------------------------------------------------------------
def one_game(episodes, game="pong", **kwargs):
  args = dict(games=(game,), batch_size=4, pool_frames=500)
  args.update(kwargs)
  return sampler_lib.MultiGameSampler({game: episodes}, **args)


def test_bad_episodes_name_game_episode_and_field():
  rng = np.random.default_rng(5)
  good = lambda: synthetic("pong", 42, 6, True, rng)  # noqa: E731
  cases = []
  e = good()
  e["reward"] = e["reward"][:-1]
  cases.append((e, r"'pong', episode 0 \(episode_id=42.*field 'reward' has shape \(5,\)"))
  e = good()
  e["observation"] = e["observation"].astype(np.float32)
  cases.append((e, "field 'observation' must be uint8.*float32"))
  e = good()
  e["observation"] = e["observation"][..., None]
  cases.append((e, r"field 'observation' must be uint8 \[T, 84, 84\].*\(6, 84, 84, 1\)"))
  e = good()
  e["action"][2] = 6
  cases.append((e, "field 'action' at step 2 is 6, outside pong's 6 minimal actions"))
  e = good()
  e["is_terminal"][1] = True
  cases.append((e, "'is_terminal' is True before the last step"))
  e = good()
  del e["is_last"]
  cases.append((e, r"missing field\(s\) \['is_last'\]"))
  e = good()
  e["game"] = "breakout"
  cases.append((e, "field 'game' is 'breakout', but this is the pool of 'pong'"))
  cases.append((synthetic("pong", 1, 700, True, rng), "700 frames do not fit a pool of 500"))
  for episode, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      next(one_game([episode, good()]))


def test_bad_sources_and_batch_split(streams):
  with pytest.raises(ValueError, match="'freeway': its episode source yielded no episodes"):
    next(make_sampler({**streams, "freeway": []}))
  with pytest.raises(ValueError, match=r"no episodes with checkpoint_id in \(7, 9\) \(30 read\)"):
    next(make_sampler(streams, checkpoint_range=(7, 9)))
  with pytest.raises(ValueError, match=r"missing \['freeway'\]"):
    make_sampler({g: streams[g] for g in GAMES[:2]})
  with pytest.raises(ValueError, match="batch_size 25 cannot be split"):
    make_sampler(streams, batch_size=25)
  with pytest.raises(ValueError, match="one-shot iterator"):
    one_game(iter(streams["pong"]))
  with pytest.raises(ValueError, match="unknown game 'pongg'"):
    one_game(streams["pong"], game="pongg")


def test_prefetcher_raises_the_samplers_error():
  def source(start):
    rng = np.random.default_rng(6)
    yield from make_stream("pong", 3, rng, lengths=(40,))
    raise ValueError("disk on fire")
  s = one_game(source, pool_frames=60, refresh_every=1)
  with prefetch_lib.Prefetcher(s) as p:
    with pytest.raises(ValueError, match="disk on fire"):
      for _ in range(10):
        next(p)


def test_ingests_what_the_rlds_reader_yields(tmp_path):
  """The dataset half's writer and reader feed the sampler (a small emulator dataset)."""
  from scaled_ql.data import generate, rlds  # pylint: disable=g-import-not-at-top
  generate.generate_run(str(tmp_path), "pong", 1, num_checkpoints=2, steps_per_checkpoint=120,
                        max_episode_frames=240)
  episodes = list(rlds.read_episodes(str(tmp_path), "pong"))
  s = one_game(lambda start: iter(episodes[start:]), batch_size=32, pool_frames=1000,
               checkpoint_range=(1, 1))
  batch = next(s)
  pool = s.pools[0]
  kept = [e for e in episodes if e["checkpoint_id"] == 1]
  assert pool.num_frames == sum(len(e["action"]) for e in kept) > 0
  u = np.arange(pool.num_transitions)
  obs, nxt = np.empty((len(u), 84, 84, 4), np.uint8), np.empty((len(u), 84, 84, 4), np.uint8)
  act, ret, disc = np.empty(len(u), np.int32), np.empty(len(u), np.float32), \
      np.empty(len(u), np.float32)
  pool.gather(u, obs, nxt, act, ret, disc)
  i = 0
  for e in kept:
    for t in range(len(e["action"]) - 1):
      ref = reference(e, t, 3, 0.99)
      np.testing.assert_array_equal(obs[i], ref[0])
      np.testing.assert_array_equal(nxt[i], ref[4])
      assert act[i] == ref[1] and abs(ret[i] - ref[2]) < 1e-6 and abs(disc[i] - ref[3]) < 1e-6
      i += 1
  assert batch.observation.shape == (32, 84, 84, 4)
