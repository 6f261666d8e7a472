"""Conversion of DQN Replay Dataset checkpoint files into RLDS episodes.

The DQN Replay Dataset (Agarwal et al. 2020) saved Dopamine's `OutOfGraphReplayBuffer` every
checkpoint; each array is a gzip'd `.npy` (np.save into a gzip.GzipFile) in one game-run folder
(`.../Pong/1/replay_logs/`):

  $store$_observation_ckpt.{i}.gz  uint8 [C, 84, 84]   the observation the action was taken in
  $store$_action_ckpt.{i}.gz       int32 [C]           minimal-set action index
  $store$_reward_ckpt.{i}.gz       float32 [C]         reward after the action, clipped
  $store$_terminal_ckpt.{i}.gz     uint8 [C]           1: the episode ended after this action
  add_count_ckpt.{i}.gz            int, 0-d            rows ever added, padding included
  invalid_range_ckpt.{i}.gz        int [stack + n]     rows around the cursor that cannot be sampled

Rewards are stored clipped to [-1, 1]: Dopamine's runner clips each reward before it reaches
the agent and its replay buffer (`run_experiment.Runner._run_one_episode`: `reward =
np.clip(reward, -1, 1)`, in the 2019 agents that logged the dataset), so the converted
episodes' rewards, and their `episode_return` (the sum of the step rewards), are clipped values,
not game scores; the conversion's summaries say "clipped return". Scores come from playing the
policy (`scaled_ql.evaluation`).

Semantics, from Dopamine's `circular_replay_buffer.py` (checked against its source):
- A circular buffer of capacity C; the next row is written at cursor = add_count % C. When
  add_count > C the buffer has wrapped: the oldest row is at the cursor, so the chronological order
  is rows cursor..C-1, then 0..cursor-1.
- `add` writes stack_size - 1 zero rows (observation 0, action 0, reward 0, terminal 0) before
  an episode's first row: when the buffer is empty and after every terminal row.
- A row is (o_t, a_t, r_t, terminal_t): Dopamine's agent stores the observation the action was
  taken in; the observation after a terminal action is never stored. The 2019 agents that made
  the dataset end every episode with terminal = 1, also when Dopamine's 27,000-step limit cut it
  (so rare time-outs read as game overs: the data cannot tell them apart).
- invalid_range = [(cursor - n + i) % C for i in range(stack_size + n)] (n = update horizon); we
  check it against add_count, which confirms the cursor and the stack size the file was made with.

What one checkpoint becomes, in chronological order:
- the padding rows are dropped (the sampler and FrameStacker re-create zero padding);
- an episode that ends in a terminal row, with k rows, becomes T = k + 1 steps: the k rows, then
  a final step with a ZERO observation (the true one was never stored), action 0, reward 0,
  is_terminal True. The zero frame is harmless: a terminal transition never bootstraps;
- the unfinished last episode (rows after the last padding, no terminal yet) is kept, truncated:
  T = k steps, is_terminal all False. Its last row's action and reward stay on the last step,
  where learners ignore them (no next observation exists), so no value is lost. If it has a
  single row it holds no transition and is dropped (counted in the result);
- in a wrapped buffer, the oldest rows up to the first terminal belong to an episode whose start
  was overwritten: they are dropped (counted in the result), since stacking them from zero
  padding would show the network frames that never happened. Exception: if the oldest rows are
  1..stack_size-1 zero padding rows, the episode after them is complete and is kept. The same
  holds for a run's final checkpoint, which Dopamine saved with add_count % capacity: it reads
  as an unwrapped buffer, but its row 0 can fall mid-episode (no padding before it).
Episode ids number a checkpoint's episodes from 0 in chronological order; checkpoint_id = i.

Observation files are 7 GB uncompressed; they are streamed in chunks in chronological order (two
sequential passes over a wrapped file), never loaded whole. Every cheap check (files present and
non-empty, gzip and .npy headers, shapes, lengths, gzip trailer size, action range, add_count vs
invalid_range, padding structure) runs for every checkpoint before any conversion starts.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import re
import struct
import zlib
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np

from scaled_ql.data import rlds
from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE
from scaled_ql.games import Game, get_game

DATASET_NAME = "dqn_replay"
STORE_KEYS = ("observation", "action", "reward", "terminal")
OTHER_KEYS = ("add_count", "invalid_range")
_OBSERVATION_RE = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")
_ANY_RE = re.compile(r"^(\$store\$_\w+|add_count|invalid_range)_ckpt\.(\d+)\.gz$")
_CHUNK_ROWS = 4096  # Observation rows decompressed at a time (29 MB).


class ReplayFileError(ValueError):
  """A DQN Replay file is missing, corrupt, or not in Dopamine's format; names the file."""


def checkpoint_filename(key: str, index: int) -> str:
  """Dopamine's file name of array `key` of checkpoint `index`."""
  prefix = "$store$_" if key in STORE_KEYS else ""
  return f"{prefix}{key}_ckpt.{index}.gz"


def _resolve_dir(replay_dir: str) -> str:
  replay_dir = os.fspath(replay_dir)
  if not os.path.isdir(replay_dir):
    raise ReplayFileError(f"replay directory {replay_dir} does not exist.")
  logs = os.path.join(replay_dir, "replay_logs")  # The dataset's layout: {game}/{run}/replay_logs.
  return logs if os.path.isdir(logs) else replay_dir


def find_checkpoints(replay_dir: str) -> list[int]:
  """The checkpoint indices that have any file in `replay_dir` (or its replay_logs/)."""
  replay_dir = _resolve_dir(replay_dir)
  found = {int(m[2]) for m in map(_ANY_RE.match, os.listdir(replay_dir)) if m}
  if not found:
    raise ReplayFileError(f"{replay_dir} holds no DQN Replay checkpoint files (expected "
                          "$store$_observation_ckpt.<i>.gz and its companions).")
  return sorted(found)


# ---------------------------------------------------------------------------------------------
# Files.


def _gzip_read_exact(f, num_bytes: int, path: str) -> bytes:
  data = f.read(num_bytes)
  if len(data) != num_bytes:
    raise ReplayFileError(f"{path}: file ends early (gzip stream truncated).")
  return data


def _open_gzip(path: str):
  if not os.path.isfile(path):
    raise ReplayFileError(f"missing file {path}.")
  if os.path.getsize(path) == 0:
    raise ReplayFileError(f"{path} is empty.")
  return gzip.open(path, "rb")


def _read_npy_header(f, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
  """(shape, dtype, header bytes) of the .npy inside an open gzip stream."""
  try:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
      raise ValueError(f".npy format version {version} (np.save writes 1.0 or 2.0)")
    shape, fortran_order, dtype = read_header(f)
  except Exception as e:  # pylint: disable=broad-except
    # A damaged header can fail in any of numpy's parsing steps.
    raise ReplayFileError(f"{path}: not a gzip'd .npy array ({type(e).__name__}: {e}).") from e
  if fortran_order:
    raise ReplayFileError(f"{path}: Fortran-ordered arrays are not Dopamine's format.")
  return tuple(shape), np.dtype(dtype), f.tell()


def _load_small(path: str) -> np.ndarray:
  """Loads a small gzip'd .npy whole, checking the gzip CRC (read to the end)."""
  try:
    with _open_gzip(path) as f:
      array = np.load(f, allow_pickle=False)
      if f.read(1):
        raise ReplayFileError(f"{path}: unexpected bytes after the array.")
  except ReplayFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # gzip, zlib and numpy's header parsing each fail their own way on damaged files.
    raise ReplayFileError(f"{path}: corrupt or not a gzip'd .npy array "
                          f"({type(e).__name__}: {e}).") from e
  return array


def _gzip_trailer_size(path: str) -> int:
  """ISIZE, the uncompressed size mod 2**32 that a gzip file records in its last 4 bytes."""
  with open(path, "rb") as f:
    f.seek(-4, os.SEEK_END)
    return struct.unpack("<I", f.read(4))[0]


# ---------------------------------------------------------------------------------------------
# One checkpoint: checks and the episode plan.


@dataclasses.dataclass
class ReplayCheckpoint:
  """One checkpoint's files, checked, and its chronological episode plan (rows are chronological
  positions: 0 is the oldest row)."""
  index: int
  paths: dict[str, str]
  capacity: int
  add_count: int
  observation_header_bytes: int
  terminal: np.ndarray = dataclasses.field(repr=False)  # [num_rows] bool, chronological.
  pad_like: np.ndarray = dataclasses.field(repr=False)  # Action, reward and terminal all 0.
  leading_padding_candidates: int = 0  # Oldest rows that are padding if their frames are zero.
  episodes: list[tuple[int, int, bool]] = dataclasses.field(default_factory=list)
  padding: list[tuple[int, int]] = dataclasses.field(default_factory=list)
  # Rows not converted (padding aside): the headless fragment of a wrapped buffer, and a lone
  # last row (an unfinished episode of one row holds no transition).
  rows_dropped: int = 0

  @property
  def wrapped(self) -> bool:
    return self.add_count > self.capacity

  @property
  def cursor(self) -> int:
    return self.add_count % self.capacity

  @property
  def num_rows(self) -> int:
    """Valid rows (chronological positions 0..num_rows-1)."""
    return min(self.add_count, self.capacity)

  def file_row(self, position: int) -> int:
    """The file row of chronological position `position`."""
    return (self.cursor + position) % self.capacity if self.wrapped else position


def _check_checkpoint(replay_dir: str, index: int, game: Game, stack_size: int) -> ReplayCheckpoint:
  paths = {k: os.path.join(replay_dir, checkpoint_filename(k, index))
           for k in STORE_KEYS + OTHER_KEYS}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise ReplayFileError(f"checkpoint {index} in {replay_dir} is incomplete: missing "
                          f"{', '.join(os.path.basename(p) for p in missing)}.")
  for path in paths.values():
    if os.path.getsize(path) == 0:
      raise ReplayFileError(f"{path} is empty.")
  with _open_gzip(paths["observation"]) as f:
    shape, dtype, header_bytes = _read_npy_header(f, paths["observation"])
  if dtype != np.uint8 or len(shape) != 3 or shape[1:] != FRAME_SHAPE:
    raise ReplayFileError(f"{paths['observation']}: expected uint8 [N, 84, 84] frames, got "
                          f"{dtype} {shape}.")
  capacity = shape[0]
  expected_size = (header_bytes + capacity * FRAME_SHAPE[0] * FRAME_SHAPE[1]) % 2**32
  if _gzip_trailer_size(paths["observation"]) != expected_size:
    raise ReplayFileError(f"{paths['observation']}: truncated or corrupt: its gzip trailer does "
                          f"not match {capacity} frames of 84x84.")
  arrays = {k: _load_small(paths[k]) for k in ("action", "reward", "terminal")}
  for key, kind in (("action", "iu"), ("reward", "f"), ("terminal", "iub")):
    array = arrays[key]
    if array.ndim != 1 or array.dtype.kind not in kind:
      raise ReplayFileError(f"{paths[key]}: expected a 1-d {key} array, got {array.dtype} "
                            f"{array.shape}.")
    if len(array) != capacity:
      raise ReplayFileError(
          f"{paths[key]} has {len(array)} rows but {os.path.basename(paths['observation'])} has "
          f"{capacity}: the checkpoint's arrays have mismatched lengths.")
  add_count = _load_small(paths["add_count"])
  if add_count.ndim != 0 or add_count.dtype.kind not in "iu" or int(add_count) < 1:
    raise ReplayFileError(f"{paths['add_count']}: expected a positive integer, got "
                          f"{add_count.dtype} {add_count!r}.")
  add_count = int(add_count)
  cursor = add_count % capacity
  invalid = _load_small(paths["invalid_range"])
  horizon = len(invalid) - stack_size if invalid.ndim == 1 else -1
  expected = [(cursor - horizon + i) % capacity for i in range(stack_size + max(horizon, 0))]
  if horizon < 1 or invalid.dtype.kind not in "iuf" or invalid.tolist() != expected:
    raise ReplayFileError(
        f"{paths['invalid_range']} = {invalid.tolist()[:12]} does not match add_count "
        f"{add_count} (cursor {cursor}) with stack size {stack_size}; expected "
        f"[(cursor - n + i) % {capacity} for i in range({stack_size} + n)].")
  # Rows never written (add_count < capacity) hold whatever np.empty left there: use and check
  # only the written rows, in chronological order.
  wrapped = add_count > capacity
  order = (np.concatenate([np.arange(cursor, capacity), np.arange(cursor)]) if wrapped
           else np.arange(add_count))
  action = arrays["action"][order].astype(np.int64)
  reward = arrays["reward"][order].astype(np.float32)
  terminal = arrays["terminal"][order].astype(bool)
  bad = np.flatnonzero((action < 0) | (action >= game.num_actions))
  if bad.size:
    raise ReplayFileError(f"{paths['action']}: row {order[bad[0]]} has action {action[bad[0]]} "
                          f"but {game.ale_name} has {game.num_actions} actions (wrong game?).")
  bad = np.flatnonzero(~np.isfinite(reward))
  if bad.size:
    raise ReplayFileError(f"{paths['reward']}: row {order[bad[0]]} has reward {reward[bad[0]]}.")
  pad_like = (action == 0) & (reward == 0) & ~terminal
  # The oldest rows that may be padding. Wrapped buffers, and also a run's final checkpoint
  # (saved with add_count % capacity, so it reads as unwrapped though its row 0 can fall
  # mid-episode), can start anywhere; a buffer that starts with fewer padding rows than a fresh
  # one has (stack_size - 1) starts with a headless fragment, which is dropped.
  leading = 0
  while leading < min(stack_size - 1, len(pad_like)) and pad_like[leading]:
    leading += 1
  ckpt = ReplayCheckpoint(index, paths, capacity, add_count, header_bytes, terminal, pad_like,
                          leading)
  # Provisional plan (assumes the leading candidates' frames are zero); it checks the padding
  # structure now, before any conversion. Conversion re-plans once it has seen those frames.
  _plan_episodes(ckpt, leading, stack_size)
  return ckpt


def _plan_episodes(ckpt: ReplayCheckpoint, leading_padding: int, stack_size: int) -> None:
  """Sets ckpt.episodes / padding / rows_dropped (chronological positions).

  `leading_padding`: how many of the oldest rows are zero padding (then the episode after them
  is complete; a buffer written from empty starts with stack_size - 1 of them); 0 means the
  oldest rows are a headless fragment (a wrapped buffer, or a final checkpoint saved with
  add_count % capacity), dropped up to the first terminal and the padding after it.
  """
  terminal, pad_like = ckpt.terminal, ckpt.pad_like
  num_rows = len(terminal)
  terminals = np.flatnonzero(terminal)
  episodes, padding, head = [], [], 0
  if leading_padding:
    start = leading_padding
    padding.append((0, start))
  elif terminals.size:
    head = int(terminals[0]) + 1
    terminals = terminals[1:]
    padding.append((head, min(head + stack_size - 1, num_rows)))
    start = head + stack_size - 1
  else:
    head = start = num_rows
  for t in terminals:
    t = int(t)
    if t < start:
      raise ReplayFileError(
          f"{ckpt.paths['terminal']}: row {ckpt.file_row(t)} is terminal inside the zero padding "
          "that must precede an episode; not Dopamine's replay format.")
    episodes.append((start, t + 1, True))
    padding.append((t + 1, min(t + stack_size, num_rows)))
    start = t + stack_size
  if start < num_rows - 1:
    episodes.append((start, num_rows, False))
  elif start == num_rows - 1:
    head += 1  # A one-row unfinished episode: no transition, and the sampler wants T >= 2.
  for lo, hi in padding:
    bad = np.flatnonzero(~pad_like[lo:hi])
    if bad.size:
      raise ReplayFileError(
          f"{ckpt.paths['action']} / reward / terminal: row {ckpt.file_row(lo + int(bad[0]))} "
          "should be zero padding (action 0, reward 0, terminal 0) before an episode but is "
          "not; not Dopamine's replay format.")
  ckpt.episodes, ckpt.rows_dropped = episodes, head
  ckpt.padding = [(lo, hi) for lo, hi in padding if lo < hi]


def check_replay_dir(replay_dir: str, game: Union[str, Game], *,
                     checkpoints: Optional[Iterable[int]] = None,
                     stack_size: int = STACK_SIZE) -> list[ReplayCheckpoint]:
  """Checks every selected checkpoint's files (cheap checks, no frame decompression)."""
  game = game if isinstance(game, Game) else get_game(game)
  replay_dir = _resolve_dir(replay_dir)
  available = find_checkpoints(replay_dir)
  wanted = available if checkpoints is None else sorted(set(int(c) for c in checkpoints))
  missing = [c for c in wanted if c not in available]
  if missing:
    raise ReplayFileError(f"{replay_dir} has no files of checkpoint(s) {missing}; it has "
                          f"{available}.")
  return [_check_checkpoint(replay_dir, c, game, stack_size) for c in wanted]


# ---------------------------------------------------------------------------------------------
# Streaming frames.


class _FrameStream:
  """A checkpoint's observation rows in chronological order, decompressed chunk by chunk.

  `take(lo, hi)` returns chronological rows [lo, hi); successive calls must not go backwards.
  """

  def __init__(self, ckpt: ReplayCheckpoint):
    self._ckpt = ckpt
    self._chunk_rows = _CHUNK_ROWS
    self._chunks = self._read_chunks()
    self._buffer: list[np.ndarray] = []
    self._buffer_start = 0  # Chronological position of the buffer's first row.
    self._buffer_stop = 0

  def _read_chunks(self) -> Iterator[np.ndarray]:
    ckpt, path = self._ckpt, self._ckpt.paths["observation"]
    row_bytes = FRAME_SHAPE[0] * FRAME_SHAPE[1]
    if ckpt.wrapped:
      segments = [(ckpt.cursor, ckpt.capacity), (0, ckpt.cursor)]
    else:
      segments = [(0, ckpt.num_rows)]
    for lo, hi in segments:
      try:
        with gzip.open(path, "rb") as f:
          _skip(f, ckpt.observation_header_bytes + lo * row_bytes, path)
          for row in range(lo, hi, self._chunk_rows):
            rows = min(self._chunk_rows, hi - row)
            data = _gzip_read_exact(f, rows * row_bytes, path)
            yield np.frombuffer(data, np.uint8).reshape(rows, *FRAME_SHAPE)
          if hi == ckpt.capacity or not ckpt.wrapped:
            _skip(f, (ckpt.capacity - hi) * row_bytes, path)
            if f.read(1):  # Reading to the end checks the gzip CRC.
              raise ReplayFileError(f"{path}: unexpected bytes after the frames.")
      except ReplayFileError:
        raise
      except (OSError, EOFError, zlib.error) as e:
        raise ReplayFileError(f"{path}: corrupt gzip data ({type(e).__name__}: {e}).") from e

  def take(self, lo: int, hi: int) -> np.ndarray:
    if lo < self._buffer_start:
      raise AssertionError("_FrameStream.take must move forward.")
    while self._buffer_stop < hi:
      chunk = next(self._chunks)
      self._buffer.append(chunk)
      self._buffer_stop += len(chunk)
    while self._buffer and self._buffer_start + len(self._buffer[0]) <= lo:
      self._buffer_start += len(self._buffer.pop(0))  # Entirely before `lo`: drop.
    if hi <= lo:
      return np.zeros((0, *FRAME_SHAPE), np.uint8)
    parts, start = [], self._buffer_start
    for chunk in self._buffer:  # Only the overlapping parts of the chunks are copied.
      if start >= hi:
        break
      parts.append(chunk[max(lo - start, 0):hi - start])
      start += len(chunk)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

  def close(self) -> None:
    self._chunks.close()


def _skip(f, num_bytes: int, path: str) -> None:
  while num_bytes > 0:
    step = min(num_bytes, 32 << 20)
    _gzip_read_exact(f, step, path)
    num_bytes -= step


def read_checkpoint(ckpt: ReplayCheckpoint, *, stack_size: int = STACK_SIZE,
                    progress: Optional[Callable[[int], None]] = None) -> Iterator[dict]:
  """Yields one checkpoint's episodes (RLDS dicts, see `rlds.make_episode`), oldest first."""
  small = {k: _load_small(ckpt.paths[k]) for k in ("action", "reward")}
  if ckpt.wrapped:
    order = np.concatenate([np.arange(ckpt.cursor, ckpt.capacity), np.arange(ckpt.cursor)])
  else:
    order = np.arange(ckpt.num_rows)
  action = small["action"][order].astype(np.int64)
  reward = small["reward"][order].astype(np.float32)
  stream = _FrameStream(ckpt)
  try:
    if ckpt.leading_padding_candidates:
      leading = stream.take(0, ckpt.leading_padding_candidates)
      zero = 0
      while zero < len(leading) and not leading[zero].any():
        zero += 1
      if zero != ckpt.leading_padding_candidates:
        _plan_episodes(ckpt, zero, stack_size)
    items = sorted([(lo, hi, None) for lo, hi in ckpt.padding] + ckpt.episodes)
    episode_id = done = 0
    for lo, hi, terminated in items:
      frames = stream.take(lo, hi)
      if terminated is None:
        nonzero = np.flatnonzero(frames.reshape(len(frames), -1).any(axis=1))
        if nonzero.size:
          raise ReplayFileError(
              f"{ckpt.paths['observation']}: row {ckpt.file_row(lo + int(nonzero[0]))} should be "
              "a zero padding frame before an episode but is not.")
        continue
      if terminated:
        frames = np.concatenate([frames, np.zeros((1, *FRAME_SHAPE), np.uint8)])
        acts = np.concatenate([action[lo:hi], [0]])
        rews = np.concatenate([reward[lo:hi], np.zeros(1, np.float32)])
      else:
        acts, rews = action[lo:hi], reward[lo:hi]
      yield rlds.make_episode(frames, acts, rews, terminated=terminated,
                              checkpoint_id=ckpt.index, episode_id=episode_id)
      episode_id += 1
      if progress is not None:
        progress(hi - done)
        done = hi
    if progress is not None and ckpt.num_rows > done:
      progress(ckpt.num_rows - done)
  finally:
    stream.close()


@dataclasses.dataclass
class ConversionResult:
  """What a conversion wrote: per split summaries, and the rows it could not convert."""
  path: str
  splits: list[rlds.SplitSummary]
  rows_dropped: dict[int, int]  # checkpoint -> rows dropped (see ReplayCheckpoint.rows_dropped).


def convert_run(replay_dir: str, data_dir: str, game: Union[str, Game], run: int, *,
                checkpoints: Optional[Iterable[int]] = None, dataset_name: str = DATASET_NAME,
                overwrite: bool = False, stack_size: int = STACK_SIZE,
                progress: Optional[Callable[[int], None]] = None) -> ConversionResult:
  """Converts one game-run's replay checkpoints into `{data_dir}/{dataset_name}/{Game}_run_{run}`.

  All files are checked before conversion starts; the output appears atomically at the end (a
  failure leaves no output and an existing dataset untouched; see `rlds.EpisodeWriter`).
  `progress(n)` is called with the number of replay rows just converted.
  """
  game = game if isinstance(game, Game) else get_game(game)
  ckpts = check_replay_dir(replay_dir, game, checkpoints=checkpoints, stack_size=stack_size)
  with rlds.EpisodeWriter(data_dir, game, run, dataset_name=dataset_name, overwrite=overwrite,
                          description="DQN Replay Dataset checkpoints converted to RLDS by "
                          "scaled_ql.data.dqn_replay.") as writer:
    for ckpt in ckpts:
      for episode in read_checkpoint(ckpt, stack_size=stack_size, progress=progress):
        writer.write(episode)
    splits = writer.summary()
  return ConversionResult(writer.path, splits, {c.index: c.rows_dropped for c in ckpts})


def total_rows(ckpts: Iterable[ReplayCheckpoint]) -> int:
  """Rows the conversion of `ckpts` will report through `progress`."""
  return sum(c.num_rows for c in ckpts)
