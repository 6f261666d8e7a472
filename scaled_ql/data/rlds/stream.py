"""The uniform stream: a host's share of a game's selection in an order whose every stretch is
an (approximately) uniform sample of the whole selection, epoch after epoch, resumable exactly.

The data are stored in time order (run 1's checkpoint 0 first). A FIFO pool fed by that order
would hold a time window: near-random play first, a curriculum nobody asked for, and at the
paper's scale never the later checkpoints or runs 2-5. Here the read units are the host's block
of every selected checkpoint split within each shard file (a record range; `reader._plan` cuts
each split over hosts so every host holds every run and checkpoint in proportion), and one epoch
interleaves all of them at once, stratified: unit u with n_u episodes puts its j-th episode at
key (j + phase_u) / n_u, with a random phase per unit, and the epoch is every unit's episodes in
key order (ties in a random order of the units). So any stretch of the stream that covers a
fraction f of the epoch holds f x n_u +- 1 episodes of every unit u: a pool refilled from the
stream holds every run and checkpoint in proportion at every moment, for any pool size, with
less spread than a random shuffle would give. Phases and tie order are drawn per epoch from
(seed, host, epoch, game), so every epoch is another interleaving, and each epoch is a function
of those numbers alone.

Positions. Stream position p is episode p mod L of epoch p // L (L: the host's episodes in one
epoch). Each yielded episode carries its position ("stream_position"), so a consumer saves a
position and `stream(p)` continues from exactly there: the units' read cursors at p follow from
the schedule, and the record offsets from the shard files' record headers (12 bytes each,
scanned once per file), so resuming reads no frames it does not return. Records are read by byte
offset (TFRecord random access, CRC-checked) and parsed and PNG-decoded on a few threads, in
stream order, without TensorFlow (`records`). Files outside the selection are never opened.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import zlib
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from scaled_ql.data.rlds import records
from scaled_ql.data.rlds.format import CheckpointSelection, CorruptDataError, DatasetError
from scaled_ql.data.rlds.reader import (_DEFAULT_PARALLELISM, _corrupt, _plan, check_selection,
                                        read_episode)
from scaled_ql.data.rlds.sources import DatasetSource
from scaled_ql.games import Game, get_game

_OPEN_FILES = 16  # Shard files each reading thread keeps open.


class UniformStream:
  """A game's episodes, this host's share, in the stratified uniform order (module docstring).

  `stream(start)` yields episodes (dicts as `read_episodes` yields, plus "stream_position")
  from stream position `start` on: with `cycle`, endlessly, epoch after epoch; else to the end
  of epoch 0. It is an episode source for `scaled_ql.data.MultiGameSampler` (which resumes it
  from saved positions); `epoch_length` is the episodes (records) of one epoch on this host.

  Args as `read_episodes` (data_dir, game, checkpoints, runs, shard_index, num_shards, dataset,
  parallelism), plus `seed` (with the host and epoch, fixes the order) and `cycle`.
  """

  def __init__(self, data_dir: str, game: Union[str, Game], *,
               checkpoints: CheckpointSelection = None, runs: Optional[Iterable[int]] = None,
               shard_index: int = 0, num_shards: int = 1, dataset: Optional[str] = None,
               parallelism: Optional[int] = None, seed: int = 0, cycle: bool = True):
    self.game = game if isinstance(game, Game) else get_game(game)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    self._wanted, sources = check_selection(data_dir, self.game, checkpoints=checkpoints,
                                            runs=runs, shard_index=shard_index,
                                            num_shards=num_shards, dataset=dataset,
                                            parallelism=parallelism)
    self._units = _plan(sources, self._wanted, shard_index, num_shards)
    self._filter = self._wanted is not None and any(not s.split_by_checkpoint for s in sources)
    self.epoch_length = sum(t.take for _, t in self._units)
    if not self.epoch_length:
      raise DatasetError(f"the selection of {self.game.ale_name} (runs {runs or 'all'}, "
                         f"checkpoints {sorted(self._wanted) if self._wanted else 'all'}) holds "
                         f"no episodes for host {shard_index} of {num_shards} in {data_dir}.")
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.seed, self.cycle = int(seed), bool(cycle)
    self._threads = _DEFAULT_PARALLELISM if parallelism is None else int(parallelism)
    self._offsets: dict[str, list[int]] = {}  # filename -> byte offsets of its records.
    self._lock = threading.Lock()

  @property
  def sources(self) -> tuple[DatasetSource, ...]:
    return tuple(dict.fromkeys(s for s, _ in self._units))

  @property
  def num_units(self) -> int:
    return len(self._units)

  # -- The order. --------------------------------------------------------------------------
  def schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch `epoch`'s order: (unit index [L] int32, episode index within the unit [L] int64)."""
    rng = np.random.default_rng(
        [self.seed, self.shard_index, int(epoch), zlib.crc32(self.game.name.encode())])
    sizes = np.array([t.take for _, t in self._units], np.int64)
    phase = rng.random(len(sizes))
    tie = rng.permutation(len(sizes))
    unit = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    within = np.arange(len(unit), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    key = (within + phase[unit]) / sizes[unit]
    order = np.lexsort((tie[unit], key))
    return unit[order], within[order]

  # -- Reading. ----------------------------------------------------------------------------
  def _record_offset(self, filename: str, index: int) -> int:
    """The byte offset of record `index` of a shard file (headers scanned once, then cached)."""
    offsets = self._offsets.setdefault(filename, [0])
    if index < len(offsets):
      return offsets[index]
    with open(filename, "rb") as f:
      f.seek(offsets[-1])
      while len(offsets) <= index:
        if not records.skip_record(f):
          raise CorruptDataError(f"{filename}: holds {len(offsets) - 1} records where "
                                 f"dataset_info.json promises at least {index + 1}; the file "
                                 "is truncated.")
        offsets.append(f.tell())
    return offsets[index]

  def _read(self, local: threading.local, unit: int, within: int, position: int):
    """Reads and decodes one record: the episode, or None where the filter drops it."""
    source, task = self._units[unit]
    record_index = task.skip + within
    with self._lock:
      offset = self._record_offset(task.filename, record_index)
    try:
      # Each thread its own open files (a file position is not thread-safe), a few at a time.
      files = local.__dict__.setdefault("files", collections.OrderedDict())
      f = files.pop(task.filename, None)
      if f is None:
        f = open(task.filename, "rb")  # pylint: disable=consider-using-with
      files[task.filename] = f
      while len(files) > _OPEN_FILES:
        files.popitem(last=False)[1].close()
      f.seek(offset)
      record = records.read_record(f)
      if record is None:
        raise records.RecordError("no record there (end of file)")
    except (records.RecordError, OSError) as e:
      raise _corrupt(task, record_index, f"(byte {offset}) {e}") from e
    episode = read_episode(record, record_index, self._wanted if self._filter else None, task,
                           source)
    if episode is not None:
      episode["stream_position"] = position
    return episode

  def __call__(self, start: int = 0) -> Iterator[dict[str, Any]]:
    if int(start) != start or start < 0:
      raise ValueError(f"start must be a non-negative stream position, got {start!r}.")
    return self._iterate(int(start))

  def _iterate(self, start: int) -> Iterator[dict[str, Any]]:
    length = self.epoch_length
    epoch, offset = divmod(start, length)
    local = threading.local()
    with concurrent.futures.ThreadPoolExecutor(max(self._threads, 1), "uniform-stream") as pool:
      while self.cycle or epoch == 0:
        units, within = self.schedule(epoch)
        pending = collections.deque()
        position, kept = offset, 0
        while position < length or pending:
          while position < length and len(pending) < 2 * self._threads + 1:
            pending.append(pool.submit(self._read, local, int(units[position]),
                                       int(within[position]), epoch * length + position))
            position += 1
          episode = pending.popleft().result()
          if episode is not None:
            kept += 1
            yield episode
        if offset == 0 and not kept:  # Only a metadata filter can drop a whole epoch.
          raise DatasetError(f"no {self.game.ale_name} episode on host {self.shard_index} of "
                             f"{self.num_shards} has a checkpoint_id in "
                             f"{sorted(self._wanted)}: the checkpoint selection selects nothing.")
        epoch, offset = epoch + 1, 0


def uniform_episodes(data_dir: str, game: Union[str, Game], *,
                     checkpoints: CheckpointSelection = None,
                     runs: Optional[Iterable[int]] = None, dataset: Optional[str] = None,
                     seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                     parallelism: Optional[int] = None) -> Iterator[dict[str, Any]]:
  """One epoch of the game's selection in the uniform stream's order (module docstring).

  Every prefix is an about-uniform sample of the selection (all runs, all selected checkpoints),
  so taking the first N transitions gives N transitions of the whole data, not its first, worst
  ones: use it where a budget of offline data is taken, e.g. seeding an online replay table.
  """
  return UniformStream(data_dir, game, checkpoints=checkpoints, runs=runs, dataset=dataset,
                       seed=seed, shard_index=shard_index, num_shards=num_shards,
                       parallelism=parallelism, cycle=False)(0)


def uniform_sources(data_dir: str, games: Iterable[str], *,
                    checkpoints: CheckpointSelection = None,
                    runs: Optional[Iterable[int]] = None, dataset: Optional[str] = None,
                    seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                    parallelism: Optional[int] = None) -> dict[str, UniformStream]:
  """{game: UniformStream} for a `MultiGameSampler`: this host's share of every game, checked
  (missing runs or checkpoints, empty selections) before anything is read."""
  checkpoints = None if checkpoints is None else sorted(set(
      [checkpoints] if isinstance(checkpoints, (int, np.integer)) else checkpoints))
  return {g: UniformStream(data_dir, g, checkpoints=checkpoints, runs=runs, dataset=dataset,
                           seed=seed, shard_index=shard_index, num_shards=num_shards,
                           parallelism=parallelism)
          for g in games}
