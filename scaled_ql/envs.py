"""Atari environments: ALE v5 with the DQN preprocessing, frame stacking, game variants, and
vectorised envs.

`AtariEnv` drives `ale_py.ALEInterface` directly (no gymnasium wrappers) with the settings of
gymnasium's `ALE/{Game}-v5` and the preprocessing of DQN / Dopamine, the pipeline that made the
DQN Replay Dataset:
- actions are indices into the game's minimal action set (as in the datasets, see
  `scaled_ql.games`), mapped to ALE action ids;
- sticky actions: the ALE repeats the previous action with probability 0.25 on every frame;
- frame skip 4: each agent step repeats the action 4 emulator frames and sums their rewards;
- the observation is the pixel-wise max over the last two emulator frames of the step, in ALE's
  grayscale palette, resized 210x160 -> 84x84 by area averaging (what `cv2.INTER_AREA` does),
  uint8;
- episodes are truncated after 108,000 emulator frames (27,000 agent steps); no terminal on life
  loss, no no-op starts.
Seeds are turned into ALE seeds the way gymnasium's `AtariEnv.seed_game` does, so
`AtariEnv("pong", s)` runs the same emulator as `ALE/Pong-v5` reset with `seed=s`.

Observations are single frames; `FrameStacker` stacks 4 of them with zero frames before an
episode's first frame, exactly as the offline sampler stacks the DQN Replay data.
"""
from __future__ import annotations

import functools
import multiprocessing
import sys
import threading
import traceback
from typing import Any, NamedTuple, Optional, Sequence, Union

import ale_py
import numpy as np
from ale_py import roms

from scaled_ql.games import Game, get_game

FRAME_SHAPE = (84, 84)  # Must match scaled_ql.networks.qnetwork.FRAME_SHAPE (tests check).
STACK_SIZE = 4
DEFAULT_STICKY_ACTION_PROB = 0.25
DEFAULT_FRAME_SKIP = 4
DEFAULT_MAX_EPISODE_FRAMES = 108_000

GameLike = Union[str, Game]


def _as_game(game: GameLike) -> Game:
  return game if isinstance(game, Game) else get_game(game)


def _ale_seed(seed: int) -> int:
  """The ALE's int32 seed for `seed`, derived as gymnasium's `AtariEnv.seed_game` derives it."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  _, ale_seed = np.random.SeedSequence(int(seed)).generate_state(n_words=2)
  return int(np.array(ale_seed, np.uint32).view(np.int32))


def _new_ale() -> ale_py.ALEInterface:
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  return ale


@functools.lru_cache(maxsize=None)
def available_variants(game: GameLike) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(modes, difficulties) that `game`'s ROM offers, read from the ROM itself."""
  game = _as_game(game)
  ale = _new_ale()
  ale.loadROM(roms.get_rom_path(game.name))
  return tuple(ale.getAvailableModes()), tuple(ale.getAvailableDifficulties())


@functools.lru_cache(maxsize=None)
def _area_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Area-averaging taps for shrinking one axis: (indices, weights), each [out, taps].

  Output pixel i covers the input interval [i * s, (i + 1) * s), s = in / out; each input pixel
  weighs by the fraction of that interval it covers. The taps, their float32 weights and their
  order are OpenCV's (`computeResizeAreaTab`), so that `resize_area` is bit-exact with
  `cv2.resize(..., interpolation=cv2.INTER_AREA)`, the resize that made the DQN Replay Dataset.
  Unused taps have weight 0 (adding 0 changes no float).
  """
  if not 0 < out_size < in_size or in_size % out_size == 0:
    raise ValueError(f"area resizing here only shrinks by a non-integer factor (as OpenCV does "
                     f"it for those), got {in_size} -> {out_size}.")
  scale = 1.0 / (out_size / in_size)  # Computed as OpenCV computes it.
  taps = []
  for i in range(out_size):
    lo = i * scale
    hi = lo + scale
    width = min(scale, in_size - lo)
    first, last = int(np.ceil(lo)), int(np.floor(hi))
    last = min(last, in_size - 1)
    first = min(first, last)
    row = []
    if first - lo > 1e-3:
      row.append((first - 1, (first - lo) / width))
    row.extend((j, 1.0 / width) for j in range(first, last))
    if hi - last > 1e-3:
      row.append((last, min(hi - last, 1.0, width) / width))
    taps.append(row)
  num_taps = max(len(row) for row in taps)
  index = np.zeros((out_size, num_taps), np.int64)
  weight = np.zeros((out_size, num_taps), np.float32)
  for i, row in enumerate(taps):
    for k, (j, w) in enumerate(row):
      index[i, k], weight[i, k] = j, np.float32(w)
  return index, weight


def resize_area(frames: np.ndarray, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
  """Shrinks [..., H, W] uint8 frames to [..., *shape] by area averaging, like `cv2.INTER_AREA`.

  The same to the bit as OpenCV, not just to +-1: the policy must see the pixels the dataset
  holds. OpenCV computes in float32 (columns, then rows; taps summed in sequence; round half to
  even), which `_resize_area_reference` repeats (checked against opencv-python-headless 4.11 on
  real and random 210x160 frames). This function gets the same result about twice as fast, in
  integers, and resizes a batch [N, H, W] in one call (what `VectorAtariEnv` does every step):

  - Every area weight is a multiple of 1 / (in / gcd(in, out)) per axis (1/40 for 160 -> 84,
    1/5 for 210 -> 84), so each output pixel is exactly S / 200 for an integer S <= 255 * 200.
    S is computed exactly in uint16 lanes (four pixels per uint64 word, so each NumPy call
    processes four pixels).
  - OpenCV's float32 value differs from S / 200 by less than 2e-4 (at most about ten roundings of
    relative size 2^-24 on a value <= 255; all terms are non-negative), while S / 200 is at least
    1 / 200 away from a rounding boundary unless it lies exactly on one (S = 100 mod 200). So
    every pixel off a boundary rounds as S / 200 does, and only the pixels on one ("ties", from
    none to a few dozen per Atari frame) take OpenCV's float32 arithmetic, for those pixels alone.

  Shapes where this does not apply (denominators too large for uint16 sums, such as Carnival's
  214 rows; widths not a multiple of 4) take the float32 reference frame by frame. Integer
  factors, e.g. 168 -> 84, are refused: OpenCV computes those another way.
  """
  frames = np.asarray(frames)
  if frames.ndim < 2 or frames.dtype != np.uint8:
    raise ValueError(f"resize_area takes uint8 [..., H, W] frames, got {frames.dtype} "
                     f"{frames.shape}.")
  lead, (height, width) = frames.shape[:-2], frames.shape[-2:]
  plan = _integer_area_plan(height, width, *shape)
  if frames.size == 0:
    return np.zeros((*lead, *shape), np.uint8)
  if plan is None:
    flat = frames.reshape(-1, height, width)
    return np.stack([_resize_area_reference(f, shape) for f in flat]).reshape(*lead, *shape)
  return plan(np.ascontiguousarray(frames).reshape(-1, height, width)).reshape(*lead, *shape)


class _IntegerAreaPlan:
  """`resize_area` for one (H, W) -> (h, w) in exact integer arithmetic (see its docstring).

  Pixels are widened to uint16 and handled four at a time as uint64 words (lane-wise sums and
  products by small integers, none of which exceeds 16 bits, so no carry crosses lanes).
  """

  def __init__(self, height: int, width: int, out_height: int, out_width: int,
               row_period: list[list[tuple[int, list[int]]]],
               columns: tuple[np.ndarray, np.ndarray, int], den: int):
    self.in_shape, self.out_shape = (height, width), (out_height, out_width)
    # Rows repeat with a period of len(row_period) output rows per `self._row_block` input rows:
    # row_period[o] lists (integer weight, [input rows within the period]) of output row o.
    self._row_period = row_period
    self._row_block = height * len(row_period) // out_height
    # Columns: [taps * w] source columns (tap-major) and their integer weights [taps * w, 1],
    # which broadcast over words of four output rows.
    self._col_index = columns[0]
    self._col_flat = columns[0].T.reshape(-1)
    self._col_mult = columns[1].T.reshape(-1, 1).astype(np.uint64)
    self._den = np.float32(den)
    self._half = np.float32(den / 2)
    self._row_index, self._row_weight_f32 = _area_table(height, out_height)
    self._col_weight_f32 = _area_table(width, out_width)[1]
    self._local = threading.local()

  def _scratch(self, n: int) -> dict[str, np.ndarray]:
    """This thread's work arrays for batches of n frames, kept between calls (allocating and
    freeing about 1 MB per call costs page faults)."""
    cache = self._local.__dict__.setdefault("scratch", {})
    if n not in cache:
      (height, width), (out_h, out_w) = self.in_shape, self.out_shape
      words = n * width // 4
      if len(cache) >= 4:  # A few batch sizes (a VectorAtariEnv's groups, single resets).
        del cache[next(iter(cache))]
      cache[n] = dict(
          pixels=np.empty((self._row_block, height // self._row_block, n, width), np.uint16),
          columns=np.empty((width, n, height // self._row_block, len(self._row_period)),
                           np.uint16),
          acc=np.empty((height // self._row_block, words), np.uint64),
          part=np.empty((height // self._row_block, words), np.uint64),
          taps=np.empty((len(self._col_flat), n, out_h), np.uint16),
          total=np.empty((out_w, n * out_h // 4), np.uint64),
          quotient=np.empty((out_w, n * out_h), np.float32),
          whole=np.empty((out_w, n * out_h), np.float32))
    return cache[n]

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """[N, H, W] uint8 (C-contiguous) -> [N, h, w] uint8."""
    n = frames.shape[0]
    (height, width), (out_h, out_w) = self.in_shape, self.out_shape
    scratch = self._scratch(n)
    # The frames as uint16 in the layout [block, H / block, N, W]: input row q * block + r is
    # pixels[r, q], so that every row operation below runs over contiguous arrays of
    # H / block * N * W pixels (NumPy's cost per call and per inner loop is then amortised).
    block, period = self._row_block, len(self._row_period)
    pixels = scratch["pixels"]
    np.copyto(pixels, frames.reshape(n, height // block, block, width).transpose(2, 1, 0, 3))
    # Rows, one period at a time: [block, H / block, N * W / 4] words -> columns [W, N, h]
    # uint16 (transposed for the column pass), each output row of the period summed in a
    # contiguous array and then copied into place (output row q * period + o is [:, :, q, o]).
    words = pixels.view(np.uint64).reshape(block, height // block, -1)
    columns, acc = scratch["columns"], scratch["acc"]
    for o, groups in enumerate(self._row_period):
      for g, (weight, sources) in enumerate(groups):
        if g and weight == 1:  # Added in place.
          for r in sources:
            acc += words[r]
          continue
        part = acc if g == 0 else scratch["part"]
        if len(sources) == 1:
          np.copyto(part, words[sources[0]])
        else:
          np.add(words[sources[0]], words[sources[1]], out=part)
        for r in sources[2:]:
          part += words[r]
        if weight & (weight - 1) == 0:  # A power of two: a shift.
          part <<= weight.bit_length() - 1
        else:
          part *= weight
        if g:
          acc += part
      np.copyto(columns[..., o], acc.view(np.uint16).reshape(-1, n, width).transpose(2, 1, 0))
    # Columns: the source columns of every output column gathered from [W, N, h] into
    # [taps * w, N * h] (words of four output rows), weighted and summed over the taps.
    taps = np.take(columns.reshape(width, n, out_h), self._col_flat, axis=0, out=scratch["taps"])
    taps = taps.reshape(len(self._col_flat), -1).view(np.uint64)
    taps *= self._col_mult
    taps = taps.reshape(-1, out_w, taps.shape[-1])
    total = np.add(taps[0], taps[1], out=scratch["total"])
    for k in range(2, taps.shape[0]):
      total += taps[k]
    # S of every output pixel [w, N, h] -> round(S / den) -> [N, h, w] uint8.
    # round(S / den) = floor((S + den / 2) / den), in float32: S + den / 2 is exact, and so is
    # the quotient where it is a whole number (a tie, S = den / 2 mod den; IEEE division rounds
    # correctly), while any other quotient lies at least 1 / den > 2^-16 from a whole number, far
    # more than its rounding error. So truncation gives the rounded value half up, and the ties
    # are exactly the whole quotients; they are redone with OpenCV's floats.
    quotient, whole = scratch["quotient"], scratch["whole"]
    np.copyto(quotient, total.view(np.uint16).reshape(out_w, -1))
    quotient += self._half
    quotient /= self._den
    out = quotient.reshape(out_w, n, out_h).transpose(1, 2, 0).astype(np.uint8, order="C")
    np.trunc(quotient, out=whole)
    ties = np.flatnonzero(quotient == whole)
    if ties.size:
      j, frame, i = np.unravel_index(ties, (out_w, n, out_h))
      out[frame, i, j] = self._opencv_pixels(frames, frame, i, j)
    return out

  def _opencv_pixels(self, frames: np.ndarray, frame: np.ndarray, i: np.ndarray,
                     j: np.ndarray) -> np.ndarray:
    """OpenCV's float32 result for output pixels (i, j) of `frame` in [N, h, w]."""
    height, width = self.in_shape
    source = (frame[:, None, None] * (height * width) + self._row_index[i][:, :, None] * width
              + self._col_index[j][:, None, :])
    # [T, row taps, column taps]: columns first, each row's taps summed in sequence.
    pixels = frames.reshape(-1)[source].astype(np.float32) * self._col_weight_f32[j][:, None, :]
    rows = pixels[:, :, 0] + pixels[:, :, 1]
    for k in range(2, pixels.shape[2]):
      rows += pixels[:, :, k]
    rows *= self._row_weight_f32[i]
    total = rows[:, 0] + rows[:, 1]
    for k in range(2, rows.shape[1]):
      total += rows[:, k]
    return np.rint(total).astype(np.uint8)


def _integer_taps(in_size: int, out_size: int) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
  """(indices [out, taps], integer weights [out, taps], denominator) equal to `_area_table`'s
  float32 weights (weight = integer / denominator, each row summing to the denominator), or None
  when the table has fewer than 2 taps or its weights are not such fractions."""
  index, weight = _area_table(in_size, out_size)
  den = in_size // np.gcd(in_size, out_size)
  numerator = np.rint(weight.astype(np.float64) * den)
  if (index.shape[1] < 2 or np.any(np.abs(weight - numerator / den) > 1e-6)
      or np.any(numerator.sum(axis=1) != den)):
    return None
  return index, numerator.astype(np.int64), int(den)


def _periodic_taps(index: np.ndarray, weight: np.ndarray, in_size: int,
                   out_size: int) -> Optional[list[list[tuple[int, list[int]]]]]:
  """The taps of one period (out / gcd outputs over in / gcd inputs) as, per output, a list of
  (weight, [inputs within the period]), or None if the taps do not repeat with that period."""
  g = int(np.gcd(in_size, out_size))
  block_in, block_out = in_size // g, out_size // g
  period = []
  for o in range(block_out):
    taps = {}
    for j, w in zip(index[o], weight[o]):
      if w:
        taps[int(j)] = taps.get(int(j), 0) + int(w)
    for q in range(g):
      shifted = {}
      for j, w in zip(index[q * block_out + o], weight[q * block_out + o]):
        if w:
          shifted[int(j) - q * block_in] = shifted.get(int(j) - q * block_in, 0) + int(w)
      if shifted != taps or any(not 0 <= j < block_in for j in taps):
        return None
    groups = {}
    for j, w in sorted(taps.items()):
      groups.setdefault(w, []).append(j)
    # Weight-1 groups last: they add straight into the accumulator (no scratch array).
    period.append(sorted(groups.items(), key=lambda item: (item[0] == 1, item[0])))
  return period


@functools.lru_cache(maxsize=None)
def _integer_area_plan(height: int, width: int, out_height: int,
                       out_width: int) -> Optional[_IntegerAreaPlan]:
  """The exact integer resize for these shapes, or None where it does not apply."""
  rows, columns = _integer_taps(height, out_height), _integer_taps(width, out_width)
  if rows is None or columns is None or width % 4 or out_height % 4:
    return None
  den = rows[2] * columns[2]
  if 255 * den >= 1 << 16:  # Every sum must fit a uint16 lane.
    return None
  row_period = _periodic_taps(rows[0], rows[1], height, out_height)
  if row_period is None:
    return None
  return _IntegerAreaPlan(height, width, out_height, out_width, row_period, columns, den)


def _resize_area_reference(frame: np.ndarray, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
  """`resize_area` of one [H, W] uint8 frame by OpenCV's own float32 arithmetic (slow).

  Columns first, as OpenCV does; taps summed in order; round half to even. Both passes gather
  whole rows (fast), hence the transposes.
  """
  if frame.ndim != 2:
    raise ValueError(f"resize_area takes a single [H, W] frame, got shape {frame.shape}.")
  columns = _shrink_rows(frame.T.astype(np.float32), *_area_table(frame.shape[1], shape[1]))
  out = _shrink_rows(np.ascontiguousarray(columns.T), *_area_table(frame.shape[0], shape[0]))
  return np.rint(out).astype(np.uint8)  # Weights sum to 1: out is within [0, 255].


def _shrink_rows(pixels: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """[in, W] float32 -> [out, W]: sums each output row's weighted taps in order, in float32."""
  taps = pixels[index]  # [out, taps, W]
  taps *= weight[:, :, None]
  out = taps[:, 0] + taps[:, 1]
  for k in range(2, index.shape[1]):
    out += taps[:, k]
  return out


class AtariEnv:
  """One ALE v5 game with the DQN preprocessing; observations are single [84, 84] uint8 frames.

  `reset()` starts an episode and returns its first frame; `step(action)` takes a minimal-set
  action index and returns (frame, reward, terminated, truncated). The observation of a step is
  the max over its last two emulator frames; a step that the episode's end cuts short (no frames
  are played past a game over or the frame limit) shows its final frame alone. `mode` /
  `difficulty` select a game variant (None: the ROM's default); `available_variants(game)` lists
  them. `reset_screen` / `step_screen` are the same steps writing the raw screen (before the
  resize) into a caller's buffer, so that `VectorAtariEnv` resizes all its envs' screens at once.
  """

  def __init__(self, game: GameLike, seed: int, *,
               sticky_action_prob: float = DEFAULT_STICKY_ACTION_PROB,
               frame_skip: int = DEFAULT_FRAME_SKIP,
               max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
               mode: Optional[int] = None, difficulty: Optional[int] = None):
    self._game = _as_game(game)
    if not 0.0 <= sticky_action_prob <= 1.0:
      raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}.")
    if int(frame_skip) != frame_skip or frame_skip < 1:
      raise ValueError(f"frame_skip must be a positive integer, got {frame_skip!r}.")
    if int(max_episode_frames) != max_episode_frames or max_episode_frames < 1:
      raise ValueError(f"max_episode_frames must be a positive integer, got "
                       f"{max_episode_frames!r}.")
    self._frame_skip = int(frame_skip)
    self._max_episode_frames = int(max_episode_frames)
    self._seed = seed

    ale = self._ale = _new_ale()
    ale.setInt("random_seed", _ale_seed(seed))
    ale.setFloat("repeat_action_probability", float(sticky_action_prob))
    ale.loadROM(roms.get_rom_path(self._game.name))
    if mode is not None:
      modes = tuple(ale.getAvailableModes())
      if mode not in modes:
        raise ValueError(f"{self._game.ale_name} has no mode {mode!r}; its ROM offers modes "
                         f"{list(modes)}.")
      ale.setMode(int(mode))
    if difficulty is not None:
      difficulties = tuple(ale.getAvailableDifficulties())
      if difficulty not in difficulties:
        raise ValueError(f"{self._game.ale_name} has no difficulty {difficulty!r}; its ROM offers "
                         f"difficulties {list(difficulties)}.")
      ale.setDifficulty(int(difficulty))
    self._mode, self._difficulty = mode, difficulty

    self._actions = tuple(ale_py.Action(a) for a in self._game.minimal_actions)
    height, width = ale.getScreenDims()
    self._previous = np.zeros((height, width), np.uint8)  # A step's next-to-last frame.
    self._last = np.zeros((height, width), np.uint8)  # A step's last frame.
    self._screen = np.zeros((height, width), np.uint8)  # A step's observation, before resizing.
    self._episode_over = True

  @property
  def game(self) -> Game:
    return self._game

  @property
  def num_actions(self) -> int:
    return self._game.num_actions

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def mode(self) -> Optional[int]:
    return self._mode

  @property
  def difficulty(self) -> Optional[int]:
    return self._difficulty

  @property
  def lives(self) -> int:
    return self._ale.lives()

  @property
  def episode_frame_number(self) -> int:
    """Emulator frames since the episode's start (what truncation counts)."""
    return self._ale.getEpisodeFrameNumber()

  @property
  def screen_shape(self) -> tuple[int, int]:
    """The emulator's screen, (height, width): what `resize_area` shrinks."""
    return self._screen.shape

  def reset(self) -> np.ndarray:
    """Starts a new episode; returns its first frame, [84, 84] uint8."""
    self.reset_screen(self._screen)
    return resize_area(self._screen)

  def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
    """Repeats minimal-set action `action` for frame_skip frames.

    Returns (frame [84, 84] uint8, summed reward, terminated, truncated).
    """
    if self._episode_over:
      raise RuntimeError(f"{self._game.ale_name}: step() called with no episode running; call "
                         "reset() first (also after an episode ends).")
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
      raise ValueError(f"{self._game.ale_name}: action must be an integer index into its "
                       f"{self.num_actions} minimal actions, got {action!r}.")
    if not 0 <= action < self.num_actions:
      raise ValueError(f"{self._game.ale_name} has {self.num_actions} actions (indices 0.."
                       f"{self.num_actions - 1}), got action {action}.")
    reward, terminated, truncated = self.step_screen(int(action), self._screen)
    return resize_area(self._screen), reward, terminated, truncated

  def reset_screen(self, out: np.ndarray) -> None:
    """`reset()` that writes the first raw screen ([H, W] uint8, before resizing) into `out`.

    For batched preprocessing (`VectorAtariEnv` resizes all its envs' screens in one call).
    """
    self._ale.reset_game()
    self._episode_over = False
    self._ale.getScreenGrayscale(out)

  def step_screen(self, action: int, out: np.ndarray) -> tuple[float, bool, bool]:
    """`step()` that writes the observation's raw screen into `out` instead of returning the
    resized frame: the max of the step's last two emulator frames, or its last frame alone when
    the episode's end cuts the step short. `action` (a Python int) is not checked here.

    Returns (summed reward, terminated, truncated).
    """
    if self._episode_over:
      raise RuntimeError(f"{self._game.ale_name}: step() called with no episode running; call "
                         "reset() first (also after an episode ends).")
    ale, ale_action, skip = self._ale, self._actions[action], self._frame_skip
    reward, previous = 0, False
    for t in range(skip):
      reward += ale.act(ale_action)
      terminated = ale.game_over(with_truncation=False)
      truncated = not terminated and ale.getEpisodeFrameNumber() >= self._max_episode_frames
      if terminated or truncated or t == skip - 1:
        break
      if t == skip - 2:  # The next-to-last frame of a full step.
        ale.getScreenGrayscale(self._previous)
        previous = True
    self._episode_over = terminated or truncated
    if previous:  # The step ran to its last frame: max-pool the last two.
      ale.getScreenGrayscale(self._last)
      np.maximum(self._previous, self._last, out=out)
    else:
      ale.getScreenGrayscale(out)
    return float(reward), terminated, truncated


def make_variant_env(game: GameLike, mode: Optional[int], difficulty: Optional[int], seed: int,
                     **kwargs) -> AtariEnv:
  """An `AtariEnv` of one game variant (a ROM mode and difficulty); kwargs go to AtariEnv."""
  return AtariEnv(game, seed, mode=mode, difficulty=difficulty, **kwargs)


# Word types holding a whole stack of uint8 pixels, one byte per frame.
_STACK_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class _Stacks:
  """N frame stacks [N, *frame_shape, stack_size] uint8, oldest frame first.

  With 1, 2, 4 or 8 frames a pixel's stack is one machine word whose bytes are the frames in
  memory order, so pushing a frame into every stack is a shift and an or over [N, 84, 84] words
  (not a copy of 3 of the 4 channels of a channels-last array); `view()` is the uint8 stacks.
  """

  def __init__(self, n: int, frame_shape: tuple[int, int], stack_size: int):
    word = _STACK_WORDS.get(stack_size)
    shape = (n, *frame_shape)
    if word is None:  # Other stack sizes: a plain channels-last array.
      self._words, self._stacks = None, np.zeros((*shape, stack_size), np.uint8)
      return
    self._words = np.zeros(shape, word)
    self._stacks = self._words.view(np.uint8).reshape(*shape, stack_size)
    self._frame = np.zeros(shape, word)  # Scratch: frames widened to words.
    # The newest frame is the word's last byte in memory: its top byte on little-endian machines.
    self._newest = 8 * (stack_size - 1) if sys.byteorder == "little" else 0
    self._older = 8 if sys.byteorder == "little" else -8  # Shifts the others one byte earlier.

  def view(self) -> np.ndarray:
    """The stacks [N, *frame_shape, stack_size] uint8 (a view: copy before handing out)."""
    return self._stacks

  def push(self, frames: np.ndarray) -> None:
    """Appends frames [N, *frame_shape] uint8 to all stacks, dropping the oldest."""
    if self._words is None:
      self._stacks[..., :-1] = self._stacks[..., 1:]
      self._stacks[..., -1] = frames
      return
    if self._older > 0:
      self._words >>= self._older
    else:
      self._words <<= -self._older
    np.copyto(self._frame, frames)
    if self._newest:
      self._frame <<= self._newest
    self._words |= self._frame

  def reset(self, index, frames: np.ndarray) -> None:
    """Stacks `index` (an int, slice or index array) restart: zeros, then `frames` newest."""
    self._stacks[index] = 0
    self._stacks[index, ..., -1] = frames


class FrameStacker:
  """Stacks the last `stack_size` single frames into [84, 84, stack_size], oldest to newest.

  At an episode's start the frames before the first are zeros, exactly as in the DQN Replay
  Dataset (each episode is preceded by stack_size - 1 zero rows). The offline sampler must stack
  the same way, or the acting / evaluated policy sees inputs it was never trained on.
  """

  def __init__(self, stack_size: int = STACK_SIZE, frame_shape: tuple[int, int] = FRAME_SHAPE):
    if stack_size < 1:
      raise ValueError(f"stack_size must be positive, got {stack_size}.")
    self._frame_shape = tuple(frame_shape)
    self._stack_size = int(stack_size)
    self._stacks = _Stacks(1, self._frame_shape, self._stack_size)
    self._started = False

  @property
  def stack_size(self) -> int:
    return self._stack_size

  def _check(self, frame: np.ndarray) -> None:
    if frame.shape != self._frame_shape or frame.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 {self._frame_shape}, got {frame.dtype} "
                       f"{frame.shape}.")

  def reset(self, first_frame: np.ndarray) -> np.ndarray:
    """Starts an episode: zeros, then `first_frame` last. Returns a copy of the stack."""
    self._check(first_frame)
    self._stacks.reset(0, first_frame)
    self._started = True
    return self._stacks.view()[0].copy()

  def push(self, frame: np.ndarray) -> np.ndarray:
    """Appends `frame`, dropping the oldest. Returns a copy of the stack."""
    if not self._started:
      raise RuntimeError("FrameStacker.push() before reset(): an episode must start with reset().")
    self._check(frame)
    self._stacks.push(frame[None])
    return self._stacks.view()[0].copy()


class EnvSpec(NamedTuple):
  """One env of a `VectorAtariEnv`: a game, its seed, and optionally a ROM mode / difficulty."""
  game: str
  seed: int
  mode: Optional[int] = None
  difficulty: Optional[int] = None


def _as_spec(item) -> EnvSpec:
  if isinstance(item, EnvSpec):
    return item
  if isinstance(item, (tuple, list)) and 2 <= len(item) <= 4:
    return EnvSpec(*item)
  raise ValueError(f"an env spec is (game, seed) or (game, seed, mode, difficulty), got {item!r}.")


class VectorAtariEnv:
  """N Atari envs (any mix of games and variants) stepped together, 4-frame stacked, auto-reset.

  `reset()` returns observations [N, 84, 84, 4] uint8. `step(actions)` takes [N] minimal-set
  action indices (each checked against its env's game) and returns (observations, rewards [N]
  float32, terminated [N] bool, truncated [N] bool, info). An env whose episode ended is reset at
  once: its returned observation is the new episode's first (zero-padded) stack, and info holds
  - "episode_done" [N] bool: the env's episode ended on this step;
  - "episode_return" [N] float64, "episode_length" [N] int64 (agent steps): the finished
    episode's undiscounted return and length where episode_done, NaN / 0 elsewhere;
  - "next_observation" [N, 84, 84, 4] uint8: what each action led to before any auto-reset
    (the final observation where episode_done, the same as the observation elsewhere).

  With `num_workers` > 0 the envs are split into that many contiguous groups, each stepped in its
  own process (multiprocessing with pipes, `start_method` 'spawn' or 'forkserver'); results are
  identical to in-process stepping. Call `close()` or use it as a context manager.
  """

  def __init__(self, specs: Sequence[Any], *,
               sticky_action_prob: float = DEFAULT_STICKY_ACTION_PROB,
               frame_skip: int = DEFAULT_FRAME_SKIP,
               max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
               num_workers: int = 0, start_method: str = "spawn"):
    self._specs = tuple(_as_spec(s) for s in specs)
    if not self._specs:
      raise ValueError("VectorAtariEnv needs at least one env spec.")
    self._games = tuple(get_game(s.game) for s in self._specs)
    self._num_actions = np.array([g.num_actions for g in self._games], np.int64)
    env_kwargs = dict(sticky_action_prob=sticky_action_prob, frame_skip=frame_skip,
                      max_episode_frames=max_episode_frames)
    if num_workers < 0:
      raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    self._closed = False
    self._workers: list[tuple[Any, Any]] = []
    self._envs: list[AtariEnv] = []
    self._started = False
    if num_workers == 0:
      self._envs = [AtariEnv(s.game, s.seed, mode=s.mode, difficulty=s.difficulty, **env_kwargs)
                    for s in self._specs]
      n = len(self._specs)
      # Raw screens, one [k, H, W] batch per screen size (a few games' screens are taller), each
      # resized by one call; env i writes into its own row, self._screen_of[i].
      shapes = [env.screen_shape for env in self._envs]
      self._screen_groups, self._screen_of = [], [None] * n
      for shape in dict.fromkeys(shapes):
        members = np.array([i for i in range(n) if shapes[i] == shape])
        screens = np.zeros((len(members), *shape), np.uint8)
        self._screen_groups.append((members, screens))
        for i, screen in zip(members.tolist(), screens):
          self._screen_of[i] = screen
      self._stacks = _Stacks(n, FRAME_SHAPE, STACK_SIZE)
      self._returns = np.zeros(n, np.float64)
      self._lengths = np.zeros(n, np.int64)
    else:
      if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe next to "
                         f"JAX / TF threads), got {start_method!r}.")
      ctx = multiprocessing.get_context(start_method)
      groups = [g for g in np.array_split(np.arange(len(self._specs)), num_workers) if len(g)]
      self._group_sizes = [len(g) for g in groups]
      try:
        for group in groups:
          parent, child = ctx.Pipe()
          proc = ctx.Process(target=_worker, args=(child, [self._specs[i] for i in group],
                                                   env_kwargs), daemon=True)
          proc.start()
          child.close()
          self._workers.append((parent, proc))
        for parent, _ in self._workers:
          _receive(parent)  # Construction errors (bad mode, ...) surface here.
      except BaseException:
        self.close()
        raise

  @property
  def num_envs(self) -> int:
    return len(self._specs)

  @property
  def specs(self) -> tuple[EnvSpec, ...]:
    return self._specs

  @property
  def games(self) -> tuple[Game, ...]:
    return self._games

  @property
  def num_actions(self) -> np.ndarray:
    """[N] int64: each env's action count."""
    return self._num_actions.copy()

  def reset(self) -> np.ndarray:
    """Starts a new episode in every env; returns observations [N, 84, 84, 4] uint8."""
    self._check_open()
    self._started = True
    if self._workers:
      for parent, _ in self._workers:
        parent.send(("reset", None))
      return np.concatenate([_receive(parent) for parent, _ in self._workers])
    self._returns[:] = 0
    self._lengths[:] = 0
    for env, screen in zip(self._envs, self._screen_of):
      env.reset_screen(screen)
    self._stacks.reset(slice(None), self._resized_screens())
    return self._stacks.view().copy()

  def _resized_screens(self) -> np.ndarray:
    """All envs' raw screens resized: [N, 84, 84] uint8."""
    if len(self._screen_groups) == 1:
      return resize_area(self._screen_groups[0][1])
    frames = np.empty((self.num_envs, *FRAME_SHAPE), np.uint8)
    for members, screens in self._screen_groups:
      frames[members] = resize_area(screens)
    return frames

  def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Steps every env with its action; see the class docstring for what comes back."""
    self._check_open()
    if not self._started:
      raise RuntimeError("VectorAtariEnv.step() before reset().")
    actions = np.asarray(actions)
    if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
      raise ValueError(f"actions must be {self.num_envs} integers (one per env), got "
                       f"{actions.dtype} array of shape {actions.shape}.")
    bad = np.flatnonzero((actions < 0) | (actions >= self._num_actions))
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"env {i} ({self._games[i].ale_name}) has {self._num_actions[i]} actions "
                       f"(indices 0..{self._num_actions[i] - 1}), got action {actions[i]}.")
    if self._workers:
      bounds = np.cumsum([0, *self._group_sizes])
      for (parent, _), lo, hi in zip(self._workers, bounds[:-1], bounds[1:]):
        parent.send(("step", actions[lo:hi]))
      return _concatenate_steps([_receive(parent) for parent, _ in self._workers])
    return self._step_local(actions)

  def _step_local(self, actions: np.ndarray):
    n = self.num_envs
    rewards = np.zeros(n, np.float32)
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    # The envs write their raw screens into one batch, resized by one call and pushed into all
    # stacks at once (per-env NumPy calls would cost more than the arithmetic).
    for i, (env, action, screen) in enumerate(zip(self._envs, actions.tolist(), self._screen_of)):
      rewards[i], terminated[i], truncated[i] = env.step_screen(action, screen)
    self._stacks.push(self._resized_screens())
    next_obs = self._stacks.view().copy()
    self._returns += rewards
    self._lengths += 1
    done = terminated | truncated
    episode_return = np.where(done, self._returns, np.nan)
    episode_length = np.where(done, self._lengths, 0)
    ended = np.flatnonzero(done)
    if ended.size:
      self._returns[ended], self._lengths[ended] = 0.0, 0
      for i in ended.tolist():
        self._envs[i].reset_screen(self._screen_of[i])
        self._stacks.reset(i, resize_area(self._screen_of[i]))
      obs = self._stacks.view().copy()
    else:
      obs = next_obs.copy()
    info = dict(episode_done=done, episode_return=episode_return, episode_length=episode_length,
                next_observation=next_obs)
    return obs, rewards, terminated, truncated, info

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("VectorAtariEnv is closed.")

  def close(self) -> None:
    """Stops the worker processes (if any); the env cannot be used afterwards. Idempotent."""
    if self._closed:
      return
    self._closed = True
    for parent, _ in self._workers:
      try:
        parent.send(("close", None))
      except (BrokenPipeError, OSError):
        pass
    for parent, proc in self._workers:
      proc.join(timeout=5)
      if proc.is_alive():
        proc.terminate()
        proc.join(timeout=5)
      parent.close()
    self._workers = []
    self._envs = []

  def __enter__(self) -> "VectorAtariEnv":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _concatenate_steps(parts):
  obs, rewards, terminated, truncated, infos = zip(*parts)
  info = {k: np.concatenate([i[k] for i in infos]) for k in infos[0]}
  return (np.concatenate(obs), np.concatenate(rewards), np.concatenate(terminated),
          np.concatenate(truncated), info)


def _receive(conn):
  """Receives a worker's reply, re-raising an exception it sent with its traceback attached."""
  try:
    status, payload = conn.recv()
  except EOFError as e:
    raise RuntimeError("a VectorAtariEnv worker process died.") from e
  if status == "error":
    exc, tb = payload
    exc.add_note(f"In the VectorAtariEnv worker process:\n{tb}")
    raise exc
  return payload


def _worker(conn, specs, env_kwargs) -> None:
  """A worker process: an in-process VectorAtariEnv over `specs`, driven through `conn`."""
  try:
    env = VectorAtariEnv(specs, **env_kwargs)
    conn.send(("ok", None))
    while True:
      command, payload = conn.recv()
      if command == "close":
        break
      if command == "reset":
        conn.send(("ok", env.reset()))
      elif command == "step":
        conn.send(("ok", env.step(payload)))
  except (EOFError, KeyboardInterrupt):
    pass
  except Exception as e:  # pylint: disable=broad-except
    tb = traceback.format_exc()
    try:
      conn.send(("error", (e, tb)))
    except Exception:  # pylint: disable=broad-except
      conn.send(("error", (RuntimeError(repr(e)), tb)))  # `e` did not pickle.
  finally:
    conn.close()
