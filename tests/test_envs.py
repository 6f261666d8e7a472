"""ALE environments against the real emulator: preprocessing, stacking, vector envs, bad input."""
import hashlib

import numpy as np
import pytest
from ale_py import env as ale_env

from scaled_ql import envs, games


def run(env, actions):
  """Steps `env` from a reset through `actions`; returns (frames, rewards) with the reset frame."""
  frames, rewards = [env.reset()], []
  for a in actions:
    frame, reward, terminated, truncated = env.step(int(a))
    frames.append(frame)
    rewards.append(reward)
    if terminated or truncated:
      break
  return np.stack(frames), np.array(rewards)


def test_shapes_match_the_network_input():
  from scaled_ql.networks import OBSERVATION_SHAPE  # pylint: disable=import-outside-toplevel
  assert (*envs.FRAME_SHAPE, envs.STACK_SIZE) == OBSERVATION_SHAPE


def test_resize_area_is_opencv_inter_area_to_the_bit():
  # sha256 and pixel sums of cv2.resize(frame, (84, 84), interpolation=cv2.INTER_AREA) for three
  # arithmetic 210x160 frames, computed with opencv-python-headless 4.11.0.86.
  i, j = np.meshgrid(np.arange(210), np.arange(160), indexing="ij")
  frames = [((i * 7 + j * 13 + (i * j) % 31) * 37) % 256, (i * i * 3 + j * 5 + i * j * 11) % 251,
            np.where((i // 3 + j // 2) % 2 == 0, 255, 0)]
  expected = [("399868304efd9229c1cb8f6cee1fe792fc9f54934eb679c6233417c01145946b", 897624),
              ("c031efb4bf401e1746d3446f11d25177f6fb8c01e3e4bdc1aafd0c3bcdf26d01", 880225),
              ("d1eafa4f6a1e859541a5f1e2b0d10d0716ff9608a6c5f114dad2e6d65333d810", 899808)]
  for frame, (digest, total) in zip(frames, expected):
    out = envs.resize_area(frame.astype(np.uint8))
    assert out.shape == (84, 84) and out.dtype == np.uint8
    assert (hashlib.sha256(out.tobytes()).hexdigest(), int(out.sum())) == (digest, total)


def test_resize_area_hand_computed():
  frame = np.full((210, 160), 77, np.uint8)
  np.testing.assert_array_equal(envs.resize_area(frame), 77)
  # Output (0, 0) covers rows [0, 2.5) and columns [0, 1.905): weights 0.4, 0.4, 0.2 over rows
  # and 1 / 1.905, 0.905 / 1.905 over columns.
  frame = np.zeros((210, 160), np.uint8)
  frame[:3, :2] = [[10, 200], [50, 0], [250, 100]]
  rows = np.array([0.4, 0.4, 0.2])
  cols = np.array([84 / 160, 1 - 84 / 160])
  assert envs.resize_area(frame)[0, 0] == round(rows @ frame[:3, :2] @ cols)


def _atari_screens(per_game=12):
  """Raw grayscale screens (max-pooled as the env does) from a few games under random play."""
  rng = np.random.default_rng(0)
  screens = []
  for game in ("pong", "breakout", "seaquest", "ms_pacman", "space_invaders", "enduro"):
    env = envs.AtariEnv(game, seed=1)
    env.reset()
    screen = np.zeros(env.screen_shape, np.uint8)
    for t in range(15 * per_game):
      _, terminated, truncated = env.step_screen(int(rng.integers(env.num_actions)), screen)
      if t % 15 == 14:
        screens.append(screen.copy())
      if terminated or truncated:
        env.reset()
  return screens


def test_fast_resize_equals_the_float32_reference_to_the_bit():
  # resize_area computes in integers and redoes only the ties (pixels exactly on a rounding
  # boundary) in OpenCV's float32 arithmetic; _resize_area_reference is that arithmetic for the
  # whole frame (pinned to cv2 by the hashes above).
  assert envs._integer_area_plan(210, 160, 84, 84) is not None  # The fast path is under test.
  rng = np.random.default_rng(0)
  i, j = np.meshgrid(np.arange(210), np.arange(160), indexing="ij")
  frames = (_atari_screens()
            + [rng.integers(0, 256, (210, 160), dtype=np.uint8) for _ in range(40)]
            + [np.full((210, 160), v, np.uint8) for v in (0, 1, 128, 255)]
            + [np.where((i + j) % 2, 255, 0).astype(np.uint8),  # Many ties.
               np.where(j % 2, 255, 0).astype(np.uint8), (i * j % 256).astype(np.uint8)])
  reference = np.stack([envs._resize_area_reference(f) for f in frames])
  for frame, expected in zip(frames, reference):
    np.testing.assert_array_equal(envs.resize_area(frame), expected)
  # A batch (what VectorAtariEnv resizes per step), any leading shape, and the same again.
  batch = np.stack(frames)
  np.testing.assert_array_equal(envs.resize_area(batch), reference)
  np.testing.assert_array_equal(envs.resize_area(batch[:6].reshape(2, 3, 210, 160)),
                                reference[:6].reshape(2, 3, 84, 84))
  np.testing.assert_array_equal(envs.resize_area(batch[:8]), reference[:8])
  # The ties were exercised: pixels whose exact area average is k + 1/2.
  rows, cols = envs._area_table(210, 84), envs._area_table(160, 84)
  dense_rows = np.zeros((84, 210))
  dense_cols = np.zeros((160, 84))
  np.add.at(dense_rows, (np.arange(84)[:, None], rows[0]), rows[1])
  np.add.at(dense_cols, (cols[0], np.arange(84)[:, None]), cols[1])
  exact = np.rint(dense_rows @ batch.astype(np.float64) @ dense_cols * 200)
  assert np.sum(exact % 200 == 100) > 1000


def test_resize_of_other_screen_sizes_takes_the_reference():
  # Carnival's screen is 214 rows high: no integer plan there, the float32 reference instead.
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (3, 214, 160), dtype=np.uint8)
  assert envs._integer_area_plan(214, 160, 84, 84) is None
  np.testing.assert_array_equal(envs.resize_area(frames),
                                [envs._resize_area_reference(f) for f in frames])
  with pytest.raises(ValueError, match="uint8"):
    envs.resize_area(frames.astype(np.float32))


def test_freeway_up_scores_and_noop_does_not():
  freeway = games.get_game("freeway")
  up = freeway.minimal_actions.index(2)  # ALE action UP.
  assert up == 1
  env = envs.AtariEnv("freeway", seed=0)  # Sticky actions 0.25 by default.
  _, up_rewards = run(env, [up] * 2000)
  _, noop_rewards = run(env, [0] * 2000)
  assert up_rewards.sum() > 0
  assert len(noop_rewards) == 2000 and noop_rewards.sum() == 0


def test_same_seed_same_episode_other_seed_differs():
  actions = np.random.default_rng(0).integers(0, 6, size=300)
  frames_a, rewards_a = run(envs.AtariEnv("pong", seed=3), actions)
  frames_b, rewards_b = run(envs.AtariEnv("pong", seed=3), actions)
  frames_c, _ = run(envs.AtariEnv("pong", seed=4), actions)
  assert frames_a.shape == (301, 84, 84) and frames_a.dtype == np.uint8
  np.testing.assert_array_equal(frames_a, frames_b)
  np.testing.assert_array_equal(rewards_a, rewards_b)
  assert not np.array_equal(frames_a, frames_c)


def test_frames_are_max_pooled_resized_raw_screens_as_in_gymnasium_v5():
  """Same emulator as gymnasium's v5 env for the same seed; frame = resize(max(last 2 screens)).

  Breakout with seed 8 and these random actions ends on step 281, in the 1st frame of that step:
  the step stops there and its frame is the final screen alone.
  """
  seed, game = 8, games.get_game("breakout")
  actions = np.random.default_rng(1).integers(0, game.num_actions, size=400)
  env = envs.AtariEnv(game, seed)
  raw = ale_env.AtariEnv(game="breakout", obs_type="grayscale", frameskip=1,
                         repeat_action_probability=0.25)
  screen, _ = raw.reset(seed=seed)
  np.testing.assert_array_equal(env.reset(), envs.resize_area(screen))
  total, steps = 0.0, 0
  for a in actions:
    screens, reward, terminated = [], 0.0, False
    while len(screens) < 4 and not terminated:
      screen, r, terminated, _, _ = raw.step(int(a))
      screens.append(screen)
      reward += r
    frame, env_reward, env_terminated, truncated = env.step(int(a))
    pooled = np.maximum(screens[-2], screens[-1]) if len(screens) == 4 else screens[-1]
    np.testing.assert_array_equal(frame, envs.resize_area(pooled))
    assert (env_reward, env_terminated, truncated) == (reward, terminated, False)
    total += reward
    steps += 1
    if terminated:
      break
  assert total > 0 and terminated  # Rewards and the episode's end were really compared.
  assert (steps, len(screens)) == (281, 1)
  raw.close()


def test_truncation_after_max_episode_frames():
  env = envs.AtariEnv("pong", seed=0, max_episode_frames=400, frame_skip=4)
  env.reset()
  for t in range(1, 101):
    _, _, terminated, truncated = env.step(0)
    assert not terminated
    assert truncated == (t == 100), t
  assert env.episode_frame_number == 400
  with pytest.raises(RuntimeError, match="reset"):
    env.step(0)
  env.reset()
  assert not any(env.step(0)[3] for _ in range(99))


def test_frame_stacker_pads_with_zeros_and_shifts_oldest_out():
  frames = [np.full((84, 84), v, np.uint8) for v in (11, 22, 33, 44, 55)]
  stacker = envs.FrameStacker()
  first = stacker.reset(frames[0])
  assert first.shape == (84, 84, 4) and first.dtype == np.uint8
  assert first[0, 0].tolist() == [0, 0, 0, 11]
  assert stacker.push(frames[1])[0, 0].tolist() == [0, 0, 11, 22]
  assert stacker.push(frames[2])[0, 0].tolist() == [0, 11, 22, 33]
  stacker.push(frames[3])
  assert stacker.push(frames[4])[5, 7].tolist() == [22, 33, 44, 55]
  assert first[0, 0].tolist() == [0, 0, 0, 11]  # Returned stacks are copies.
  assert stacker.reset(frames[4])[0, 0].tolist() == [0, 0, 0, 55]  # A new episode: zeros again.
  with pytest.raises(ValueError, match="uint8"):
    stacker.push(np.zeros((84, 84), np.float32))


@pytest.mark.parametrize("stack_size", [1, 2, 3, 4, 8])
def test_frame_stacker_equals_a_plain_shifted_stack(stack_size):
  # Sizes 1, 2, 4 and 8 keep a pixel's stack in one machine word; 3 takes the plain array.
  rng = np.random.default_rng(stack_size)
  stacker = envs.FrameStacker(stack_size)
  expected = None
  for t in range(20):
    frame = rng.integers(0, 256, (84, 84), dtype=np.uint8)
    if t % 7 == 0:
      expected = np.zeros((84, 84, stack_size), np.uint8)
      expected[..., -1] = frame
      got = stacker.reset(frame)
    else:
      expected = np.concatenate([expected[..., 1:], frame[..., None]], axis=-1)
      got = stacker.push(frame)
    np.testing.assert_array_equal(got, expected)
    got[...] = 7  # A copy: changing it changes nothing inside.
  np.testing.assert_array_equal(stacker.push(frame), np.concatenate(
      [expected[..., 1:], frame[..., None]], axis=-1))


def test_vector_env_mixes_screen_sizes():
  # Carnival's screens are 214 rows high, Pong's 210: resized in separate batches.
  specs = [("carnival", 0), ("pong", 1), ("carnival", 2)]
  singles = [envs.AtariEnv(g, s, max_episode_frames=200) for g, s in specs]
  stackers = [envs.FrameStacker() for _ in specs]
  with envs.VectorAtariEnv(specs, max_episode_frames=200) as vec:
    np.testing.assert_array_equal(vec.reset(),
                                  [st.reset(e.reset()) for e, st in zip(singles, stackers)])
    rng, ended = np.random.default_rng(0), 0
    for _ in range(60):
      actions = rng.integers(0, vec.num_actions)
      obs, _, _, _, info = vec.step(actions)
      for i, (env, stacker) in enumerate(zip(singles, stackers)):
        frame, _, terminated, truncated = env.step(int(actions[i]))
        np.testing.assert_array_equal(info["next_observation"][i], stacker.push(frame))
        if terminated or truncated:
          np.testing.assert_array_equal(obs[i], stacker.reset(env.reset()))
        else:
          np.testing.assert_array_equal(obs[i], info["next_observation"][i])
      ended += info["episode_done"].sum()
  assert ended == 3  # Each env was reset once (episodes cut at 50 steps).


SPECS = [("pong", 0), ("breakout", 1), ("freeway", 2)]


def check_vector_env(vec, steps=250, frames_per_episode=400):
  """Steps `vec` (SPECS, episodes truncated at 100 steps) against single envs + stackers."""
  singles = [envs.AtariEnv(g, s, max_episode_frames=frames_per_episode) for g, s in SPECS]
  stackers = [envs.FrameStacker() for _ in SPECS]
  obs = vec.reset()
  assert obs.shape == (3, 84, 84, 4) and obs.dtype == np.uint8
  np.testing.assert_array_equal(obs, [st.reset(e.reset()) for e, st in zip(singles, stackers)])
  assert not obs[:, :, :, :3].any() and obs[:, :, :, 3].any()
  rng = np.random.default_rng(0)
  returns, lengths, finished = np.zeros(3), np.zeros(3, int), 0
  for _ in range(steps):
    actions = rng.integers(0, vec.num_actions)
    obs, rewards, terminated, truncated, info = vec.step(actions)
    assert rewards.shape == terminated.shape == truncated.shape == (3,)
    assert info["next_observation"].shape == (3, 84, 84, 4)
    returns += rewards
    lengths += 1
    for i, (env, stacker) in enumerate(zip(singles, stackers)):
      frame, reward, term, trunc = env.step(int(actions[i]))
      np.testing.assert_array_equal(info["next_observation"][i], stacker.push(frame))
      assert (reward, term, trunc) == (rewards[i], terminated[i], truncated[i])
      assert info["episode_done"][i] == (term or trunc)
      if term or trunc:
        # The reported return is the sum of this env's rewards over the episode.
        assert info["episode_return"][i] == returns[i]
        assert info["episode_length"][i] == lengths[i] == 100
        returns[i], lengths[i] = 0.0, 0
        finished += 1
        # Auto-reset: the new episode's stack is zero-padded.
        new = stacker.reset(env.reset())
        np.testing.assert_array_equal(obs[i], new)
        assert not obs[i, :, :, :3].any() and obs[i, :, :, 3].any()
      else:
        assert np.isnan(info["episode_return"][i]) and info["episode_length"][i] == 0
        np.testing.assert_array_equal(obs[i], info["next_observation"][i])
  return finished


def test_vector_env_three_games_auto_reset_and_episode_returns():
  vec = envs.VectorAtariEnv(SPECS, max_episode_frames=400)
  assert vec.num_envs == 3 and vec.num_actions.tolist() == [6, 4, 3]
  assert check_vector_env(vec) == 6  # Every env finished two 100-step episodes.
  with pytest.raises(ValueError, match=r"env 2 \(Freeway\) has 3 actions .* got action 3"):
    vec.step([0, 0, 3])
  with pytest.raises(ValueError, match="one per env"):
    vec.step([0, 0])


def test_vector_env_worker_processes_match_in_process():
  with envs.VectorAtariEnv(SPECS, max_episode_frames=400, num_workers=2) as vec:
    assert check_vector_env(vec, steps=120) == 3
    workers = [proc for _, proc in vec._workers]  # pylint: disable=protected-access
  assert workers and not any(p.is_alive() for p in workers)
  with pytest.raises(RuntimeError, match="closed"):
    vec.reset()


def test_bad_input_names_the_offending_value():
  env = envs.AtariEnv("freeway", seed=0)
  env.reset()
  with pytest.raises(ValueError, match=r"Freeway has 3 actions \(indices 0..2\), got action 3"):
    env.step(3)
  with pytest.raises(ValueError, match="got action -1"):
    env.step(-1)
  with pytest.raises(ValueError, match=r"Pong has no mode 99; its ROM offers modes \[0, 1\]"):
    envs.AtariEnv("pong", seed=0, mode=99)
  with pytest.raises(ValueError, match=r"Freeway has no difficulty 5; .* \[0, 1\]"):
    envs.AtariEnv("freeway", seed=0, difficulty=5)
  with pytest.raises(ValueError, match="unknown game 'pongg'"):
    envs.AtariEnv("pongg", seed=0)
  with pytest.raises(ValueError, match="seed"):
    envs.AtariEnv("pong", seed=-1)
  with pytest.raises(ValueError, match="no mode 99"):
    envs.VectorAtariEnv([("pong", 0, 99, None)], num_workers=1)  # Raised in the worker.


def test_game_variants():
  assert envs.available_variants("breakout") == (tuple(range(0, 48, 4)), (0, 1))
  assert envs.available_variants("Freeway") == (tuple(range(8)), (0, 1))
  for game, mode, difficulty in [("breakout", 12, 1), ("freeway", 3, 1)]:
    env = envs.make_variant_env(game, mode, difficulty, seed=0)
    assert (env.mode, env.difficulty) == (mode, difficulty)
    frames, _ = run(env, np.random.default_rng(0).integers(0, env.num_actions, size=50))
    assert frames.shape == (51, 84, 84) and frames.any()
  default, _ = run(envs.AtariEnv("freeway", seed=0), [1] * 50)
  variant, _ = run(envs.AtariEnv("freeway", seed=0, mode=3, difficulty=1), [1] * 50)
  assert not np.array_equal(default, variant)  # The variant really is another game.
  vec = envs.VectorAtariEnv([envs.EnvSpec("breakout", 0, mode=4, difficulty=1), ("pong", 1)])
  assert vec.reset().shape == (2, 84, 84, 4)
