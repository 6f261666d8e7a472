"""The RLDS/TFDS episode format: writer, reader, the three rlu_atari layouts, bad input."""
import json
import os

import numpy as np
import pytest

from scaled_ql import envs, games
from scaled_ql.data import rlds

GAME = games.get_game("breakout")


def _play(game, seed, checkpoint_id, episode_id, max_episode_frames=600):
  """One real emulator episode with random actions (game over or truncated by the frame cap)."""
  env = envs.AtariEnv(game, seed, max_episode_frames=max_episode_frames)
  rng = np.random.default_rng(seed)
  frames, actions, rewards = [env.reset()], [], []
  while True:
    actions.append(int(rng.integers(env.num_actions)))
    frame, reward, terminated, truncated = env.step(actions[-1])
    frames.append(frame)
    rewards.append(reward)
    if terminated or truncated:
      break
  return rlds.make_episode(np.stack(frames), actions + [0], rewards + [0.0],
                           terminated=terminated, checkpoint_id=checkpoint_id,
                           episode_id=episode_id)


@pytest.fixture(scope="module")
def episodes():
  """9 Breakout episodes over checkpoints 0..2, both game overs and truncations."""
  out = [_play(GAME, 10 * c + e, c, e) for c in range(3) for e in range(3)]
  terminal = [bool(e["is_terminal"][-1]) for e in out]
  assert any(terminal) and not all(terminal)
  return out


def _write(data_dir, episodes, run=1, **kwargs):
  with rlds.EpisodeWriter(data_dir, GAME, run, **kwargs) as writer:
    for episode in episodes:
      writer.write(episode)
  return writer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, episodes):
  data_dir = tmp_path_factory.mktemp("data")
  _write(data_dir, episodes, run=1)
  _write(data_dir, episodes[:4], run=2)
  return data_dir


def _key(e):
  return (e["run"], e["checkpoint_id"], e["episode_id"])


def _assert_same(got, want):
  for k in rlds.STEP_KEYS:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert got["observation"].dtype == np.uint8 and got["action"].dtype == np.int32
  for k in ("reward", "discount"):
    assert got[k].dtype == np.float32
  for k in ("is_first", "is_last", "is_terminal"):
    assert got[k].dtype == np.bool_
  assert got["checkpoint_id"] == want["checkpoint_id"]
  assert got["episode_id"] == want["episode_id"]
  assert got["episode_return"] == want["episode_return"]


def test_round_trip_keeps_every_step(dataset, episodes):
  read = list(rlds.read_episodes(dataset, "breakout", runs=[1]))
  assert len(read) == len(episodes)
  for got, want in zip(read, episodes):  # Order: splits, then as written.
    _assert_same(got, want)
    assert got["game"] == "breakout" and got["run"] == 1
    assert got["dataset"] == rlds.DEFAULT_DATASET_NAME
    # The RLDS contract the sampler relies on.
    assert got["episode_return"] == np.float32(got["reward"].astype(np.float64).sum())
    assert got["action"].min() >= 0 and got["action"].max() < GAME.num_actions
    assert got["is_first"][0] and got["is_first"].sum() == 1
    assert got["is_last"][-1] and got["is_last"].sum() == 1
    assert not got["is_terminal"][:-1].any()
    if got["is_terminal"][-1]:
      np.testing.assert_array_equal(got["discount"][-2:], [0, 0])
      assert (got["discount"][:-2] == 1).all()
    else:
      assert (got["discount"] == 1).all()


def test_tensorflow_sees_no_accelerator():
  tf = rlds.format._tf()  # What the writer imports.
  assert tf.config.get_visible_devices("GPU") == []


_NO_TENSORFLOW = """
import sys
class Refuse:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
      raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Refuse())
from scaled_ql.data import rlds
episodes = list(rlds.read_episodes(sys.argv[1], "breakout", runs=[1], checkpoints=[1, 2]))
stream = rlds.UniformStream(sys.argv[1], "breakout", runs=[2])
streamed = [[e["checkpoint_id"], e["episode_id"]] for e, _ in zip(stream(0), range(4))]
print(len(episodes), sum(len(e["observation"]) for e in episodes), streamed)
"""


def test_reading_needs_no_tensorflow(dataset, episodes):
  """Reading (stored order and the uniform stream) works where TensorFlow cannot be imported."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, str(dataset)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  count, frames, streamed = result.stdout.split(" ", 2)
  assert int(count) == 6 and int(frames) == sum(len(e["observation"]) for e in episodes[3:])
  assert sorted(json.loads(streamed)) == [[0, 0], [0, 1], [0, 2], [1, 0]]  # Run 2's epoch.


def test_records_are_read_as_tensorflow_reads_them(tmp_path):
  """TFRecord framing, the Example wire format (negative and large int64s, floats, bytes) and
  PNGs with adaptive filters (TensorFlow's encoder), against TensorFlow's own reading."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scaled_ql.data.rlds import records  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 84, 84), dtype=np.uint8)
  frames[1] = np.arange(84, dtype=np.uint8)[:, None] * 3  # Rows that filters compress.
  ints = [0, 1, 127, 128, 300, -1, -(1 << 63), (1 << 63) - 1]
  path = str(tmp_path / "x.tfrecord")
  want = []
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(3):
      feature = {
          "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"", b"x" * 300 * i])),
          "f": tf.train.Feature(float_list=tf.train.FloatList(value=[-1.5, 3e38, i])),
          "i": tf.train.Feature(int64_list=tf.train.Int64List(value=ints[i:])),
          "png": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[tf.io.encode_png(frames[i][..., None]).numpy(),
                     rlds.encode_png(frames[i])])),
          "empty": tf.train.Feature()}
      want.append(tf.train.Example(features=tf.train.Features(feature=feature)))
      writer.write(want[-1].SerializeToString())
  got = list(records.records(path))
  assert got == [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert list(records.records(path, skip=2)) == got[2:]
  for i, record in enumerate(got):
    ex = records.parse_example(record)
    assert sorted(ex) == ["b", "empty", "f", "i", "png"]
    assert ex["b"] == list(want[i].features.feature["b"].bytes_list.value)
    np.testing.assert_array_equal(ex["f"], np.array([-1.5, 3e38, i], np.float32))
    np.testing.assert_array_equal(ex["i"], np.array(ints[i:], np.int64))
    assert ex["empty"].size == 0
    for png in ex["png"]:  # TensorFlow's PNG (by Pillow here), then ours.
      np.testing.assert_array_equal(records.decode_png(png), frames[i])
    np.testing.assert_array_equal(records.decode_pngs(ex["png"] * 2), [frames[i]] * 4)
  # A flipped bit anywhere in a record is found by its CRCs.
  raw = bytearray(open(path, "rb").read())
  for at in (3, 9, len(raw) // 2):
    bad = bytearray(raw)
    bad[at] ^= 0x10
    open(path, "wb").write(bytes(bad))
    with pytest.raises(records.RecordError, match="CRC mismatch"):
      list(records.records(path))
  for png in (rlds.encode_png(frames[0]), tf.io.encode_png(frames[0][..., None]).numpy()):
    with pytest.raises(records.RecordError, match="corrupt PNG frame"):
      records.decode_png(png[:-30])
  with pytest.raises(records.RecordError, match="corrupt PNG frame"):
    records.decode_pngs([tf.io.encode_png(frames[0][..., None]).numpy()[:-30]])


def test_tfds_reads_our_folders(dataset, episodes):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = rlds.find_sources(dataset, "breakout", runs=[1])[0]
  builder = tfds.builder_from_directory(source.path)
  assert builder.info.config_name == "Breakout_run_1"
  assert sorted(builder.info.splits) == ["checkpoint_00", "checkpoint_01", "checkpoint_02"]
  first = next(iter(builder.as_dataset(split="checkpoint_01")))
  steps = list(first["steps"].as_numpy_iterator())
  want = episodes[3]
  np.testing.assert_array_equal(np.stack([s["observation"][..., 0] for s in steps]),
                                want["observation"])
  np.testing.assert_array_equal([s["action"] for s in steps], want["action"])
  assert int(first["checkpoint_id"]) == 1


def test_serialization_is_what_tfds_writes(episodes):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.rl_unplugged import atari_utils  # pylint: disable=g-import-not-at-top
  features = atari_utils.features_dict()  # RL Unplugged's own definition.
  ours = rlds.features()
  assert ours.get_serialized_info() == features.get_serialized_info()
  episode = dict(episodes[0])
  tfds_example = dict(steps={k: episode[k] for k in rlds.STEP_KEYS},
                      **{k: episode[k] for k in rlds.METADATA_KEYS})
  tfds_example["steps"]["observation"] = episode["observation"][..., None]
  theirs = example_serializer.ExampleSerializer(features.get_serialized_info()).serialize_example(
      features.encode_example(tfds_example))
  a = tf.train.Example.FromString(rlds.serialize_episode(episode)).features.feature
  b = tf.train.Example.FromString(theirs).features.feature
  assert sorted(a) == sorted(b)
  for key in a:
    if key != "steps/observation":
      assert a[key] == b[key], key
  # PNG bytes differ (our encoder is faster and smaller); the pixels do not.
  for x, y in zip(a["steps/observation"].bytes_list.value, b["steps/observation"].bytes_list.value):
    np.testing.assert_array_equal(tf.io.decode_png(x).numpy(), tf.io.decode_png(y).numpy())
  # Our reader reads TFDS's record (its PNGs by Pillow) as the episode.
  from scaled_ql.data.rlds import reader  # pylint: disable=g-import-not-at-top
  _assert_same(reader.parse_episode(theirs, None), episode)
  assert reader.parse_episode(theirs, frozenset([episode["checkpoint_id"] + 1])) is None


def test_checkpoint_selection(dataset, episodes):
  def ids(checkpoints):
    return [(e["checkpoint_id"], e["episode_id"])
            for e in rlds.read_episodes(dataset, "breakout", runs=[1], checkpoints=checkpoints)]

  assert ids(range(2)) == [(c, e) for c in range(2) for e in range(3)]  # "First 2 of 3".
  assert ids([2, 0]) == [(c, e) for c in (0, 2) for e in range(3)]
  assert ids(1) == [(1, e) for e in range(3)]
  with pytest.raises(rlds.DatasetError, match=r"no checkpoint\(s\) \[7\]"):
    rlds.read_episodes(dataset, "breakout", checkpoints=[1, 7])
  with pytest.raises(ValueError, match="non-negative"):
    rlds.read_episodes(dataset, "breakout", checkpoints=[-1])


def test_runs(dataset):
  assert [s.run for s in rlds.find_sources(dataset, "breakout")] == [1, 2]
  read = list(rlds.read_episodes(dataset, "breakout", runs=[2]))
  assert [_key(e) for e in read] == [(2, 0, e) for e in range(3)] + [(2, 1, 0)]
  with pytest.raises(rlds.DatasetError, match=r"no Breakout run\(s\) \[3\]"):
    rlds.read_episodes(dataset, "breakout", runs=[3])


@pytest.mark.parametrize("num_shards", [2, 3, 5, 16])
def test_host_shards_are_disjoint_and_cover(dataset, num_shards):
  everything = sorted(_key(e) for e in rlds.read_episodes(dataset, "breakout"))
  shards = [[_key(e) for e in rlds.read_episodes(dataset, "breakout", shard_index=i,
                                                  num_shards=num_shards)]
            for i in range(num_shards)]
  flat = [k for shard in shards for k in shard]
  assert len(flat) == len(set(flat)) and sorted(flat) == everything
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 2  # Blocks rotate over splits: balanced.
  # Deterministic.
  again = [_key(e) for e in rlds.read_episodes(dataset, "breakout", shard_index=1,
                                                num_shards=num_shards)]
  assert again == shards[1]
  with pytest.raises(ValueError, match="shard_index"):
    rlds.read_episodes(dataset, "breakout", shard_index=num_shards, num_shards=num_shards)


_LAYOUTS = {  # name: (version, one split per checkpoint) as TFDS prepares them.
    "rlu_atari": ("1.3.0", False),
    "rlu_atari_checkpoints": ("1.1.0", True),
    "rlu_atari_checkpoints_ordered": ("1.1.0", True),
}


@pytest.fixture(scope="module")
def rlu_dir(tmp_path_factory, episodes):
  """The three RL Unplugged datasets, as `tfds.load(..., data_dir=)` leaves them on disk."""
  data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
  for name, (version, by_checkpoint) in _LAYOUTS.items():
    # Small shards so episodes span several files per split.
    _write(data_dir, episodes, run=2, dataset_name=name, version=version,
           split_by_checkpoint=by_checkpoint, shard_bytes=20_000)
  return data_dir


@pytest.mark.parametrize("name", sorted(_LAYOUTS))
def test_rlu_atari_layouts(rlu_dir, episodes, name):
  version, by_checkpoint = _LAYOUTS[name]
  source, = rlds.find_sources(rlu_dir, "breakout", dataset=name)
  assert source.path.endswith(os.path.join(name, "Breakout_run_2", version))
  assert source.split_by_checkpoint == by_checkpoint
  with open(os.path.join(source.path, "dataset_info.json")) as f:
    info = json.load(f)
  assert info["name"] == name and info["configName"] == "Breakout_run_2"
  splits = sorted(s["name"] for s in info["splits"])
  assert splits == (["checkpoint_00", "checkpoint_01", "checkpoint_02"] if by_checkpoint
                    else ["train"])
  assert any(len(s["shardLengths"]) > 1 for s in info["splits"])
  # Every layout gives the same episodes, quality selection and host shards.
  read = list(rlds.read_episodes(rlu_dir, "breakout", dataset=name))
  for got, want in zip(read, episodes):
    _assert_same(got, want)
  assert len(read) == len(episodes)
  low = [_key(e) for e in rlds.read_episodes(rlu_dir, "breakout", dataset=name,
                                              checkpoints=range(1))]
  assert low == [(2, 0, e) for e in range(3)]
  shards = [_key(e) for i in range(4)
            for e in rlds.read_episodes(rlu_dir, "breakout", dataset=name, shard_index=i,
                                        num_shards=4, checkpoints=[0, 2])]
  assert sorted(shards) == [(2, c, e) for c in (0, 2) for e in range(3)]
  # A dataset folder itself works as data_dir too.
  assert len(list(rlds.read_episodes(os.path.join(rlu_dir, name), "breakout"))) == len(episodes)


def test_several_datasets_need_a_name(rlu_dir):
  with pytest.raises(rlds.DatasetError, match="several datasets.*dataset=NAME"):
    rlds.read_episodes(rlu_dir, "breakout")
  with pytest.raises(rlds.DatasetError, match="no Pong data"):
    rlds.read_episodes(rlu_dir, "pong")


# --- Writing is atomic; bad input gets a clear error and leaves good data alone.


def test_existing_dataset_is_refused_then_overwritten(tmp_path, episodes):
  _write(tmp_path, episodes[:2])
  path = rlds.find_sources(tmp_path, GAME)[0].path
  before = {f: os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)}
  with pytest.raises(rlds.DatasetExistsError, match="overwrite"):
    rlds.EpisodeWriter(tmp_path, GAME, 1)
  assert {f: os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)} == before
  _write(tmp_path, episodes[2:5], overwrite=True)
  assert [e["episode_id"] for e in rlds.read_episodes(tmp_path, GAME)] == [2, 0, 1]
  assert os.listdir(tmp_path / rlds.DEFAULT_DATASET_NAME) == ["Breakout_run_1"]


def test_failure_mid_write_leaves_no_dataset_and_keeps_the_old_one(tmp_path, episodes):
  bad = dict(episodes[1], action=np.full_like(episodes[1]["action"], GAME.num_actions))
  with pytest.raises(ValueError, match="Breakout has 4 actions"):
    _write(tmp_path, [episodes[0], bad])
  assert os.listdir(tmp_path / rlds.DEFAULT_DATASET_NAME) == []  # Temporary files gone too.
  _write(tmp_path, episodes[:2])
  with pytest.raises(RuntimeError, match="crash"):
    with rlds.EpisodeWriter(tmp_path, GAME, 1, overwrite=True) as writer:
      writer.write(episodes[3])
      raise RuntimeError("crash")
  assert [e["episode_id"] for e in rlds.read_episodes(tmp_path, GAME)] == [0, 1]
  with pytest.raises(ValueError, match="no episodes"):
    _write(tmp_path, [], run=5)


def test_malformed_episodes_are_refused(tmp_path, episodes):
  good = episodes[0]
  cases = {
      "observation must be uint8": dict(good, observation=good["observation"].astype(np.int16)),
      "reward must have shape": dict(good, reward=good["reward"][:-1]),
      "is_first must be True at step 0 only": dict(good, is_first=np.ones_like(good["is_first"])),
      "is_terminal may only be True at the last step": dict(
          good, is_terminal=np.ones_like(good["is_terminal"])),
      "checkpoint_id must be a non-negative integer": dict(good, checkpoint_id=-1),
  }
  with rlds.EpisodeWriter(tmp_path, GAME, 1) as writer:
    for message, episode in cases.items():
      with pytest.raises(ValueError, match=message):
        writer.write(episode)
    writer.write(good)


def _shard_files(data_dir):
  path = rlds.find_sources(data_dir, GAME)[0].path
  return sorted(os.path.join(path, f) for f in os.listdir(path) if ".tfrecord-" in f)


def test_corrupt_tfrecord_is_named(tmp_path, episodes):
  _write(tmp_path, episodes)
  shard = _shard_files(tmp_path)[1]
  data = bytearray(open(shard, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(data))
  with pytest.raises(rlds.DatasetError, match=rf"{shard}: corrupt"):
    list(rlds.read_episodes(tmp_path, GAME))
  assert len(list(rlds.read_episodes(tmp_path, GAME, checkpoints=[0, 2]))) == 6


def test_truncated_and_missing_shards_are_named(tmp_path, episodes):
  _write(tmp_path, episodes)
  first, second, third = _shard_files(tmp_path)
  data = open(first, "rb").read()
  open(first, "wb").write(data[:len(data) - 100])  # Cut inside the last record.
  with pytest.raises(rlds.DatasetError, match=rf"{first}: corrupt"):
    list(rlds.read_episodes(tmp_path, GAME))
  # Cut at a record boundary: only the count in dataset_info.json shows it.
  lengths = []
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for record in tf.data.TFRecordDataset(second):
    lengths.append(len(record.numpy()) + 16)
  data = open(second, "rb").read()
  open(second, "wb").write(data[:sum(lengths[:-1])])
  with pytest.raises(rlds.DatasetError, match=rf"{second}: holds 2 episodes .* truncated"):
    list(rlds.read_episodes(tmp_path, GAME, checkpoints=[1]))
  os.remove(third)
  with pytest.raises(rlds.DatasetError, match=rf"shard file {third} is missing"):
    rlds.read_episodes(tmp_path, GAME, checkpoints=[2])
  open(third, "wb").close()
  with pytest.raises(rlds.DatasetError, match=rf"shard file {third} is empty"):
    rlds.read_episodes(tmp_path, GAME, checkpoints=[2])


def test_bad_directories_and_metadata(tmp_path, episodes):
  with pytest.raises(rlds.DatasetError, match="does not exist"):
    rlds.read_episodes(tmp_path / "nowhere", GAME)
  with pytest.raises(rlds.DatasetError, match="no Breakout data"):
    rlds.read_episodes(tmp_path, GAME)  # Empty directory.
  with pytest.raises(ValueError, match="unknown game 'breakot'"):
    rlds.read_episodes(tmp_path, "breakot")
  _write(tmp_path, episodes[:1])
  path = rlds.find_sources(tmp_path, GAME)[0].path
  info_path = os.path.join(path, "features.json")
  features = json.load(open(info_path))
  text = json.dumps(features).replace('"episode_return"', '"episode_score"')
  open(info_path, "w").write(text)
  with pytest.raises(rlds.DatasetError, match="features.json: not the rlu_atari episode features"):
    rlds.read_episodes(tmp_path, GAME)
  os.remove(os.path.join(path, "dataset_info.json"))
  with pytest.raises(rlds.DatasetError, match="holds no finished TFDS dataset"):
    rlds.read_episodes(tmp_path, GAME)


def test_start_skips_episodes_without_changing_the_rest(tmp_path):
  """`start` (used to resume a sampler's stream) gives exactly the tail of the full stream."""
  from scaled_ql import data
  rng = np.random.default_rng(0)
  with data.EpisodeWriter(str(tmp_path), "pong", 1, shard_bytes=20_000) as writer:
    for i in range(7):
      t = int(rng.integers(3, 9))
      writer.write(data.make_episode(
          rng.integers(0, 256, (t, 84, 84), dtype=np.uint8), rng.integers(0, 6, t),
          rng.normal(size=t).astype(np.float32), terminated=bool(i % 2),
          checkpoint_id=i // 3, episode_id=i))
  full = list(data.read_episodes(str(tmp_path), "pong"))
  assert len(full) == 7
  for start in (0, 1, 3, 6, 7, 9):
    tail = list(data.read_episodes(str(tmp_path), "pong", start=start))
    assert [e["episode_id"] for e in tail] == [e["episode_id"] for e in full[start:]]
    for a, b in zip(tail, full[start:]):
      np.testing.assert_array_equal(a["observation"], b["observation"])
  with pytest.raises(ValueError, match="start must be >= 0"):
    data.read_episodes(str(tmp_path), "pong", start=-1)


def _edit_features(path, edit):
  """Applies `edit(steps_features, episode_features)` to a dataset's features.json."""
  info_path = os.path.join(path, "features.json")
  features = json.load(open(info_path))

  def find(tree):  # The dicts that hold "reward" (steps) and "episode_return" (episode).
    if isinstance(tree, dict):
      if "reward" in tree and "observation" in tree:
        yield "steps", tree
      if "episode_return" in tree and "checkpoint_id" in tree:
        yield "episode", tree
      for value in tree.values():
        yield from find(value)

  found = dict(find(features))
  edit(found["steps"], found["episode"])
  json.dump(features, open(info_path, "w"))


def test_older_tfds_versions_with_clipped_fields_are_read(tmp_path, episodes):
  # rlu_atari before 1.3.0 and rlu_atari_checkpoints_ordered 1.0.0 also carry
  # steps/clipped_reward and clipped_episode_return (copies: the data were clipped already).
  _write(tmp_path, episodes[:3])
  source = rlds.find_sources(tmp_path, GAME)[0]

  def add_clipped(steps, episode):
    steps["clipped_reward"] = steps["reward"]
    episode["clipped_episode_return"] = episode["episode_return"]

  _edit_features(source.path, add_clipped)
  read = list(rlds.read_episodes(tmp_path, GAME))
  for got, want in zip(read, episodes[:3]):
    np.testing.assert_array_equal(got["reward"], want["reward"])
  assert len(read) == 3

  def drop_is_last(steps, episode):
    del steps["is_last"]

  _edit_features(source.path, drop_is_last)
  with pytest.raises(rlds.DatasetError, match=r"version 1\.0\.0 of this dataset lacks "
                     r"\['steps/is_last'\].*Prepare a newer version.*1\.3\.0"):
    rlds.read_episodes(tmp_path, GAME)


def test_corrupt_record_deep_in_a_stream_is_a_corrupt_data_error(tmp_path, episodes):
  _write(tmp_path, episodes)
  shard = _shard_files(tmp_path)[2]
  data = bytearray(open(shard, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(data))
  read = []
  with pytest.raises(rlds.CorruptDataError, match=rf"{shard}: corrupt") as caught:
    for episode in rlds.read_episodes(tmp_path, GAME):
      read.append(episode)
  assert len(read) >= 6  # The first two checkpoints came through before it.
  assert isinstance(caught.value, rlds.DatasetError)


_FOREIGN_PNGS = r"""
import tensorflow_datasets  # Imported first: then TF 2.15's exit went wrong (below).
from scaled_ql.data import rlds
import numpy as np
import tensorflow as tf
from scaled_ql.data.rlds import records
frame = np.arange(84 * 84, dtype=np.uint8).reshape(84, 84)
png = tf.io.encode_png(frame[..., None]).numpy()  # Adaptive filters: not ours.
assert records._decode_own(png) is None
frames = records.decode_pngs([png] * 3)
print(int((frames == frame).all()))
"""


def test_pngs_of_other_writers_decode_and_the_process_exits_quietly():
  """Frames not written by us go through TensorFlow's traced decoder (where installed); the
  process's exit prints nothing (TF 2.15 printed a TypeError from AtomicFunction.__del__)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "-c", _FOREIGN_PNGS], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr[-3000:]
  assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, \
      result.stderr[-3000:]
