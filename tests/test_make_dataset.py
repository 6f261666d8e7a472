"""Emulator datasets (scaled_ql.data.generate) and the launch.make_dataset app, end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest

from scaled_ql import envs, games
from scaled_ql.data import dqn_replay, generate, rlds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_dataset(*args, expect_ok=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  proc = subprocess.run([sys.executable, "-m", "launch.make_dataset", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  if expect_ok:
    assert proc.returncode == 0, proc.stdout + proc.stderr
  else:
    assert proc.returncode != 0, proc.stdout
  return proc


def _files(data_dir):
  out = {}
  for root, _, names in os.walk(data_dir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, data_dir)] = f.read()
  return out


_ALE_ARGS = ("--source=ale", "--games=pong,breakout", "--runs=1", "--checkpoints_per_run=2",
             "--steps_per_checkpoint=100", "--policy=random")


@pytest.fixture(scope="module")
def ale_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("ale")
  proc = _make_dataset(*_ALE_ARGS, "--seed=3", f"--data_dir={data_dir}")
  assert "total:" in proc.stdout and "breakout" in proc.stdout
  return data_dir


def test_ale_dataset_is_deterministic_for_a_seed(ale_dir, tmp_path):
  first = _files(ale_dir)
  assert any(".tfrecord-" in f for f in first)
  _make_dataset(*_ALE_ARGS, "--seed=3", f"--data_dir={tmp_path / 'again'}")
  assert _files(tmp_path / "again") == first  # Same bytes: shards and metadata.
  _make_dataset(*_ALE_ARGS, "--seed=4", f"--data_dir={tmp_path / 'other'}")
  other = _files(tmp_path / "other")
  assert other.keys() == first.keys() and other != first


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_ale_dataset_contents(ale_dir, game):
  info = games.get_game(game)
  read = list(rlds.read_episodes(ale_dir, game))
  for checkpoint in (0, 1):
    episodes = [e for e in read if e["checkpoint_id"] == checkpoint]
    # Every checkpoint is exactly its step budget of transitions; its last episode is cut.
    assert sum(len(e["action"]) - 1 for e in episodes) == 100
    assert not episodes[-1]["is_terminal"][-1]
    assert [e["episode_id"] for e in episodes] == list(range(len(episodes)))
  for e in read:
    assert e["action"].max() < info.num_actions
    assert e["episode_return"] == np.float32(e["reward"].astype(np.float64).sum())
    assert e["action"][-1] == 0 and e["reward"][-1] == 0


def test_ale_bad_input(ale_dir, tmp_path):
  proc = _make_dataset("--source=ale", "--games=pong,pongg", f"--data_dir={tmp_path}",
                       expect_ok=False)
  assert "unknown game 'pongg'" in proc.stderr
  assert not os.listdir(tmp_path)
  before = _files(ale_dir)
  proc = _make_dataset(*_ALE_ARGS, "--seed=9", f"--data_dir={ale_dir}", expect_ok=False)
  assert "exist already" in proc.stderr and "--overwrite" in proc.stderr
  assert _files(ale_dir) == before


def noop_policy_factory(game_names):
  """A --q_policy factory for the test below: always the first action (NOOP)."""
  assert game_names == ["breakout"]
  return lambda stacked, game_index: np.zeros(len(stacked), np.int64)


def test_ale_epsilon_greedy_policy_flag(tmp_path):
  proc = _make_dataset("--source=ale", "--games=breakout", "--checkpoints_per_run=2",
                       "--steps_per_checkpoint=50", "--policy=eps_greedy",
                       "--q_policy=tests.test_make_dataset:noop_policy_factory",
                       "--epsilon_start=1", "--epsilon_end=0", f"--data_dir={tmp_path}")
  assert "policy eps_greedy" in proc.stdout
  read = list(rlds.read_episodes(tmp_path, "breakout"))
  greedy = np.concatenate([e["action"] for e in read if e["checkpoint_id"] == 1])
  random = np.concatenate([e["action"] for e in read if e["checkpoint_id"] == 0])
  assert not greedy.any() and random.any()
  proc = _make_dataset("--source=ale", "--games=breakout", "--policy=mixture",
                       f"--data_dir={tmp_path / 'x'}", expect_ok=False)
  assert "needs --q_policy=module:factory" in proc.stderr


def test_dqn_replay_cli(tmp_path):
  from test_data_dqn_replay import _DopamineBuffer, _fill  # pylint: disable=g-import-not-at-top
  pong = games.get_game("pong")
  buffer = _DopamineBuffer(120)
  rng = np.random.default_rng(0)
  replay_dir = tmp_path / "Pong" / "2" / "replay_logs"
  replay_dir.mkdir(parents=True)
  episodes = _fill(buffer, rng, 3, pong, lengths=(10, 20))
  buffer.save(replay_dir, 0)
  out = tmp_path / "out"
  proc = _make_dataset("--source=dqn_replay", f"--replay_dir={replay_dir.parent}", "--game=pong",
                       "--run=2", f"--data_dir={out}")
  assert "dqn_replay" in proc.stdout and "total: 3 episodes" in proc.stdout
  read = list(rlds.read_episodes(out, "pong", runs=[2]))
  assert [len(e["action"]) for e in read] == [len(episodes[0]["action"]) + 1,
                                              len(episodes[1]["action"]) + 1,
                                              len(episodes[2]["action"])]
  np.testing.assert_array_equal(read[2]["observation"], episodes[2]["observation"])
  # Bad input: a corrupt file named, the existing output untouched.
  before = _files(out)
  (replay_dir / "$store$_reward_ckpt.0.gz").write_bytes(b"\x1f\x8b garbage")
  proc = _make_dataset("--source=dqn_replay", f"--replay_dir={replay_dir}", "--game=pong",
                       "--run=2", f"--data_dir={out}", "--overwrite", expect_ok=False)
  assert "$store$_reward_ckpt.0.gz" in proc.stderr
  assert _files(out) == before


# --- scaled_ql.data.generate in-process.


class _RecordingPolicy:
  """A deterministic 'greedy' policy that records what it was shown."""

  def __init__(self, num_actions):
    self.num_actions, self.inputs, self.game_indices = num_actions, [], []

  def __call__(self, stacked, game_index):
    assert stacked.shape == (1, 84, 84, 4) and stacked.dtype == np.uint8
    self.inputs.append(stacked[0].copy())
    self.game_indices.append(game_index)
    return np.array([int(stacked[0, 40:44, 40:44, -1].sum()) % self.num_actions])


def test_epsilon_greedy_schedule_and_policy_inputs(tmp_path):
  game = games.get_game("breakout")
  q = _RecordingPolicy(game.num_actions)
  policy = generate.epsilon_greedy(q, epsilon_start=1.0, epsilon_end=0.0)
  assert [policy.epsilon(c, 3) for c in range(3)] == [1.0, 0.5, 0.0]
  generate.generate_run(tmp_path, game, 1, num_checkpoints=3, steps_per_checkpoint=80,
                        policy=policy, seed=1, game_index=7)
  read = list(rlds.read_episodes(tmp_path, game))
  assert set(q.game_indices) == {7}
  # Checkpoint 2 (epsilon 0) is all greedy: replay the policy on the stored frames, stacked as
  # FrameStacker stacks them, and get the stored actions; its inputs are exactly those stacks.
  last = [e for e in read if e["checkpoint_id"] == 2]
  stacks = []
  for e in last:
    stacker = envs.FrameStacker()
    stacks.append(stacker.reset(e["observation"][0]))
    for frame in e["observation"][1:-1]:
      stacks.append(stacker.push(frame))
  assert len(stacks) == 80
  np.testing.assert_array_equal(np.stack(q.inputs[-80:]), np.stack(stacks))
  replayed = [int(s[40:44, 40:44, -1].sum()) % game.num_actions for s in stacks]
  np.testing.assert_array_equal(np.concatenate([e["action"][:-1] for e in last]), replayed)
  # Checkpoint 0 (epsilon 1) never asks the policy; checkpoint 1 sometimes does.
  assert len(q.inputs) > 80 and len(q.inputs) < 160


def test_mixture_plays_whole_random_episodes(tmp_path):
  game = games.get_game("pong")
  q = _RecordingPolicy(game.num_actions)
  generate.generate_run(tmp_path, game, 1, num_checkpoints=1, steps_per_checkpoint=50,
                        policy=generate.epsilon_greedy(q, 0.0, 0.0, random_episode_prob=1.0))
  assert not q.inputs


def test_generation_is_per_game_run_deterministic(tmp_path):
  def episodes(data_dir, run, seed):
    generate.generate_run(data_dir, "freeway", run, num_checkpoints=1, steps_per_checkpoint=60,
                          seed=seed)
    return [e["action"] for e in rlds.read_episodes(data_dir, "freeway", runs=[run])]

  a = episodes(tmp_path / "a", 1, 0)
  generate.generate_run(tmp_path / "b", "pong", 1, num_checkpoints=1, steps_per_checkpoint=20)
  b = episodes(tmp_path / "b", 1, 0)  # Other games alongside change nothing.
  assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
  c = episodes(tmp_path / "b", 2, 0)
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_bad_policy_leaves_nothing(tmp_path):
  bad = generate.epsilon_greedy(lambda obs, g: np.array([99]), 0.0, 0.0)
  with pytest.raises(ValueError, match="q_policy returned action 99 for Pong"):
    generate.generate_run(tmp_path, "pong", 1, num_checkpoints=1, steps_per_checkpoint=10,
                          policy=bad)
  assert os.listdir(tmp_path / rlds.DEFAULT_DATASET_NAME) == []
  with pytest.raises(ValueError, match="steps_per_checkpoint must be a positive integer"):
    generate.generate_run(tmp_path, "pong", 1, num_checkpoints=1, steps_per_checkpoint=0)
  with pytest.raises(ValueError, match="epsilon_end must be in"):
    generate.epsilon_greedy(lambda o, g: o, 1.0, 2.0)
  assert dqn_replay.DATASET_NAME != rlds.DEFAULT_DATASET_NAME
