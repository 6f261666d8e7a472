"""The in-process replay of online fine-tuning: FramePools fed one env step at a time give the
targets of whole episodes bit for bit; contents survive a save and load; batches mix tables."""
import numpy as np
import pytest

from scaled_ql import data
from scaled_ql.data import rlds
from scaled_ql.replay.local import LocalReplay


def _episode(rng, length, terminal):
  frames = rng.integers(0, 255, size=(length, 84, 84), dtype=np.uint8)
  actions = rng.integers(0, 3, size=length - 1)
  rewards = rng.choice([0.0, 1.0, -2.0, 0.5], size=length - 1).astype(np.float32)
  return frames, actions, rewards, terminal


def _stream(pool, episode):
  frames, actions, rewards, terminal = episode
  pool.begin(frames[0])
  made = 0
  for t in range(len(actions)):
    last = t == len(actions) - 1
    made += pool.append(int(actions[t]), float(rewards[t]), frames[t + 1], done=last,
                        terminal=terminal and last)
  return made


def _whole(episode):
  frames, actions, rewards, terminal = episode
  return rlds.make_episode(frames, np.append(actions, 0), np.append(rewards, 0.0),
                           terminated=terminal, checkpoint_id=0, episode_id=0)


def _contents(pool):
  arrays = pool.state_arrays()
  return {k: v for k, v in arrays.items() if k not in ("episodes", "end")}


@pytest.mark.parametrize("n_step,capacity", [(3, 10_000), (1, 10_000), (10, 120)])
def test_streamed_episodes_have_the_targets_of_whole_ones(n_step, capacity):
  rng = np.random.default_rng(n_step)
  episodes = [_episode(rng, int(rng.integers(2, 40)), bool(rng.random() < 0.5))
              for _ in range(12)]
  whole = data.FramePool("pong", capacity, n_step=n_step, gamma=0.97)
  streamed = data.FramePool("pong", capacity, n_step=n_step, gamma=0.97)
  for episode in episodes:
    whole.add(_whole(episode))
    made = _stream(streamed, episode)
    assert made == len(episode[1])
    assert streamed.num_transitions == whole.num_transitions
  for key, value in _contents(whole).items():
    np.testing.assert_array_equal(_contents(streamed)[key], value, err_msg=key)
  u = np.arange(whole.num_transitions)
  out = [tuple(np.empty((len(u), 84, 84, 4), np.uint8) for _ in range(2))
         + (np.empty(len(u), np.int32), np.empty(len(u), np.float32), np.empty(len(u), np.float32))
         for _ in range(2)]
  whole.gather(u, *out[0])
  streamed.gather(u, *out[1])
  for a, b in zip(*out):
    np.testing.assert_array_equal(a, b)


def test_an_open_episode_is_sampleable_once_targets_are_final_and_saved_closed():
  rng = np.random.default_rng(0)
  frames, actions, rewards, _ = _episode(rng, 30, True)
  pool = data.FramePool("pong", 1000, n_step=3, gamma=0.99)
  pool.begin(frames[0])
  for t in range(10):  # 10 steps: windows of steps 0..7 complete (step 7's ends at step 10).
    pool.append(int(actions[t]), float(rewards[t]), frames[t + 1], done=False, terminal=False)
  assert pool.num_transitions == 8 and pool.is_open
  saved = pool.state_arrays()
  again = data.FramePool("pong", 1000, n_step=3, gamma=0.99)
  again.load_state_arrays(saved)
  assert again.num_transitions == 8 and not again.is_open and again.num_frames == 11
  for key, value in _contents(pool).items():
    np.testing.assert_array_equal(_contents(again)[key], value, err_msg=key)


def test_an_episode_longer_than_the_pool_is_cut_not_lost():
  rng = np.random.default_rng(1)
  frames, actions, rewards, _ = _episode(rng, 50, False)
  pool = data.FramePool("pong", 20, n_step=3, gamma=0.99)
  pool.begin(frames[0])
  for t in range(49):
    pool.append(int(actions[t]), float(rewards[t]), frames[t + 1], done=False, terminal=False)
  assert 0 < pool.num_frames <= 20 and pool.num_transitions > 0


def test_local_replay_saves_loads_and_mixes_offline_rows(tmp_path):
  rng = np.random.default_rng(2)
  replay = LocalReplay("pong", 2, 400, batch_size=8, n_step=3, gamma=0.99, offline_size=60,
                       keep_offline=True, offline_rows=2)
  offline = _episode(rng, 31, True)
  replay.add_offline(_whole(offline))
  for env in range(2):
    _stream_env(replay, env, _episode(rng, 25, env == 0))
  assert replay.sizes() == {"online": 48, "offline": 30} and replay.inserted == 48
  batch = replay.sample(np.random.default_rng(0))
  assert batch.observation.shape == (8, 84, 84, 4) and batch.game_id.tolist() == [0] * 8
  path = str(tmp_path / "replay.npz")
  replay.save(path)
  other = LocalReplay("pong", 2, 400, batch_size=8, n_step=3, gamma=0.99, offline_size=60,
                      keep_offline=True, offline_rows=2)
  other.load(path)
  assert other.sizes() == replay.sizes() and other.inserted == replay.inserted
  again = other.sample(np.random.default_rng(0))
  for a, b in zip(batch, again):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="2 emulators"):
    LocalReplay("pong", 3, 400, batch_size=8, n_step=3, gamma=0.99, offline_size=60,
                offline_rows=2).load(path)


def test_without_keep_offline_seeded_episodes_are_evicted_first():
  rng = np.random.default_rng(3)
  replay = LocalReplay("pong", 1, 60, batch_size=4, n_step=1, gamma=0.99, offline_size=40,
                       keep_offline=False)
  replay.add_offline(_whole(_episode(rng, 21, True)))
  replay.add_offline(_whole(_episode(rng, 21, True)))
  _stream_env(replay, 0, _episode(rng, 30, False))
  assert replay.offline.num_episodes == 1 and replay.online_transitions == 29


def _stream_env(replay, env, episode):
  frames, actions, rewards, terminal = episode
  replay.begin(env, frames[0])
  for t in range(len(actions)):
    last = t == len(actions) - 1
    replay.append(env, int(actions[t]), float(rewards[t]), frames[t + 1], done=last,
                  terminal=terminal and last)


def test_one_epsilon_schedule_for_both_backends_and_the_logged_agent():
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from scaled_ql import actors  # pylint: disable=g-import-not-at-top
  from scaled_ql.train import logged_agent  # pylint: disable=g-import-not-at-top

  o = load_config("configs/finetune.py:online_cpu").online
  o.epsilon_start, o.epsilon, o.epsilon_decay_steps = 0.8, 0.1, 1000
  assert [actors.epsilon_at(s, o) for s in (0, 500, 1000, 5000)] == pytest.approx(
      [0.8, 0.45, 0.1, 0.1])
  # The Reverb actors read the same fields from their spec (actor_pool writes them).
  spec = dict(epsilon_start=0.8, epsilon=0.1, epsilon_decay_steps=1000)
  assert actors.epsilon_at(500, spec) == actors.epsilon_at(500, o)
  o.epsilon_decay_steps = 0
  assert actors.epsilon_at(0, o) == 0.1
  agent = load_config("configs/agent.py:tiny")
  total = 1000
  decay = max(agent.epsilon_decay_fraction * total, 1.0)
  assert logged_agent.epsilon_at(agent, 100, total) == (
      agent.epsilon_start + (agent.epsilon_end - agent.epsilon_start) * min(100 / decay, 1.0))
