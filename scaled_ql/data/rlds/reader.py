"""Reading episodes: a host's share of a selection (runs, checkpoints) planned into read tasks
(record ranges of shard files), parsed and PNG-decoded by one tf.data pipeline, yielded lazily."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from scaled_ql.data.rlds.format import (_CHECKPOINT_SPLIT_RE, STEP_KEYS, CheckpointSelection,
                                        CorruptDataError, DatasetError, _tf, _tfds)
from scaled_ql.data.rlds.sources import (DatasetSource, _as_int, _checkpoint_set,
                                         find_sources)
from scaled_ql.frames import FRAME_SHAPE
from scaled_ql.games import Game

_DEFAULT_PARALLELISM = 2  # Episodes parsed and decoded concurrently by read_episodes.


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


def parse_record(record, wanted_ids, filter_ids: bool):
  """TF ops: one serialized episode -> (keep, parsed features with decoded frames).

  Episodes whose checkpoint_id is not in `wanted_ids` (when `filter_ids`: rlu_atari's metadata
  filter) get keep=False and no decoded frames.
  """
  tf = _tf()
  ex = tf.io.parse_single_example(record, _parse_spec())
  keep = (tf.reduce_any(tf.equal(ex["checkpoint_id"], wanted_ids)) if filter_ids
          else tf.constant(True))
  pngs = ex.pop("steps/observation")

  def decode_pngs():
    return tf.map_fn(lambda png: tf.io.decode_png(png, channels=1), pngs,
                     fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
                     parallel_iterations=16)

  ex["steps/observation"] = tf.cond(
      keep, decode_pngs, lambda: tf.zeros([0, *FRAME_SHAPE, 1], tf.uint8))
  ex["steps/action"] = tf.cast(ex["steps/action"], tf.int32)
  for k in ("is_first", "is_last", "is_terminal"):
    ex[f"steps/{k}"] = tf.cast(ex[f"steps/{k}"], tf.bool)
  return keep, ex


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
  wanted_ids = tf.constant(sorted(wanted) if wanted is not None else [], tf.int64)
  filter_ids = wanted is not None

  def records(index, filename, skip, take):
    ds = tf.data.TFRecordDataset(filename, buffer_size=8 << 20).skip(skip).take(take)
    return ds.map(lambda record: (index, record))

  def parse(index, record):
    keep, ex = parse_record(record, wanted_ids, filter_ids)
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


def _to_episode(ex, task, source: DatasetSource) -> dict[str, Any]:
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
    raise CorruptDataError(f"{task.filename}: holds {task.skip + count} episodes where "
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
      raise CorruptDataError(message or f"reading {read_tasks[current].filename} or a later "
                             f"file failed: {e.message}") from e
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


def check_selection(data_dir: str, game: Union[str, Game], *,
                    checkpoints: CheckpointSelection = None,
                    runs: Optional[Iterable[int]] = None, shard_index: int = 0,
                    num_shards: int = 1, dataset: Optional[str] = None,
                    parallelism: Optional[int] = None
                    ) -> tuple[Optional[frozenset[int]], list[DatasetSource]]:
  """Checks a selection's arguments and datasets before anything is read (see `read_episodes`);
  returns (the wanted checkpoint ids or None, the sources)."""
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
  return wanted, sources


def read_episodes(data_dir: str, game: Union[str, Game], *,
                  checkpoints: CheckpointSelection = None,
                  runs: Optional[Iterable[int]] = None, shard_index: int = 0,
                  num_shards: int = 1, dataset: Optional[str] = None,
                  parallelism: Optional[int] = None,
                  start: int = 0) -> Iterator[dict[str, Any]]:
  """Yields the game's episodes as dicts of NumPy arrays, lazily, one episode at a time.

  Every source layout gives the same episodes (see the module docstring): step arrays
  observation [T, 84, 84] uint8, action [T] int32 (minimal-set index), reward [T] float32
  (as logged: already clipped to [-1, 1] by Dopamine's runner in DQN Replay data, i.e. our
  `dqn_replay` conversions and RL Unplugged's `rlu_atari*`, so their episode_return is a clipped
  return; raw in ALE-generated datasets: `DatasetSource.clipped_rewards`), discount [T]
  float32, is_first / is_last / is_terminal [T] bool; metadata game (snake_case), run,
  checkpoint_id, episode_id (int), episode_return (float32), dataset (the dataset's name).

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
  corrupt or truncated files raise CorruptDataError (a DatasetError) naming the file when
  reached. Older TFDS versions whose features add steps/clipped_reward and
  clipped_episode_return (rlu_atari < 1.3.0) are read, ignoring those copies; versions without
  is_last or checkpoint_id are refused with a message saying which version to prepare.
  """
  wanted, sources = check_selection(data_dir, game, checkpoints=checkpoints, runs=runs,
                                    shard_index=shard_index, num_shards=num_shards,
                                    dataset=dataset, parallelism=parallelism)
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
