"""The uniform stream (scaled_ql.data.rlds.stream) with the real reader and sampler: pools that
hold the whole selection in proportion, exact resume, host shares, and bad input."""
import collections
import itertools
import os

import numpy as np
import pytest

from scaled_ql import data

RUNS, CHECKPOINTS, EPISODES = 5, 10, 6  # Per checkpoint split: 300 episodes, stored in order.
GAME = "pong"


def _label_frame(run, checkpoint):
  return np.uint8(run * 20 + checkpoint)


@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
  """An ordered dataset: 5 runs x 10 checkpoints x 6 short episodes, frames labelled."""
  root = str(tmp_path_factory.mktemp("ordered"))
  rng = np.random.default_rng(0)
  for run in range(1, RUNS + 1):
    with data.EpisodeWriter(root, GAME, run, encode_threads=1, shard_bytes=6_000) as writer:
      for c in range(CHECKPOINTS):
        for e in range(EPISODES):
          t = int(rng.integers(5, 12))
          writer.write(data.make_episode(
              np.full((t, 84, 84), _label_frame(run, c), np.uint8), rng.integers(0, 3, t),
              rng.normal(size=t), terminated=bool(e % 2), checkpoint_id=c, episode_id=e))
  return root


def _labels(root, **kw):
  """stream position -> (run, checkpoint) over three epochs, from the episodes themselves."""
  stream = data.UniformStream(root, GAME, **kw)
  out = {}
  for episode in itertools.islice(stream(0), 3 * stream.epoch_length):
    out[episode["stream_position"]] = (episode["run"], episode["checkpoint_id"])
  return out


def _spread(pool, labels):
  """The largest deviation of the pool's transitions per run, and per checkpoint, from the
  selection's shares (every run 1/5 and every checkpoint 1/10 of the episodes)."""
  runs, ckpts = collections.Counter(), collections.Counter()
  for live in pool.episodes():
    run, ckpt = labels[live.position]
    runs[run] += live.length - 1
    ckpts[ckpt] += live.length - 1
  total = sum(runs.values())
  run_dev = max(abs(runs[r] / total - 1 / RUNS) for r in range(1, RUNS + 1))
  ckpt_dev = max(abs(ckpts[c] / total - 1 / CHECKPOINTS) for c in range(CHECKPOINTS))
  return run_dev, ckpt_dev


def _sampler(sources, **kw):
  args = dict(batch_size=16, pool_frames=450, refresh_every=2, samples_per_transition=1.0,
              seed=3)
  args.update(kw)
  return data.MultiGameSampler(sources, [GAME], args.pop("batch_size"), args.pop("pool_frames"),
                               **args)


def test_pools_hold_every_run_and_checkpoint_in_proportion(ordered):
  labels = _labels(ordered, seed=0)
  stream = data.UniformStream(ordered, GAME, seed=0)
  assert stream.epoch_length == RUNS * CHECKPOINTS * EPISODES
  sampler = _sampler({GAME: stream})
  next(sampler)
  pool = sampler.pools[0]
  # The pool holds under a fifth of the data (450 of ~2,500 frames)...
  assert pool.num_frames <= 450 and stream.epoch_length > 4 * pool.num_episodes
  # ...yet every run and checkpoint in proportion, after the fill and after many refreshes,
  # across epoch boundaries.
  for steps in (0, 40, 200):
    for _ in range(steps):
      next(sampler)
    run_dev, ckpt_dev = _spread(pool, labels)
    assert run_dev < 0.08 and ckpt_dev < 0.07, (steps, run_dev, ckpt_dev)
  assert sampler._streams[0].consumed > 2 * stream.epoch_length  # Two epochs were read.

  # The stored order (a time window) fails the same bound: the test can tell them apart.
  ordered_source = lambda start: data.read_episodes(ordered, GAME, start=start)
  window = _sampler({GAME: ordered_source}, samples_per_transition=None, refresh_every=1000)
  window.sample(0)
  position_labels = {i: (e["run"], e["checkpoint_id"])
                     for i, e in enumerate(data.read_episodes(ordered, GAME))}
  run_dev, ckpt_dev = _spread(window.pools[0], position_labels)
  assert run_dev > 0.5  # Run 1 only: 4 of the 5 runs are missing.


def test_resume_mid_stream_gives_identical_batches(ordered):
  def make():
    return _sampler({GAME: data.UniformStream(ordered, GAME, seed=5)}, seed=11)

  a = make()
  for _ in range(57):
    next(a)
  state = a.state_dict()
  expected = [next(a) for _ in range(150)]  # Crosses an epoch boundary.
  assert a._streams[0].consumed > a._streams[0].pass_length
  b = make()
  b.load_state_dict(state)
  for want in expected:
    got = next(b)
    for x, y in zip(want, got):
      np.testing.assert_array_equal(x, y)
  assert b.state_dict() == a.state_dict()


def test_epochs_differ_and_are_fixed_by_seed_host_and_epoch(ordered):
  s = data.UniformStream(ordered, GAME, seed=1)
  first, second = s.schedule(0), s.schedule(1)
  assert not np.array_equal(first[0], second[0])
  again = data.UniformStream(ordered, GAME, seed=1).schedule(1)
  np.testing.assert_array_equal(second[0], again[0])
  np.testing.assert_array_equal(second[1], again[1])
  # Every unit's episodes appear once per epoch, in stored order.
  for unit in range(s.num_units):
    np.testing.assert_array_equal(first[1][first[0] == unit],
                                  np.arange(np.sum(first[0] == unit)))


def test_hosts_share_every_run_and_checkpoint(ordered):
  seen = []
  for host in range(3):
    stream = data.UniformStream(ordered, GAME, shard_index=host, num_shards=3, seed=2)
    episodes = list(itertools.islice(stream(0), stream.epoch_length))
    keys = [(e["run"], e["checkpoint_id"], e["episode_id"]) for e in episodes]
    assert {(r, c) for r, c, _ in keys} == {(r, c) for r in range(1, RUNS + 1)
                                            for c in range(CHECKPOINTS)}
    seen.extend(keys)
  assert len(seen) == len(set(seen)) == RUNS * CHECKPOINTS * EPISODES


def test_uniform_episodes_prefix_covers_the_selection(ordered):
  prefix = list(itertools.islice(data.uniform_episodes(ordered, GAME, checkpoints=range(5)), 50))
  assert {e["run"] for e in prefix} == set(range(1, RUNS + 1))
  assert {e["checkpoint_id"] for e in prefix} == set(range(5))
  everything = list(data.uniform_episodes(ordered, GAME, runs=[2]))
  assert len(everything) == CHECKPOINTS * EPISODES  # One epoch, then it ends.


def test_steps_per_pass_matches_the_steps_taken(ordered):
  stream = data.UniformStream(ordered, GAME, seed=4)
  sampler = _sampler({GAME: stream}, samples_per_transition=2.0)
  predicted = sampler.steps_per_pass()
  assert predicted > 10
  step = 0
  while sampler._streams[0].consumed < stream.epoch_length:
    next(sampler)
    step += 1
  assert abs(step - predicted) <= 0.2 * predicted + sampler.refresh_every
  everything = _sampler({GAME: data.UniformStream(ordered, GAME)}, pool_frames=10_000)
  assert everything.steps_per_pass() == 0  # The selection fits: resident, never re-read.
  assert everything.pools[0].num_episodes == RUNS * CHECKPOINTS * EPISODES  # Each once.
  batches = [next(everything) for _ in range(3)]
  restored = _sampler({GAME: data.UniformStream(ordered, GAME)}, pool_frames=10_000)
  restored.load_state_dict(everything.state_dict())
  for x, y in zip(next(everything), next(restored)):
    np.testing.assert_array_equal(x, y)
  assert batches


def test_bad_selections_and_settings_fail_before_training(ordered, tmp_path):
  with pytest.raises(data.DatasetError, match=r"has no checkpoint\(s\) \[40, 41\]"):
    data.UniformStream(ordered, GAME, checkpoints=[40, 41])
  with pytest.raises(data.DatasetError, match="has no Pong run"):
    data.uniform_sources(ordered, [GAME], runs=[9])
  with pytest.raises(ValueError, match="do not fit a pool of 6 frames"):
    _sampler({GAME: data.UniformStream(ordered, GAME)}, pool_frames=6).sample(0)
  with pytest.raises(ValueError, match="never replaces any of it"):
    _sampler({GAME: data.UniformStream(ordered, GAME)}, refresh_every=0,
             samples_per_transition=None).sample(0)
  for bad in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError, match="samples_per_transition must be a positive"):
      _sampler({GAME: data.UniformStream(ordered, GAME)}, samples_per_transition=bad)
  with pytest.raises(ValueError, match="needs refresh_every > 0"):
    _sampler({GAME: data.UniformStream(ordered, GAME)}, refresh_every=0)


def test_a_corrupt_record_mid_stream_names_the_file(ordered, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "copy")
  shutil.copytree(ordered, root)
  run_dir = data.find_sources(root, GAME, runs=[3])[0].path
  shard = sorted(os.path.join(run_dir, f) for f in os.listdir(run_dir) if "checkpoint_04" in f)[0]
  raw = bytearray(open(shard, "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(raw))
  stream = data.UniformStream(root, GAME)
  read = 0
  with pytest.raises(data.CorruptDataError, match=rf"{shard}: corrupt"):
    for _ in stream(0):
      read += 1
  assert read > 0  # Met mid-stream, after good episodes.
  assert issubclass(data.CorruptDataError, data.DatasetError)


def test_single_train_split_layout_filters_on_metadata(tmp_path):
  # rlu_atari's layout: one 'train' split, the checkpoint only in each episode's metadata.
  rng = np.random.default_rng(1)
  for run in (1, 2):
    with data.EpisodeWriter(str(tmp_path), GAME, run, split_by_checkpoint=False,
                            encode_threads=1, shard_bytes=3_000) as writer:
      for c in range(4):
        for e in range(3):
          writer.write(data.make_episode(np.full((6, 84, 84), _label_frame(run, c), np.uint8),
                                         np.zeros(6, int), np.zeros(6), terminated=True,
                                         checkpoint_id=c, episode_id=e))
  stream = data.UniformStream(str(tmp_path), GAME, checkpoints=[1, 3], seed=0)
  episodes = list(itertools.islice(stream(0), 24))  # Two epochs of the 12 kept episodes.
  assert {e["checkpoint_id"] for e in episodes} == {1, 3}
  assert stream.epoch_length == 24  # Positions count every record, kept or not.
  tail = list(itertools.islice(stream(episodes[5]["stream_position"]), 5))
  for got, want in zip(tail, episodes[5:10]):
    assert got["stream_position"] == want["stream_position"]
    np.testing.assert_array_equal(got["observation"], want["observation"])
  with pytest.raises(data.DatasetError, match=r"selects nothing"):
    next(data.UniformStream(str(tmp_path), GAME, checkpoints=[7])(0))
