"""Reading episodes: a host's share of a selection (runs, checkpoints) planned into read tasks
(record ranges of shard files), parsed and PNG-decoded on a few threads without TensorFlow
(`records`), yielded lazily in order."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from scaled_ql.data.rlds import records
from scaled_ql.data.rlds.format import (_CHECKPOINT_SPLIT_RE, STEP_KEYS, CheckpointSelection,
                                        CorruptDataError, DatasetError)
from scaled_ql.data.rlds.records import RecordError
from scaled_ql.data.rlds.sources import (DatasetSource, _as_int, _checkpoint_set,
                                         find_sources)
from scaled_ql.games import Game

_DEFAULT_PARALLELISM = 2  # Threads parsing and decoding episodes in read_episodes.


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
  tasks = []
  j = 0
  for source in sources:
    for (split, num_episodes), shards in zip(source.split_lengths, source.split_shards):
      if wanted is not None and source.split_by_checkpoint:
        if int(_CHECKPOINT_SPLIT_RE.match(split)["id"]) not in wanted:
          continue
      block = (shard_index + j) % num_shards
      j += 1
      lo, hi = num_episodes * block // num_shards, num_episodes * (block + 1) // num_shards
      start = 0
      for path, length in shards:
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


def _scalar(ex: dict, key: str, kind):
  values = ex.get(key)
  if not isinstance(values, np.ndarray) or values.dtype != kind or values.shape != (1,):
    raise RecordError(f"{key} is not one {np.dtype(kind).name} value")
  return values[0]


def _steps(ex: dict, key: str, kind) -> np.ndarray:
  values = ex.get(key, np.zeros(0, kind))  # Missing: no values (TF's allow_missing).
  if isinstance(values, np.ndarray) and not values.size:
    return values.astype(kind)
  if not isinstance(values, np.ndarray) or values.dtype != kind:
    raise RecordError(f"{key} is not a list of {np.dtype(kind).name}")
  return values


def parse_episode(record: bytes, wanted: Optional[frozenset[int]]) -> Optional[dict[str, Any]]:
  """One serialized episode -> its arrays and metadata, frames decoded; None where its
  checkpoint_id is not in `wanted` (rlu_atari's metadata filter; then no frame is decoded).
  Raises RecordError where the record is not an episode."""
  ex = records.parse_example(record)
  checkpoint_id = int(_scalar(ex, "checkpoint_id", np.int64))
  if wanted is not None and checkpoint_id not in wanted:
    return None
  pngs = ex.get("steps/observation", [])
  if not isinstance(pngs, list):
    raise RecordError("steps/observation is not a list of encoded images")
  observation = records.decode_pngs(pngs)
  return {
      "observation": observation,
      "action": _steps(ex, "steps/action", np.int64).astype(np.int32),
      "reward": _steps(ex, "steps/reward", np.float32),
      "discount": _steps(ex, "steps/discount", np.float32),
      **{k: _steps(ex, f"steps/{k}", np.int64).astype(bool)
         for k in ("is_first", "is_last", "is_terminal")},
      "checkpoint_id": checkpoint_id,
      "episode_id": int(_scalar(ex, "episode_id", np.int64)),
      "episode_return": np.float32(_scalar(ex, "episode_return", np.float32)),
  }


def read_episode(record: bytes, record_index: int, wanted: Optional[frozenset[int]],
                 task: _ReadTask, source: DatasetSource) -> Optional[dict[str, Any]]:
  """`parse_episode`, checked, with the source's fields added; errors name the file."""
  try:
    episode = parse_episode(record, wanted)
  except RecordError as e:
    raise CorruptDataError(f"{task.filename}: record {record_index} is not a readable episode: "
                           f"{e}") from e
  if episode is None:
    return None
  num_steps = len(episode["observation"])
  if num_steps < 1:
    raise DatasetError(f"{task.filename}: episode {episode['episode_id']} has no steps.")
  for key in STEP_KEYS[1:]:
    if episode[key].shape != (num_steps,):
      raise DatasetError(f"{task.filename}: episode {episode['episode_id']} has {num_steps} "
                         f"observations but {episode[key].shape[0]} values of {key}.")
  episode.update(game=source.game.name, run=source.run, dataset=source.dataset_name)
  return episode


def _corrupt(task: _ReadTask, record_index: int, error: Exception) -> CorruptDataError:
  return CorruptDataError(f"{task.filename}: corrupt or unreadable TFRecord data at record "
                          f"{record_index}: {error}")


def _task_records(task: _ReadTask) -> Iterator[tuple[int, bytes]]:
  """(record index, record) of a task, checked: CRCs, and as many records as promised."""
  count = 0
  try:
    for record in records.records(task.filename, task.skip):
      if count == task.take:
        return
      yield task.skip + count, record
      count += 1
  except (RecordError, OSError) as e:
    raise _corrupt(task, task.skip + count, e) from e
  if count != task.take:
    raise CorruptDataError(f"{task.filename}: holds {task.skip + count} episodes where "
                           f"dataset_info.json promises at least {task.skip + task.take}; the "
                           "file is truncated.")


def _iterate(tasks: Sequence[tuple[DatasetSource, _ReadTask]], wanted,
             parallelism) -> Iterator[dict[str, Any]]:
  """The tasks' episodes in order: records read here, parsed and decoded on `parallelism`
  threads, at most 2 x parallelism + 1 ahead."""
  if not tasks:
    return
  threads = _DEFAULT_PARALLELISM if parallelism is None else parallelism
  with concurrent.futures.ThreadPoolExecutor(threads, "read-episodes") as pool:
    pending, error = collections.deque(), None
    try:
      for source, task in tasks:
        for index, record in _task_records(task):
          pending.append(pool.submit(read_episode, record, index, wanted, task, source))
          while len(pending) > 2 * threads:
            if (episode := pending.popleft().result()) is not None:
              yield episode
    except CorruptDataError as e:
      error = e  # Raised after the episodes read before it.
    while pending:
      if (episode := pending.popleft().result()) is not None:
        yield episode
    if error is not None:
      raise error


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
    parallelism: threads parsing and decoding episodes (None: 2); memory holds about
      2 x parallelism + 1 decoded episodes.
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
