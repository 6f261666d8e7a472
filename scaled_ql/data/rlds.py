"""Atari episodes on disk: RLDS in TFDS folders, the format of RL Unplugged's `rlu_atari*`.

One game-run is one TFDS dataset folder, laid out as the prepared RL Unplugged datasets are:

  {data_dir}/{dataset_name}/{AleName}_run_{k}/{version}/
      dataset_info.json  features.json
      {dataset_name}-checkpoint_00.tfrecord-00000-of-00001  ...

Each record is one episode (a `tf.train.Example`) with the features of
`tensorflow_datasets.rl_unplugged.atari_utils.features_dict()`: steps {observation: Image
(84, 84, 1) uint8 PNG, action int64, reward float32, discount float32, is_first, is_last,
is_terminal bool} and episode metadata {checkpoint_id int64, episode_id int64, episode_return
float32}. Two split layouts exist and both are read:
- one split per checkpoint, `checkpoint_00`, `checkpoint_01`, ... (ours, `rlu_atari_checkpoints`,
  `rlu_atari_checkpoints_ordered`): a quality subset reads only its splits;
- one split `train` with the checkpoint only in the metadata (`rlu_atari`): a quality subset
  parses every record and drops the others before their frames are decoded.

RLDS step semantics: step t holds observation o_t, the action a_t taken in it and the reward r_t
(unclipped) and discount d_t that followed. The last step (is_last) carries the final observation
only; its action and reward are unused by learners. is_terminal[-1] is True iff the episode ended
in a game over (nothing to bootstrap from); a truncated episode (time limit, end of a checkpoint's
data) has is_terminal all False. Discounts follow RL Unplugged's conversion: 1 everywhere, except
the last transition and the last step of a terminated episode, which get 0.

TensorFlow is imported lazily, only by the functions that need it, and is never allowed to see an
accelerator (JAX owns those).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import logging
import os
import re
import shutil
import struct
import uuid
import zlib
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from scaled_ql.games import Game, get_game

FRAME_SHAPE = (84, 84)
DEFAULT_DATASET_NAME = "scaled_ql_atari"  # Datasets this framework generates from the ALE.
DEFAULT_VERSION = "1.0.0"
TRAIN_SPLIT = "train"  # rlu_atari's single split.
STEP_KEYS = ("observation", "action", "reward", "discount", "is_first", "is_last", "is_terminal")
METADATA_KEYS = ("checkpoint_id", "episode_id", "episode_return")
# A shard file is closed once it holds this many bytes (the real datasets use ~hundreds of MB).
DEFAULT_SHARD_BYTES = 256 << 20
_DEFAULT_PARALLELISM = 2  # Episodes parsed and decoded concurrently by read_episodes.

_CONFIG_RE = re.compile(r"^(?P<game>[A-Za-z]+)_run_(?P<run>\d+)$")
_CHECKPOINT_SPLIT_RE = re.compile(r"^checkpoint_(?P<id>\d+)$")

CheckpointSelection = Union[None, int, Iterable[int]]


class DatasetError(ValueError):
  """A dataset on disk is missing, malformed or corrupt; the message names the file."""


class DatasetExistsError(FileExistsError):
  """The output dataset exists already and overwriting was not asked for."""


# ---------------------------------------------------------------------------------------------
# TensorFlow, imported lazily and kept off accelerators.


@functools.lru_cache(maxsize=None)
def _tf():
  """Imports TensorFlow with every GPU hidden from it (TF is for data only; JAX owns GPUs)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF was initialised already by someone else.
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised with GPUs visible before scaled_ql.data could "
                      "hide them; it may take accelerator memory.")
  return tf


@functools.lru_cache(maxsize=None)
def _tfds():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def features():
  """The TFDS features of an episode: those of RL Unplugged's Atari datasets."""
  tfds = _tfds()
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": tfds.features.Image(shape=(*FRAME_SHAPE, 1), dtype=np.uint8,
                                             encoding_format="png"),
          "action": np.int64,
          "reward": tfds.features.Scalar(dtype=np.float32, doc="Unclipped reward."),
          "is_terminal": np.bool_,
          "is_first": np.bool_,
          "is_last": np.bool_,
          "discount": np.float32,
      }),
      "checkpoint_id": np.int64,
      "episode_id": np.int64,
      "episode_return": tfds.features.Scalar(dtype=np.float32,
                                             doc="Sum of the (unclipped) rewards."),
  })


def _expected_serialized_info() -> dict[str, tuple[str, tuple]]:
  """{flat feature key: (dtype name, shape)} that every readable dataset must have."""
  out = {f"steps/{k}": (d, (None,)) for k, d in (
      ("observation", "string"), ("action", "int64"), ("reward", "float32"),
      ("discount", "float32"), ("is_first", "bool"), ("is_last", "bool"),
      ("is_terminal", "bool"))}
  out.update({"checkpoint_id": ("int64", ()), "episode_id": ("int64", ()),
              "episode_return": ("float32", ())})
  return out


def checkpoint_split(checkpoint_id: int) -> str:
  """The split name of a checkpoint, as in rlu_atari_checkpoints*: 'checkpoint_07'."""
  return f"checkpoint_{int(checkpoint_id):02d}"


def config_name(game: Union[str, Game], run: int) -> str:
  """The TFDS config (folder) name of a game-run, as in rlu_atari: 'Pong_run_1'."""
  game = game if isinstance(game, Game) else get_game(game)
  return f"{game.ale_name}_run_{int(run)}"


# ---------------------------------------------------------------------------------------------
# Episodes in memory.


def make_episode(observation: np.ndarray, action: np.ndarray, reward: np.ndarray, *,
                 terminated: bool, checkpoint_id: int, episode_id: int) -> dict[str, Any]:
  """Builds an RLDS episode dict (the flags, discounts and return) from its T steps.

  `observation` [T, 84, 84] uint8 holds every observation, the final one last; `action` and
  `reward` [T] hold, for step t, the action taken and the reward that followed (the last step's
  are unused by learners; callers put 0 there unless they hold a real value). `terminated`: the
  episode ended in a game over (False: truncated).
  """
  observation = np.asarray(observation)
  num_steps = len(observation)
  if num_steps < 1:
    raise ValueError("an episode needs at least one step (its final observation).")
  is_first = np.zeros(num_steps, bool)
  is_first[0] = True
  is_last = np.zeros(num_steps, bool)
  is_last[-1] = True
  is_terminal = np.zeros(num_steps, bool)
  is_terminal[-1] = bool(terminated)
  discount = np.ones(num_steps, np.float32)
  if terminated:
    discount[-2:] = 0.0  # RL Unplugged: the last transition and the final step.
  reward = np.asarray(reward, np.float32)
  return dict(observation=observation, action=np.asarray(action, np.int64), reward=reward,
              discount=discount, is_first=is_first, is_last=is_last, is_terminal=is_terminal,
              checkpoint_id=int(checkpoint_id), episode_id=int(episode_id),
              episode_return=np.float32(reward.astype(np.float64).sum()))


def check_episode(episode: dict[str, Any], game: Game) -> None:
  """Raises ValueError naming the field unless `episode` is a well-formed RLDS episode of `game`."""
  missing = [k for k in (*STEP_KEYS, "checkpoint_id", "episode_id") if k not in episode]
  if missing:
    raise ValueError(f"episode is missing {missing}.")
  obs = np.asarray(episode["observation"])
  if obs.ndim == 4 and obs.shape[-1] == 1:
    obs = obs[..., 0]
  if obs.dtype != np.uint8 or obs.ndim != 3 or obs.shape[1:] != FRAME_SHAPE or not len(obs):
    raise ValueError(f"observation must be uint8 [T, 84, 84] with T >= 1, got {obs.dtype} "
                     f"{obs.shape}.")
  num_steps = len(obs)
  for key in STEP_KEYS[1:]:
    shape = np.shape(episode[key])
    if shape != (num_steps,):
      raise ValueError(f"{key} must have shape ({num_steps},) like observation, got {shape}.")
  action = np.asarray(episode["action"])
  if not np.issubdtype(action.dtype, np.integer):
    raise ValueError(f"action must be integers, got {action.dtype}.")
  bad = np.flatnonzero((action < 0) | (action >= game.num_actions))
  if bad.size:
    raise ValueError(f"{game.ale_name} has {game.num_actions} actions, but step {bad[0]} has "
                     f"action {action[bad[0]]}.")
  is_first, is_last, is_terminal = (np.asarray(episode[k], bool)
                                    for k in ("is_first", "is_last", "is_terminal"))
  if not is_first[0] or is_first[1:].any():
    raise ValueError("is_first must be True at step 0 only.")
  if not is_last[-1] or is_last[:-1].any():
    raise ValueError("is_last must be True at the last step only.")
  if is_terminal[:-1].any():
    raise ValueError("is_terminal may only be True at the last step.")
  if not np.all(np.isfinite(np.asarray(episode["reward"], np.float32))):
    raise ValueError("reward has non-finite values.")
  for key in ("checkpoint_id", "episode_id"):
    value = episode[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{key} must be a non-negative integer, got {value!r}.")


# ---------------------------------------------------------------------------------------------
# Encoding.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


_PNG_HEAD = _PNG_SIGNATURE + _png_chunk(
    b"IHDR", struct.pack(">IIBBBBB", FRAME_SHAPE[1], FRAME_SHAPE[0], 8, 0, 0, 0, 0))
_PNG_TAIL = _png_chunk(b"IEND", b"")


def encode_png(frame: np.ndarray) -> bytes:
  """One [84, 84] uint8 frame as an 8-bit grayscale PNG.

  Rows are stored unfiltered and deflated at zlib level 6: on Atari frames (large flat areas)
  this is both smaller and about 2x faster than PIL / tf.io.encode_png with adaptive filters
  (measured: ~560 vs ~800 bytes, ~80 vs ~175 us a frame). Any PNG decoder reads it.
  """
  rows = np.zeros((FRAME_SHAPE[0], FRAME_SHAPE[1] + 1), np.uint8)  # Filter byte 0 per row.
  rows[:, 1:] = frame
  return _PNG_HEAD + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _PNG_TAIL


def _encode_pngs(frames: np.ndarray, pool: Optional[concurrent.futures.Executor]) -> list[bytes]:
  """PNGs of [T, 84, 84] frames, in order; spread over `pool`'s threads (zlib drops the GIL)."""
  if pool is None or len(frames) < 256:
    return [encode_png(f) for f in frames]
  chunks = np.array_split(np.arange(len(frames)), 16)
  parts = pool.map(lambda idx: [encode_png(frames[i]) for i in idx], chunks)
  return [png for part in parts for png in part]


def serialize_episode(episode: dict[str, Any],
                      pool: Optional[concurrent.futures.Executor] = None) -> bytes:
  """The `tf.train.Example` bytes of a (checked) episode, as TFDS serializes these features.

  `pool`: threads to PNG-encode the frames with (the bulk of the work).
  """
  tf = _tf()
  obs = np.asarray(episode["observation"])
  if obs.ndim == 4:
    obs = obs[..., 0]

  def ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64)))

  def floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32)))

  feature = {
      "steps/observation": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=_encode_pngs(obs, pool))),
      "steps/action": ints(episode["action"]),
      "steps/reward": floats(episode["reward"]),
      "steps/discount": floats(episode["discount"]),
      "steps/is_first": ints(episode["is_first"]),
      "steps/is_last": ints(episode["is_last"]),
      "steps/is_terminal": ints(episode["is_terminal"]),
      "checkpoint_id": ints([episode["checkpoint_id"]]),
      "episode_id": ints([episode["episode_id"]]),
      "episode_return": floats([episode["episode_return"]]),
  }
  # deterministic: map entries in key order. Without it, protobuf 5+ (upb) writes the feature
  # map in an order that changes from process to process, so a dataset's bytes would too.
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
      deterministic=True)


# ---------------------------------------------------------------------------------------------
# Writing.


def _split_order(split: str) -> tuple[int, str]:
  """Sorts checkpoint_9 before checkpoint_10 (numerically), other names after."""
  m = _CHECKPOINT_SPLIT_RE.match(split)
  return (int(m["id"]), split) if m else (1 << 62, split)


@dataclasses.dataclass
class SplitSummary:
  """What one split (checkpoint) of a written dataset holds."""
  split: str
  episodes: int = 0
  steps: int = 0  # Frames stored (= transitions + episodes).
  terminated: int = 0  # Episodes that ended in a game over.
  return_sum: float = 0.0

  @property
  def transitions(self) -> int:
    return self.steps - self.episodes

  @property
  def mean_return(self) -> float:
    return self.return_sum / self.episodes if self.episodes else float("nan")


@dataclasses.dataclass
class _Shard:
  writer: Any
  path: str
  episodes: int = 0
  num_bytes: int = 0


class EpisodeWriter:
  """Writes one game-run's episodes, as they come, into a TFDS dataset folder.

  Use as a context manager (or call `close()`): episodes go to a hidden temporary folder next to
  the destination, which is renamed into place only when the writer closes without error. A
  crash or a bad episode leaves no half dataset, and an existing dataset for the same game-run is
  refused up front (DatasetExistsError) unless `overwrite`, in which case it is replaced only at
  the very end. Episodes go to split `checkpoint_NN` of their checkpoint_id (or all to 'train'
  with `split_by_checkpoint=False`, the rlu_atari layout), in the order written. Frames are
  PNG-encoded on `encode_threads` threads (default: up to 8 cores); the bytes do not depend on it.
  """

  def __init__(self, data_dir: str, game: Union[str, Game], run: int, *,
               dataset_name: str = DEFAULT_DATASET_NAME, version: str = DEFAULT_VERSION,
               split_by_checkpoint: bool = True, overwrite: bool = False,
               shard_bytes: int = DEFAULT_SHARD_BYTES, description: str = "",
               encode_threads: Optional[int] = None):
    self._game = game if isinstance(game, Game) else get_game(game)
    if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or run < 1:
      raise ValueError(f"run must be a positive integer, got {run!r}.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", dataset_name):
      raise ValueError(f"dataset_name must be snake_case (a TFDS name), got {dataset_name!r}.")
    if not _tfds().core.Version.is_valid(version):
      raise ValueError(f"version must look like '1.0.0', got {version!r}.")
    self._run = int(run)
    self._dataset_name, self._version = dataset_name, version
    self._split_by_checkpoint = split_by_checkpoint
    self._overwrite = overwrite
    self._shard_bytes = int(shard_bytes)
    self._description = description
    parent = os.path.join(os.fspath(data_dir), dataset_name)
    self._final_dir = os.path.join(parent, config_name(self._game, run))
    if os.path.exists(self._final_dir) and not overwrite:
      raise DatasetExistsError(
          f"{self._final_dir} exists already; pass overwrite=True (--overwrite) to replace it.")
    os.makedirs(parent, exist_ok=True)
    self._tmp_root = os.path.join(
        parent, f".tmp-{config_name(self._game, run)}-{uuid.uuid4().hex[:12]}")
    self._tmp_dir = os.path.join(self._tmp_root, version)
    os.makedirs(self._tmp_dir)
    threads = min(8, os.cpu_count() or 1) if encode_threads is None else int(encode_threads)
    self._pool = concurrent.futures.ThreadPoolExecutor(threads, "png") if threads > 1 else None
    self._shards: dict[str, list[_Shard]] = {}
    self._summaries: dict[str, SplitSummary] = {}
    self._closed = False

  @property
  def game(self) -> Game:
    return self._game

  @property
  def path(self) -> str:
    """Where the dataset's version folder will be once the writer closes."""
    return os.path.join(self._final_dir, self._version)

  def write(self, episode: dict[str, Any]) -> None:
    """Checks and appends one episode (a dict like `make_episode` returns)."""
    if self._closed:
      raise RuntimeError("EpisodeWriter is closed.")
    check_episode(episode, self._game)
    episode = dict(episode)
    episode["episode_return"] = np.float32(
        np.asarray(episode["reward"], np.float64).sum())
    split = (checkpoint_split(episode["checkpoint_id"]) if self._split_by_checkpoint
             else TRAIN_SPLIT)
    data = serialize_episode(episode, self._pool)
    shards = self._shards.setdefault(split, [])
    if not shards or shards[-1].num_bytes >= self._shard_bytes:
      path = os.path.join(self._tmp_dir, f"{self._dataset_name}-{split}.tfrecord-{len(shards):05d}")
      shards.append(_Shard(_tf().io.TFRecordWriter(path), path))
    shard = shards[-1]
    shard.writer.write(data)
    shard.episodes += 1
    shard.num_bytes += len(data)
    summary = self._summaries.setdefault(split, SplitSummary(split))
    summary.episodes += 1
    summary.steps += len(episode["observation"])
    summary.terminated += int(bool(episode["is_terminal"][-1]))
    summary.return_sum += float(episode["episode_return"])

  def summary(self) -> list[SplitSummary]:
    """Per split, in split order: episodes, steps, returns written so far."""
    return [self._summaries[s] for s in sorted(self._summaries, key=_split_order)]

  def close(self) -> str:
    """Finishes the files and metadata and moves the dataset into place; returns its path."""
    if self._closed:
      return self.path
    try:
      if not self._shards:
        raise ValueError(f"no episodes were written for {config_name(self._game, self._run)}; "
                         "refusing to make an empty dataset.")
      self._finish_files()
      self._write_metadata()
      self._move_into_place()
    except BaseException:
      self.abort()
      raise
    self._closed = True
    self._shutdown_pool()
    return self.path

  def abort(self) -> None:
    """Drops everything written; the destination is left as it was."""
    for shards in self._shards.values():
      for shard in shards:
        try:
          shard.writer.close()
        except Exception:  # pylint: disable=broad-except
          pass
    self._shards = {}
    shutil.rmtree(self._tmp_root, ignore_errors=True)
    self._closed = True
    self._shutdown_pool()

  def _shutdown_pool(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __enter__(self) -> "EpisodeWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def _finish_files(self) -> None:
    for split, shards in self._shards.items():
      for i, shard in enumerate(shards):
        shard.writer.close()
        final = f"{shard.path[:-5]}{i:05d}-of-{len(shards):05d}"
        os.rename(shard.path, final)
        shard.path = final

  def _write_metadata(self) -> None:
    tfds = _tfds()
    identity = tfds.core.dataset_info.DatasetIdentity(
        name=self._dataset_name, version=tfds.core.Version(self._version),
        data_dir=self._tmp_dir, module_name="", config_name=config_name(self._game, self._run),
        config_description=f"{self._game.ale_name}, run {self._run}.")
    info = tfds.core.DatasetInfo(
        builder=identity, description=self._description or
        "RLDS Atari episodes in the format of RL Unplugged's rlu_atari (scaled_ql.data).",
        features=features(), disable_shuffling=self._split_by_checkpoint)
    template = tfds.core.ShardedFileTemplate(
        data_dir=self._tmp_dir, dataset_name=self._dataset_name, filetype_suffix="tfrecord",
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
    info.set_file_format("tfrecord")
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[s.episodes for s in shards],
                            num_bytes=sum(s.num_bytes for s in shards),
                            filename_template=template.replace(split=split))
        for split, shards in sorted(self._shards.items(), key=lambda kv: _split_order(kv[0]))]))
    info.write_to_directory(self._tmp_dir)

  def _move_into_place(self) -> None:
    old = None
    if os.path.exists(self._final_dir):
      if not self._overwrite:  # Appeared while we were writing.
        raise DatasetExistsError(f"{self._final_dir} appeared while writing; not overwriting it.")
      old = f"{self._tmp_root}.old"
      os.rename(self._final_dir, old)
    os.rename(self._tmp_root, self._final_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """One game-run dataset folder on disk (one TFDS version folder)."""
  path: str  # The version folder holding dataset_info.json.
  dataset_name: str  # "scaled_ql_atari", "rlu_atari_checkpoints_ordered", ...
  game: Game
  run: int
  split_lengths: tuple[tuple[str, int], ...]  # (split name, episodes) in split order.

  @property
  def split_by_checkpoint(self) -> bool:
    """True for one split per checkpoint; False for rlu_atari's single 'train' split."""
    return all(_CHECKPOINT_SPLIT_RE.match(s) for s, _ in self.split_lengths)

  @property
  def checkpoint_ids(self) -> Optional[tuple[int, ...]]:
    """The checkpoints present (None where only the episodes' metadata knows: rlu_atari)."""
    if not self.split_by_checkpoint:
      return None
    return tuple(int(_CHECKPOINT_SPLIT_RE.match(s)["id"]) for s, _ in self.split_lengths)

  @property
  def num_episodes(self) -> int:
    return sum(n for _, n in self.split_lengths)


def _latest_version_dir(config_dir: str) -> Optional[str]:
  tfds = _tfds()
  versions = [d for d in os.listdir(config_dir)
              if tfds.core.Version.is_valid(d)
              and os.path.isfile(os.path.join(config_dir, d, "dataset_info.json"))]
  if not versions:
    return None
  return os.path.join(config_dir, max(versions, key=tfds.core.Version))


def _candidate_dataset_dirs(data_dir: str, ale_name: str) -> list[str]:
  """Dataset folders under `data_dir` (or `data_dir` itself) holding configs of the game."""
  if not os.path.isdir(data_dir):
    raise DatasetError(f"data_dir {data_dir} does not exist or is not a directory.")
  pattern = re.compile(rf"^{re.escape(ale_name)}_run_\d+$")

  def has_game(path):
    return any(pattern.match(d) for d in os.listdir(path))

  if has_game(data_dir):
    return [data_dir]
  return sorted(os.path.join(data_dir, d) for d in os.listdir(data_dir)
                if not d.startswith(".") and os.path.isdir(os.path.join(data_dir, d))
                and has_game(os.path.join(data_dir, d)))


def _open_source(config_dir: str, game: Game, run: int) -> DatasetSource:
  version_dir = _latest_version_dir(config_dir)
  if version_dir is None:
    raise DatasetError(f"{config_dir} holds no finished TFDS dataset (no <version>/"
                       "dataset_info.json).")
  info_path = os.path.join(version_dir, "dataset_info.json")
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetError(f"{info_path}: unreadable dataset_info.json ({e}).") from e
  try:
    builder = _tfds().builder_from_directory(version_dir)
    serialized = builder.info.features.get_serialized_info()
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(f"{version_dir}: TFDS cannot open this dataset: {e}") from e
  found = {key: (v.tf_dtype.name, tuple(v.shape)) for key, v in _flatten(serialized).items()}
  expected = _expected_serialized_info()
  if found != expected:
    diff = sorted(set(found.items()) ^ set(expected.items()))
    raise DatasetError(f"{version_dir}/features.json: not the rlu_atari episode features "
                       f"(differences: {diff}).")
  splits = tuple((s.name, int(s.num_examples)) for s in builder.info.splits.values())
  if not splits:
    raise DatasetError(f"{info_path}: the dataset has no splits.")
  names = [s for s, _ in splits]
  if not (all(_CHECKPOINT_SPLIT_RE.match(s) for s in names) or names == [TRAIN_SPLIT]):
    raise DatasetError(f"{info_path}: splits {names} are neither 'checkpoint_NN' splits nor a "
                       "single 'train' split.")
  splits = tuple(sorted(splits, key=lambda s: _split_order(s[0])))
  return DatasetSource(path=version_dir, dataset_name=info.get("name") or
                       os.path.basename(os.path.dirname(config_dir)),
                       game=game, run=run, split_lengths=splits)


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def find_sources(data_dir: str, game: Union[str, Game], *, runs: Optional[Iterable[int]] = None,
                 dataset: Optional[str] = None) -> list[DatasetSource]:
  """The game's run datasets under `data_dir`, by run.

  `data_dir` is a TFDS data_dir (holding `{dataset_name}/{AleName}_run_{k}/`) or one dataset
  folder itself. `dataset` picks the dataset name where several hold the game (else an error
  lists them); `runs` picks runs (None: every run found).
  """
  game = game if isinstance(game, Game) else get_game(game)
  data_dir = os.fspath(data_dir)
  dirs = _candidate_dataset_dirs(data_dir, game.ale_name)
  if dataset is not None:
    dirs = [d for d in dirs if os.path.basename(os.path.normpath(d)) == dataset]
  if not dirs:
    where = f"dataset {dataset!r} under " if dataset else ""
    raise DatasetError(f"no {game.ale_name} data in {where}{data_dir} (looked for "
                       f"*/{game.ale_name}_run_<k>/<version>/dataset_info.json).")
  if len(dirs) > 1:
    names = [os.path.basename(d) for d in dirs]
    raise DatasetError(f"several datasets in {data_dir} hold {game.ale_name}: {names}; pick one "
                       "with dataset=NAME.")
  dataset_dir = dirs[0]
  available = {}
  for d in os.listdir(dataset_dir):
    m = _CONFIG_RE.match(d)
    if m and m["game"] == game.ale_name:
      available[int(m["run"])] = os.path.join(dataset_dir, d)
  wanted = sorted(available) if runs is None else sorted({_as_int(r, "run") for r in runs})
  missing = [r for r in wanted if r not in available]
  if missing:
    raise DatasetError(f"{dataset_dir} has no {game.ale_name} run(s) {missing}; it has runs "
                       f"{sorted(available)}.")
  return [_open_source(available[r], game, r) for r in wanted]


def _as_int(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  return int(value)


def _checkpoint_set(checkpoints: CheckpointSelection) -> Optional[frozenset[int]]:
  if checkpoints is None:
    return None
  if isinstance(checkpoints, (int, np.integer)) and not isinstance(checkpoints, bool):
    checkpoints = [checkpoints]
  ids = frozenset(_as_int(c, "checkpoint id") for c in checkpoints)
  if not ids or min(ids) < 0:
    raise ValueError(f"checkpoints must be non-negative ids (and at least one), got "
                     f"{sorted(ids)}.")
  return ids


@dataclasses.dataclass(frozen=True)
class _ReadTask:
  """Episodes [skip, skip + take) of one shard file."""
  filename: str
  skip: int
  take: int


def _plan(sources: Sequence[DatasetSource], wanted: Optional[frozenset[int]], shard_index: int,
          num_shards: int) -> list[tuple[DatasetSource, _ReadTask]]:
  """This host's read tasks, in (run, split, file) order.

  Each split's episodes are cut into `num_shards` contiguous blocks; host k reads block
  (k + j) % num_shards of the j-th split read, so that hosts are disjoint, cover everything, and
  see every checkpoint (quality level) in the same proportion, and small splits do not all land
  on one host.
  """
  tfds = _tfds()
  tasks = []
  j = 0
  for source in sources:
    builder = tfds.builder_from_directory(source.path)
    for split, num_episodes in source.split_lengths:
      if wanted is not None and source.split_by_checkpoint:
        if int(_CHECKPOINT_SPLIT_RE.match(split)["id"]) not in wanted:
          continue
      block = (shard_index + j) % num_shards
      j += 1
      lo, hi = num_episodes * block // num_shards, num_episodes * (block + 1) // num_shards
      info = builder.info.splits[split]
      start = 0
      for path, length in zip(info.filepaths, info.shard_lengths):
        a, b = max(lo, start), min(hi, start + length)
        if a < b:
          tasks.append((source, _ReadTask(os.fspath(path), a - start, b - a)))
        start += length
  for _, task in tasks:
    if not os.path.isfile(task.filename):
      raise DatasetError(f"shard file {task.filename} is missing.")
    if os.path.getsize(task.filename) == 0:
      raise DatasetError(f"shard file {task.filename} is empty.")
  return tasks


@functools.lru_cache(maxsize=None)
def _parse_spec():
  tf = _tf()

  def seq(dtype):
    return tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)

  return {
      "steps/observation": seq(tf.string), "steps/action": seq(tf.int64),
      "steps/reward": seq(tf.float32), "steps/discount": seq(tf.float32),
      "steps/is_first": seq(tf.int64), "steps/is_last": seq(tf.int64),
      "steps/is_terminal": seq(tf.int64),
      "checkpoint_id": tf.io.FixedLenFeature([], tf.int64),
      "episode_id": tf.io.FixedLenFeature([], tf.int64),
      "episode_return": tf.io.FixedLenFeature([], tf.float32),
  }


def _episodes_dataset(tasks: Sequence[_ReadTask], wanted: Optional[frozenset[int]],
                      parallelism: Optional[int]):
  """One tf.data pipeline over `tasks`: records -> (task index, keep, parsed + decoded episode).

  One pipeline for all files (not one per file) so that building it (tracing) happens once and
  decoding runs ahead across file boundaries. Episodes outside `wanted` (rlu_atari's metadata
  filter) come through with keep=False and undecoded frames, so every record is still counted.
  """
  tf = _tf()
  # Episodes decoded at once. Bounded, not AUTOTUNE: a decoded episode can be ~200 MB (27k
  # frames), so memory is about (calls + prefetch) episodes; the frames of one episode are
  # decoded in parallel anyway (map_fn's parallel_iterations).
  calls = _DEFAULT_PARALLELISM if parallelism is None else parallelism
  spec = _parse_spec()
  wanted_ids = tf.constant(sorted(wanted) if wanted is not None else [], tf.int64)
  filter_ids = wanted is not None

  def records(index, filename, skip, take):
    ds = tf.data.TFRecordDataset(filename, buffer_size=8 << 20).skip(skip).take(take)
    return ds.map(lambda record: (index, record))

  def decode_pngs(pngs):
    return tf.map_fn(lambda png: tf.io.decode_png(png, channels=1), pngs,
                     fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
                     parallel_iterations=16)

  def parse(index, record):
    ex = tf.io.parse_single_example(record, spec)
    keep = (tf.reduce_any(tf.equal(ex["checkpoint_id"], wanted_ids)) if filter_ids
            else tf.constant(True))
    pngs = ex.pop("steps/observation")
    ex["steps/observation"] = tf.cond(
        keep, lambda: decode_pngs(pngs), lambda: tf.zeros([0, *FRAME_SHAPE, 1], tf.uint8))
    ex["steps/action"] = tf.cast(ex["steps/action"], tf.int32)
    for k in ("is_first", "is_last", "is_terminal"):
      ex[f"steps/{k}"] = tf.cast(ex[f"steps/{k}"], tf.bool)
    return index, keep, ex

  ds = tf.data.Dataset.from_tensor_slices((
      tf.range(len(tasks), dtype=tf.int64), [t.filename for t in tasks],
      tf.constant([t.skip for t in tasks], tf.int64), tf.constant([t.take for t in tasks],
                                                                  tf.int64)))
  ds = ds.flat_map(records)
  ds = ds.map(parse, num_parallel_calls=calls, deterministic=True)
  ds = ds.prefetch(1)
  options = tf.data.Options()
  options.deterministic = True
  if parallelism is not None:
    options.threading.private_threadpool_size = parallelism
    options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _to_episode(ex, task: _ReadTask, source: DatasetSource) -> dict[str, Any]:
  obs = ex["steps/observation"].numpy()
  num_steps = obs.shape[0]
  episode_id = int(ex["episode_id"])
  if obs.shape[1:] != (*FRAME_SHAPE, 1) or num_steps < 1:
    raise DatasetError(f"{task.filename}: episode {episode_id} has frames of shape "
                       f"{obs.shape[1:]} (expected 84x84x1) or no steps.")
  episode = {
      "observation": obs.reshape(num_steps, *FRAME_SHAPE),
      "action": ex["steps/action"].numpy(),
      "reward": ex["steps/reward"].numpy(),
      "discount": ex["steps/discount"].numpy(),
      "is_first": ex["steps/is_first"].numpy(),
      "is_last": ex["steps/is_last"].numpy(),
      "is_terminal": ex["steps/is_terminal"].numpy(),
      "game": source.game.name,
      "run": source.run,
      "checkpoint_id": int(ex["checkpoint_id"]),
      "episode_id": episode_id,
      "episode_return": np.float32(ex["episode_return"].numpy()),
      "dataset": source.dataset_name,
  }
  for key in STEP_KEYS[1:]:
    if episode[key].shape != (num_steps,):
      raise DatasetError(f"{task.filename}: episode {episode_id} has {num_steps} observations "
                         f"but {episode[key].shape[0]} values of {key}.")
  return episode


def _check_count(task: _ReadTask, count: int) -> None:
  if count != task.take:
    raise DatasetError(f"{task.filename}: holds {task.skip + count} episodes where "
                       f"dataset_info.json promises at least {task.skip + task.take}; the file "
                       "is truncated.")


def _find_bad_file(tasks: Sequence[_ReadTask], wanted, parallelism) -> Optional[str]:
  """After a read error: re-reads tasks one file at a time and returns the failing one's error."""
  tf = _tf()
  for task in tasks:
    try:
      count = sum(1 for _ in _episodes_dataset([task], wanted, parallelism))
    except tf.errors.OpError as e:
      return f"{task.filename}: corrupt or unreadable TFRecord data: {e.message}"
    if count != task.take:
      return (f"{task.filename}: holds fewer episodes than dataset_info.json promises; the "
              "file is truncated.")
  return None


def _iterate(tasks: Sequence[tuple[DatasetSource, _ReadTask]], wanted,
             parallelism) -> Iterator[dict[str, Any]]:
  tf = _tf()
  if not tasks:
    return
  read_tasks = [t for _, t in tasks]
  iterator = iter(_episodes_dataset(read_tasks, wanted, parallelism))
  current, count = 0, 0
  while True:
    try:
      index, keep, ex = next(iterator)
    except StopIteration:
      break
    except tf.errors.OpError as e:
      message = _find_bad_file(read_tasks[current:], wanted, parallelism)
      raise DatasetError(message or f"reading {read_tasks[current].filename} or a later file "
                         f"failed: {e.message}") from e
    index = int(index)
    while current < index:  # Finished the tasks before `index`: check what they held.
      _check_count(read_tasks[current], count)
      current, count = current + 1, 0
    count += 1
    if bool(keep):
      source, task = tasks[index]
      yield _to_episode(ex, task, source)
  while current < len(read_tasks):
    _check_count(read_tasks[current], count)
    current, count = current + 1, 0


def read_episodes(data_dir: str, game: Union[str, Game], *,
                  checkpoints: CheckpointSelection = None,
                  runs: Optional[Iterable[int]] = None, shard_index: int = 0,
                  num_shards: int = 1, dataset: Optional[str] = None,
                  parallelism: Optional[int] = None,
                  start: int = 0) -> Iterator[dict[str, Any]]:
  """Yields the game's episodes as dicts of NumPy arrays, lazily, one episode at a time.

  Every source layout gives the same episodes (see the module docstring): step arrays
  observation [T, 84, 84] uint8, action [T] int32 (minimal-set index), reward [T] float32
  (unclipped), discount [T] float32, is_first / is_last / is_terminal [T] bool; metadata game
  (snake_case), run, checkpoint_id, episode_id (int), episode_return (float32), dataset (the
  dataset's name).

  Args:
    data_dir: a TFDS data_dir holding `{dataset}/{AleName}_run_{k}/{version}/`, or one dataset
      folder.
    game: the game (snake_case or ALE name).
    checkpoints: checkpoint ids to read (an int, a range, any iterable; None: all), e.g.
      range(10) for the paper's low-quality data (the first 20% of 50 checkpoints).
    runs: run numbers (None: every run on disk).
    shard_index, num_shards: this host's share; the shares are disjoint and cover the selection.
    dataset: the dataset name, where several under data_dir hold the game.
    parallelism: episodes parsed and decoded concurrently, and with a number the size of a
      private thread pool for it (None: 2 episodes, TF's shared thread pool); memory holds
      about parallelism + 2 decoded episodes.
    start: skip the first `start` episodes of this selection: whole files and records are
      skipped without decoding (where the selection is one per-checkpoint split per file, as in
      ours and rlu_atari_checkpoints*), so resuming a stream deep into a dataset is cheap.

  Order: runs ascending, then splits, then episodes as stored; deterministic. Checks (missing
  runs or checkpoints, wrong features, missing shard files) happen before the first episode;
  corrupt or truncated files raise DatasetError naming the file when reached.
  """
  num_shards, shard_index = _as_int(num_shards, "num_shards"), _as_int(shard_index, "shard_index")
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index} of {num_shards}.")
  if parallelism is not None and _as_int(parallelism, "parallelism") < 1:
    raise ValueError(f"parallelism must be positive or None, got {parallelism}.")
  wanted = _checkpoint_set(checkpoints)
  sources = find_sources(data_dir, game, runs=runs, dataset=dataset)
  if wanted is not None:
    for source in sources:
      if source.checkpoint_ids is not None:
        missing = sorted(wanted - set(source.checkpoint_ids))
        if missing:
          raise DatasetError(f"{source.path} has no checkpoint(s) {missing}; it has "
                             f"{list(source.checkpoint_ids)}.")
  if _as_int(start, "start") < 0:
    raise ValueError(f"start must be >= 0, got {start}.")
  tasks = _plan(sources, wanted, shard_index, num_shards)
  filtered = wanted is not None and any(not s.split_by_checkpoint for s in sources)
  if filtered:  # Records are filtered on metadata: positions are known only after parsing.
    return itertools.islice(_iterate(tasks, wanted, parallelism), start, None)
  return _iterate(_skip(tasks, start), wanted, parallelism)


def _skip(tasks, start: int):
  """The read tasks without their first `start` episodes (every record of a task is kept)."""
  out = []
  for source, task in tasks:
    if start >= task.take:
      start -= task.take
      continue
    out.append((source, dataclasses.replace(task, skip=task.skip + start, take=task.take - start)))
    start = 0
  return out
