"""DQN Replay conversion on fixture files written exactly as Dopamine writes them.

`_DopamineBuffer` re-states the parts of Dopamine's OutOfGraphReplayBuffer that shape the files
(circular cursor, stack_size - 1 zero rows before every episode, invalid_range, `save` as gzip'd
np.save, np.empty storage), so the fixtures are files Dopamine could have written; the tests
check the conversion against the episodes that were added. (The conversion was also checked once
against dopamine-rl 4.1.2's own buffer: every transition its sampler returns, state and next-state
stacks included, equals the converted episodes stacked with zero padding.)
"""
import gzip
import os

import numpy as np
import pytest

from scaled_ql import games
from scaled_ql.data import dqn_replay, rlds

STACK = 4


class _DopamineBuffer:
  """Dopamine's OutOfGraphReplayBuffer add / save, for 84x84 uint8 frames."""

  def __init__(self, capacity, stack_size=STACK, update_horizon=1):
    self.capacity, self.stack_size, self.horizon = capacity, stack_size, update_horizon
    # Dopamine allocates with np.empty: rows not yet written hold garbage, which the
    # conversion must ignore (real Dopamine files showed actions like 41680896 there).
    garbage = np.random.default_rng(capacity)
    self.store = dict(
        observation=garbage.integers(0, 256, (capacity, 84, 84), dtype=np.uint8),
        action=garbage.integers(-2**31, 2**31, capacity, dtype=np.int32),
        reward=np.full(capacity, np.nan, np.float32),
        terminal=garbage.integers(0, 2, capacity, dtype=np.uint8))
    self.add_count = np.array(0)
    self.invalid_range = np.zeros(stack_size)

  def cursor(self):
    return int(self.add_count) % self.capacity

  def add(self, observation, action, reward, terminal):
    if self.add_count == 0 or self.store["terminal"][self.cursor() - 1] == 1:
      for _ in range(self.stack_size - 1):
        self._add(np.zeros((84, 84), np.uint8), 0, 0.0, 0)
    self._add(observation, action, reward, terminal)

  def _add(self, observation, action, reward, terminal):
    c = self.cursor()
    for key, value in zip(("observation", "action", "reward", "terminal"),
                          (observation, action, reward, terminal)):
      self.store[key][c] = value
    self.add_count += 1
    c = self.cursor()
    self.invalid_range = np.array([(c - self.horizon + i) % self.capacity
                                   for i in range(self.stack_size + self.horizon)])

  def save(self, directory, iteration):
    arrays = {f"$store$_{k}": v for k, v in self.store.items()}
    arrays.update(add_count=self.add_count, invalid_range=self.invalid_range)
    for name, array in arrays.items():
      with open(os.path.join(directory, f"{name}_ckpt.{iteration}.gz"), "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb") as out:  # As Dopamine.
          np.save(out, array, allow_pickle=False)


def _fill(buffer, rng, num_episodes, game, lengths=(3, 40), last_unfinished=True):
  """Adds random episodes (nonzero frames); returns their rows' add indices and contents."""
  episodes = []
  for e in range(num_episodes):
    length = int(rng.integers(*lengths))
    unfinished = last_unfinished and e == num_episodes - 1
    ep = dict(observation=rng.integers(1, 256, (length, 84, 84), dtype=np.uint8),
              action=rng.integers(0, game.num_actions, length).astype(np.int32),
              reward=rng.normal(size=length).astype(np.float32).round(1),
              terminated=not unfinished, rows=[])
    for t in range(length):
      if buffer.add_count == 0 or buffer.store["terminal"][buffer.cursor() - 1] == 1:
        first_row_index = int(buffer.add_count) + buffer.stack_size - 1
      else:
        first_row_index = int(buffer.add_count)
      ep["rows"].append(first_row_index)
      terminal = int(t == length - 1 and not unfinished)
      buffer.add(ep["observation"][t], ep["action"][t], ep["reward"][t], terminal)
    episodes.append(ep)
  return episodes


def _expected(episodes, add_count, capacity):
  """The episodes the conversion keeps: wholly in the buffer, not starting at the oldest row."""
  oldest = max(0, add_count - capacity)
  wrapped = add_count > capacity
  kept = []
  for ep in episodes:
    first = ep["rows"][0]
    if not ep["terminated"] and len(ep["rows"]) == 1:
      continue  # A one-row unfinished episode holds no transition: dropped.
    if first > oldest or (not wrapped and first >= oldest):
      kept.append(ep)
  return kept


def _check_same(read, expected):
  assert len(read) == len(expected)
  for got, ep in zip(read, expected):
    k = len(ep["action"])
    if ep["terminated"]:
      assert len(got["observation"]) == k + 1
      np.testing.assert_array_equal(got["observation"][:k], ep["observation"])
      assert not got["observation"][k].any()  # The documented zero final frame.
      np.testing.assert_array_equal(got["action"], np.append(ep["action"], 0))
      np.testing.assert_array_equal(got["reward"], np.append(ep["reward"], 0))
      assert got["is_terminal"][-1] and not got["is_terminal"][:-1].any()
      np.testing.assert_array_equal(got["discount"][-2:], [0, 0])
    else:
      assert len(got["observation"]) == k
      np.testing.assert_array_equal(got["observation"], ep["observation"])
      np.testing.assert_array_equal(got["action"], ep["action"])
      np.testing.assert_array_equal(got["reward"], ep["reward"])
      assert not got["is_terminal"].any()
    assert got["is_first"][0] and got["is_last"][-1]
    assert got["episode_return"] == np.float32(ep["reward"].astype(np.float64).sum())


@pytest.fixture(scope="module")
def pong():
  return games.get_game("pong")


def _write_run(tmp_path, pong, capacity, num_episodes, seed, checkpoints=1, **kw):
  """Writes `checkpoints` saves of one growing buffer; returns (dir, {i: expected episodes})."""
  rng = np.random.default_rng(seed)
  buffer = _DopamineBuffer(capacity)
  replay_dir = tmp_path / "Pong" / "1" / "replay_logs"
  replay_dir.mkdir(parents=True)
  expected, all_episodes = {}, []
  for i in range(checkpoints):
    all_episodes.extend(_fill(buffer, rng, num_episodes, pong, **kw))
    buffer.save(replay_dir, i)
    expected[i] = [dict(ep) for ep in _expected(all_episodes, int(buffer.add_count), capacity)]
    if kw.get("last_unfinished", True):
      # The fixture's unfinished episode ends here in later saves: its last row becomes terminal
      # (the next add pads), so later checkpoints see it terminated.
      buffer.store["terminal"][buffer.cursor() - 1] = 1
      all_episodes[-1]["terminated"] = True
  return tmp_path / "Pong" / "1", expected, buffer


def test_unwrapped_buffer_round_trips(tmp_path, pong):
  replay_dir, expected, buffer = _write_run(tmp_path, pong, capacity=500, num_episodes=6, seed=0)
  assert int(buffer.add_count) < 500
  out = tmp_path / "out"
  result = dqn_replay.convert_run(replay_dir, out, "pong", 1)
  read = list(rlds.read_episodes(out, "pong"))
  _check_same(read, expected[0])
  assert [e["episode_id"] for e in read] == list(range(len(read)))
  assert {e["checkpoint_id"] for e in read} == {0}
  assert result.rows_dropped == {0: 0}
  assert not read[-1]["is_terminal"][-1]  # The unfinished last episode, truncated.


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_wrapped_buffers_round_trip(tmp_path, pong, seed):
  # Several checkpoints of one buffer that wraps several times (add_count > capacity); the
  # cursor lands mid-episode, in padding or on an episode's first row depending on the seed.
  replay_dir, expected, buffer = _write_run(tmp_path, pong, capacity=300, num_episodes=9,
                                            seed=seed, checkpoints=3)
  assert int(buffer.add_count) > 2 * 300
  out = tmp_path / "out"
  dqn_replay.convert_run(replay_dir, out, "pong", 3)
  for i in range(3):
    read = list(rlds.read_episodes(out, "pong", checkpoints=[i]))
    _check_same(read, expected[i])
    assert all(e["run"] == 3 and e["game"] == "pong" for e in read)


def test_cursor_positions_exhaustively(tmp_path, pong):
  # One history of short episodes, saved after each of 48 consecutive adds once the buffer has
  # wrapped, so that the oldest row (the cursor) takes every kind of position: mid-episode, a
  # padding row, an episode's first row, a terminal row; and the newest episode is unfinished in
  # most saves.
  rng = np.random.default_rng(7)
  capacity = 60
  buffer = _DopamineBuffer(capacity)
  replay_dir = tmp_path / "replay"
  replay_dir.mkdir()
  done, saved = [], []
  while len(saved) < 48:
    ep = _fill(_DopamineBuffer(capacity), rng, 1, pong, lengths=(2, 9), last_unfinished=False)[0]
    ep["rows"] = []
    for t in range(len(ep["action"])):
      starts = buffer.add_count == 0 or buffer.store["terminal"][buffer.cursor() - 1] == 1
      ep["rows"].append(int(buffer.add_count) + (STACK - 1 if starts else 0))
      terminal = int(t == len(ep["action"]) - 1)
      buffer.add(ep["observation"][t], ep["action"][t], ep["reward"][t], terminal)
      if int(buffer.add_count) > capacity and len(saved) < 48:
        partial = dict(observation=ep["observation"][:t + 1], action=ep["action"][:t + 1],
                       reward=ep["reward"][:t + 1], terminated=bool(terminal),
                       rows=list(ep["rows"]))
        saved.append((int(buffer.add_count), done + [partial]))
        buffer.save(replay_dir, len(saved) - 1)
    done.append(ep)
  out = tmp_path / "out"
  result = dqn_replay.convert_run(replay_dir, out, "pong", 1)
  by_checkpoint = {}
  for e in rlds.read_episodes(out, "pong"):
    by_checkpoint.setdefault(e["checkpoint_id"], []).append(e)
  cases = set()
  for i, (add_count, eps) in enumerate(saved):
    _check_same(by_checkpoint.get(i, []), _expected(eps, add_count, capacity))
    oldest = add_count - capacity
    for ep in eps:
      if oldest in range(ep["rows"][0] - STACK + 1, ep["rows"][0]):
        cases.add("padding")
      elif oldest == ep["rows"][0]:
        cases.add("first row")
        assert result.rows_dropped[i] >= len(ep["rows"])  # Documented: dropped.
      elif oldest == ep["rows"][-1] and ep["terminated"]:
        cases.add("terminal row")
      elif oldest in ep["rows"]:
        cases.add("mid-episode")
  assert cases == {"padding", "first row", "terminal row", "mid-episode"}


def test_buffer_ending_after_terminal_and_in_padding(tmp_path, pong):
  rng = np.random.default_rng(5)
  buffer = _DopamineBuffer(200)
  replay_dir = tmp_path / "replay"
  replay_dir.mkdir()
  eps = _fill(buffer, rng, 3, pong, last_unfinished=False)
  buffer.save(replay_dir, 0)  # Ends right after a terminal row.
  buffer._add(np.zeros((84, 84), np.uint8), 0, 0.0, 0)  # pylint: disable=protected-access
  buffer.save(replay_dir, 1)  # Ends inside the next episode's padding.
  out = tmp_path / "out"
  dqn_replay.convert_run(replay_dir, out, "pong", 1)
  for i in (0, 1):
    read = list(rlds.read_episodes(out, "pong", checkpoints=[i]))
    _check_same(read, eps)
    assert all(e["is_terminal"][-1] for e in read)


def test_streaming_in_small_chunks_matches(tmp_path, pong, monkeypatch):
  replay_dir, expected, _ = _write_run(tmp_path, pong, capacity=300, num_episodes=9, seed=11,
                                       checkpoints=2)
  monkeypatch.setattr(dqn_replay, "_CHUNK_ROWS", 7)  # Episodes and padding span many chunks.
  for ckpt in dqn_replay.check_replay_dir(replay_dir, "pong"):
    _check_same(list(dqn_replay.read_checkpoint(ckpt)), expected[ckpt.index])


# --- bad input: every case names the file and leaves existing output alone.


@pytest.fixture
def good_run(tmp_path, pong):
  replay_dir, _, _ = _write_run(tmp_path, pong, capacity=200, num_episodes=5, seed=3,
                                checkpoints=2)
  return replay_dir / "replay_logs"


def _convert(replay_dir, out):
  return dqn_replay.convert_run(replay_dir, out, "pong", 1)


def test_missing_file(good_run, tmp_path):
  (good_run / "$store$_reward_ckpt.1.gz").unlink()
  with pytest.raises(dqn_replay.ReplayFileError, match=r"missing \$store\$_reward_ckpt\.1\.gz"):
    _convert(good_run, tmp_path / "out")
  assert not (tmp_path / "out" / "dqn_replay" / "Pong_run_1").exists()


def test_empty_file_and_empty_dir(good_run, tmp_path):
  (good_run / "add_count_ckpt.0.gz").write_bytes(b"")
  with pytest.raises(dqn_replay.ReplayFileError, match=r"add_count_ckpt\.0\.gz is empty"):
    _convert(good_run, tmp_path / "out")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(dqn_replay.ReplayFileError, match="holds no DQN Replay checkpoint files"):
    _convert(empty, tmp_path / "out")
  with pytest.raises(dqn_replay.ReplayFileError, match="does not exist"):
    _convert(tmp_path / "nowhere", tmp_path / "out")


def test_truncated_observation_file_is_caught_before_conversion(good_run, tmp_path):
  path = good_run / "$store$_observation_ckpt.1.gz"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(dqn_replay.ReplayFileError, match=r"observation_ckpt\.1\.gz: truncated"):
    dqn_replay.check_replay_dir(good_run, "pong")


def test_corrupt_gzip(good_run, tmp_path):
  path = good_run / "$store$_terminal_ckpt.0.gz"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(dqn_replay.ReplayFileError, match=r"terminal_ckpt\.0\.gz"):
    _convert(good_run, tmp_path / "out")
  path.write_bytes(b"this is not gzip at all")
  with pytest.raises(dqn_replay.ReplayFileError, match=r"terminal_ckpt\.0\.gz: corrupt"):
    _convert(good_run, tmp_path / "out")


def test_corrupt_frames_mid_file_fail_during_conversion_and_leave_nothing(good_run, tmp_path):
  # The trailer (size) is intact, so only decompression finds the damage: late, but the output
  # is still never half-written and an existing dataset stays as it was.
  out = tmp_path / "out"
  first = _convert(good_run, out)
  before = sorted(os.listdir(first.path))
  path = good_run / "$store$_observation_ckpt.1.gz"
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 3, len(data) // 3 + 64):
    data[i] ^= 0x5A
  path.write_bytes(bytes(data))
  with pytest.raises(dqn_replay.ReplayFileError, match=r"observation_ckpt\.1\.gz"):
    dqn_replay.convert_run(good_run, out, "pong", 1, overwrite=True)
  assert sorted(os.listdir(first.path)) == before
  assert [d for d in os.listdir(out / "dqn_replay") if d.startswith(".")] == []
  assert len(list(rlds.read_episodes(out, "pong"))) > 0


def test_mismatched_lengths(good_run, tmp_path):
  with gzip.open(good_run / "$store$_action_ckpt.0.gz", "wb") as f:
    np.save(f, np.zeros(150, np.int32))
  with pytest.raises(dqn_replay.ReplayFileError, match="mismatched lengths"):
    _convert(good_run, tmp_path / "out")


def test_invalid_range_and_wrong_game(good_run, tmp_path):
  with gzip.open(good_run / "invalid_range_ckpt.1.gz", "wb") as f:
    np.save(f, np.arange(5))
  with pytest.raises(dqn_replay.ReplayFileError, match="does not match add_count"):
    _convert(good_run, tmp_path / "out")
  # Freeway has 3 actions: Pong's actions 3..5 are out of range.
  with pytest.raises(dqn_replay.ReplayFileError, match="wrong game"):
    dqn_replay.convert_run(good_run, tmp_path / "out", "freeway", 1)


def test_existing_output_is_refused(good_run, tmp_path):
  out = tmp_path / "out"
  result = _convert(good_run, out)
  with pytest.raises(rlds.DatasetExistsError, match="overwrite"):
    _convert(good_run, out)
  assert os.path.isfile(os.path.join(result.path, "dataset_info.json"))


def test_final_checkpoint_saved_with_add_count_mod_capacity_drops_its_headless_fragment(
    tmp_path, pong):
  # Dopamine's last checkpoint of a run holds add_count % capacity: it reads as an unwrapped
  # buffer although the buffer wrapped, so its row 0 can fall mid-episode, with no padding.
  for seed in range(100):  # The first fixture whose row 0 falls mid-episode.
    rng = np.random.default_rng(seed)
    buffer = _DopamineBuffer(300)
    episodes = _fill(buffer, rng, 14, pong, lengths=(20, 40), last_unfinished=True)
    true_count = int(buffer.add_count)
    cursor = true_count % 300
    oldest = true_count - cursor  # The add index of the file's row 0.
    if any(ep["rows"][0] < oldest <= ep["rows"][-1] for ep in episodes):
      break
  assert true_count > 300
  buffer.add_count = np.array(cursor)
  replay_dir = tmp_path / "Pong" / "1" / "replay_logs"
  replay_dir.mkdir(parents=True)
  buffer.save(replay_dir, 0)
  out = tmp_path / "out"
  result = dqn_replay.convert_run(tmp_path / "Pong" / "1", out, "pong", 1)
  assert result.rows_dropped[0] > 0
  # What is kept: the episodes wholly among the newest `cursor` rows, as for a wrapped buffer.
  _check_same(list(rlds.read_episodes(out, "pong")), _expected(episodes, true_count, cursor))


def test_dqn_replay_rewards_are_named_clipped(good_run, tmp_path):
  result = _convert(good_run, tmp_path / "out")
  assert all(s.clipped_rewards and s.return_name == "mean clipped return"
             for s in result.splits)
  source = rlds.find_sources(tmp_path / "out", "pong")[0]
  assert source.dataset_name == dqn_replay.DATASET_NAME and source.clipped_rewards
  assert "clipped" in dqn_replay.__doc__ and "Dopamine's runner" in dqn_replay.__doc__
