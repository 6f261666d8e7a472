"""One game's bounded in-memory pool of single Atari frames, with n-step targets (`FramePool`).

A `FramePool` holds one game's most recent episodes in a preallocated ring of single 84x84 uint8
frames (`capacity` frames) and never a stacked observation. Each episode is written
contiguously at a logical frame counter (physical row = counter mod capacity, so an episode may
wrap round the ring's end). Per step it keeps only what sampling needs: the action, the n-step
clipped discounted return, the discount to bootstrap with, and how many steps ahead the next
observation lies. Stacks of 4 (and next stacks) are gathered when a batch is sampled, with
zero frames before an episode's first frame, exactly as `scaled_ql.envs.FrameStacker` stacks
them for acting. Host memory is ~7,066 bytes per stored frame (the frame plus 10 bytes of
per-step arrays). Eviction is FIFO by whole episodes.

Two ways in, one set of targets:
- `add(episode)`: a whole RLDS episode (the offline sampler, the logged agent, offline seeding);
- `begin(frame)` then `append(action, reward, frame, done=..., terminal=...)` per env step: an
  episode still being played (online fine-tuning's in-process replay). A transition becomes
  sampleable as soon as its target is final: when its n-step window is complete, or when the
  episode ends; the targets are bit for bit those `add` computes for the whole episode
  (`n_step_targets`). An episode that alone would overflow the pool is cut there (closed as
  truncated, which bootstraps) and goes on as a new episode: raise the capacity to avoid it.

`state_arrays()` / `load_state_arrays()` save and restore the live contents (online replay
checkpoints); an episode still open is restored closed, with the transitions final at the save.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Optional, Union

import numpy as np

from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE
from scaled_ql.games import Game, get_game

Episode = Mapping[str, Any]
_STEP_FIELDS = ("observation", "action", "reward", "is_first", "is_last", "is_terminal")


def _describe(game: Game, position: Optional[int], episode: Episode) -> str:
  where = f"game {game.name!r}, episode {position}" if position is not None else \
      f"game {game.name!r}, episode"
  meta = [f"{k}={episode[k]!r}" for k in ("episode_id", "checkpoint_id", "run")
          if isinstance(episode, Mapping) and k in episode]
  return f"{where} ({', '.join(meta)})" if meta else where


def validate_episode(episode: Episode, game: Game, position: Optional[int] = None) -> int:
  """Checks one episode against the RLDS step contract; returns its length T.

  Raises a ValueError naming the game, the episode (stream position and metadata) and the field
  that is wrong: missing fields, lengths that disagree, observations that are not uint8
  [T, 84, 84], actions outside the game's minimal action set, non-finite rewards, first/last/
  terminal flags that are not those of one whole episode, or a `game` of another game.
  """
  where = _describe(game, position, episode)
  if not isinstance(episode, Mapping):
    raise ValueError(f"{where}: an episode is a dict of arrays, got {type(episode).__name__}.")
  missing = [k for k in _STEP_FIELDS if k not in episode]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}; an episode has {list(_STEP_FIELDS)}.")
  if "game" in episode:
    name = episode["game"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    try:
      other = get_game(name)
    except ValueError as e:
      raise ValueError(f"{where}: field 'game' is {episode['game']!r}: {e}") from None
    if other.name != game.name:
      raise ValueError(f"{where}: field 'game' is {episode['game']!r}, but this is the pool of "
                       f"{game.name!r}.")
  obs = episode["observation"]
  if not isinstance(obs, np.ndarray) or obs.dtype != np.uint8 or obs.ndim != 3 or \
      obs.shape[1:] != FRAME_SHAPE:
    desc = f"{obs.dtype} {obs.shape}" if isinstance(obs, np.ndarray) else type(obs).__name__
    raise ValueError(f"{where}: field 'observation' must be uint8 [T, 84, 84] single frames, "
                     f"got {desc}.")
  length = obs.shape[0]
  arrays = {}
  for k in _STEP_FIELDS[1:]:
    a = np.asarray(episode[k])
    if a.shape != (length,):
      raise ValueError(f"{where}: field {k!r} has shape {a.shape}, but 'observation' has "
                       f"{length} steps: every step field must have shape ({length},).")
    arrays[k] = a
  if length < 2:
    raise ValueError(f"{where}: {length} step(s); an episode needs at least 2 (one transition).")
  action = arrays["action"]
  if not np.issubdtype(action.dtype, np.integer):
    raise ValueError(f"{where}: field 'action' must be integers, got {action.dtype}.")
  bad = np.flatnonzero((action[:-1] < 0) | (action[:-1] >= game.num_actions))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"{where}: field 'action' at step {i} is {action[i]}, outside {game.name}'s "
                     f"{game.num_actions} minimal actions (0..{game.num_actions - 1}).")
  reward = arrays["reward"]
  if not np.issubdtype(reward.dtype, np.number) or not np.all(np.isfinite(reward[:-1])):
    raise ValueError(f"{where}: field 'reward' must be finite numbers, got {reward.dtype} "
                     f"{reward[:8]}...")
  for k, expect in (("is_first", 0), ("is_last", length - 1)):
    flags = arrays[k].astype(bool)
    if not flags[expect] or flags.sum() != 1:
      raise ValueError(f"{where}: field {k!r} must be True at step {expect} only (one whole "
                       f"episode), got True at steps {np.flatnonzero(flags)[:8].tolist()}.")
  if np.any(arrays["is_terminal"][:-1].astype(bool)):
    raise ValueError(f"{where}: field 'is_terminal' is True before the last step (at "
                     f"{np.flatnonzero(arrays['is_terminal'][:-1])[:8].tolist()}); only the "
                     f"last step can be terminal.")
  return length


def n_step_targets(reward: np.ndarray, terminal: bool, n_step: int, gamma: float):
  """Per-transition n-step targets of one episode with T steps (T - 1 transitions).

  reward [T] (the last step's is unused), terminal: the episode ended by game over. Returns
  (returns [T-1] float32: sum_{i<k} gamma^i clip(r_{t+i}, -1, 1); discounts [T-1] float32:
  gamma^k, or 0 when the window reaches a terminal last step; ks [T-1] uint8: k, the steps
  summed = min(n, T-1-t), so the next observation is step t + k), as
  `scaled_ql.losses.n_step_return` defines them.
  """
  m = reward.shape[0] - 1
  clipped = np.clip(reward[:m].astype(np.float64), -1.0, 1.0)
  returns = np.zeros(m, np.float64)
  for i in range(min(n_step, m)):
    returns[:m - i] += gamma**i * clipped[i:]
  ks = np.minimum(n_step, m - np.arange(m))
  discounts = np.power(float(gamma), ks)
  if terminal:
    discounts[np.arange(m) + ks == m] = 0.0
  return returns.astype(np.float32), discounts.astype(np.float32), ks.astype(np.uint8)


@dataclasses.dataclass
class _Live:
  """One episode in a pool: where it is, where it came from, how many transitions are final."""
  start: int  # logical frame counter of its first step (physical row = start % capacity).
  length: int  # steps T (frames).
  position: Optional[int]  # stream position in the game's source.
  transitions: int = -1  # sampleable transitions: T - 1 once closed; fewer while open.

  def __post_init__(self):
    if self.transitions < 0:
      self.transitions = self.length - 1


class FramePool:
  """One game's bounded FIFO pool of whole episodes as single frames (see module docstring).

  `add(episode)` validates, filters by checkpoint and ingests an episode, evicting the oldest
  ones as needed. `gather(u, ...)` writes the transitions with logical indices `u` (0 ..
  num_transitions - 1, the live episodes oldest first) into batch arrays.
  """

  def __init__(self, game: Union[str, Game], capacity: int, *, n_step: int = 3,
               gamma: float = 0.99, stack_size: int = STACK_SIZE,
               checkpoint_range: Optional[tuple[int, int]] = None):
    self.game = game if isinstance(game, Game) else get_game(game)
    if int(capacity) != capacity or capacity < 2:
      raise ValueError(f"pool capacity for {self.game.name!r} must be an integer >= 2 frames, "
                       f"got {capacity!r}.")
    if int(n_step) != n_step or not 1 <= n_step <= 255:
      raise ValueError(f"n_step must be an integer in [1, 255], got {n_step!r}.")
    if not 0.0 <= gamma <= 1.0:
      raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    if int(stack_size) != stack_size or stack_size < 1:
      raise ValueError(f"stack_size must be a positive integer, got {stack_size!r}.")
    if checkpoint_range is not None:
      lo, hi = checkpoint_range
      if int(lo) != lo or int(hi) != hi or lo > hi:
        raise ValueError(f"checkpoint_range must be (first, last) checkpoint ids with first <= "
                         f"last (both kept), got {checkpoint_range!r}.")
      checkpoint_range = (int(lo), int(hi))
    self.capacity, self.n_step, self.gamma = int(capacity), int(n_step), float(gamma)
    self.stack_size, self.checkpoint_range = int(stack_size), checkpoint_range
    # Row `capacity` stays zero: the padding frame before an episode's first frame.
    self._frames = np.zeros((self.capacity + 1, *FRAME_SHAPE), np.uint8)
    self._action = np.zeros(self.capacity, np.uint8)
    self._return = np.zeros(self.capacity, np.float32)
    self._discount = np.zeros(self.capacity, np.float32)
    self._k = np.zeros(self.capacity, np.uint8)
    self._live: collections.deque[_Live] = collections.deque()
    self._end = 0  # logical frame counter after the newest episode.
    self._num_frames = 0
    self._num_transitions = 0
    self._open: Optional[list[float]] = None  # The open episode's clipped rewards (streaming).
    self._index = None  # (starts, cumulative transitions) of the live episodes, built lazily.

  # -- Contents. ----------------------------------------------------------------------------
  @property
  def num_frames(self) -> int:
    return self._num_frames

  @property
  def num_episodes(self) -> int:
    return len(self._live)

  @property
  def num_transitions(self) -> int:
    return self._num_transitions

  @property
  def nbytes(self) -> int:
    """Host bytes of the pool's arrays (frames and per-step arrays)."""
    return sum(a.nbytes for a in (self._frames, self._action, self._return, self._discount,
                                  self._k))

  @property
  def bytes_per_frame(self) -> float:
    return self.nbytes / max(self._num_frames, 1)

  @property
  def oldest(self) -> Optional[_Live]:
    return self._live[0] if self._live else None

  @property
  def end(self) -> int:
    """The logical frame counter where the next episode will be written."""
    return self._end

  def episodes(self) -> tuple[_Live, ...]:
    """The live episodes, oldest first."""
    return tuple(self._live)

  def clear(self, end: int = 0) -> None:
    """Drops every episode; the next one is written at logical frame counter `end`."""
    self._live.clear()
    self._end, self._num_frames, self._index = int(end), 0, None
    self._num_transitions, self._open = 0, None

  # -- Ingest. ------------------------------------------------------------------------------
  def accepts(self, episode: Episode, position: Optional[int] = None) -> bool:
    """Whether `episode` passes the checkpoint filter (it names no checkpoint: an error)."""
    if self.checkpoint_range is None:
      return True
    if "checkpoint_id" not in episode:
      raise ValueError(f"{_describe(self.game, position, episode)}: no 'checkpoint_id', but the "
                       f"pool filters on checkpoint_range={self.checkpoint_range}.")
    lo, hi = self.checkpoint_range
    return lo <= int(episode["checkpoint_id"]) <= hi

  def add(self, episode: Episode, position: Optional[int] = None) -> bool:
    """Ingests one episode (evicting the oldest as needed); False if the filter dropped it.

    `position` is the episode's stream position, kept for the sampler's state.
    """
    length = validate_episode(episode, self.game, position)
    if not self.accepts(episode, position):
      return False
    if length > self.capacity:
      raise ValueError(f"{_describe(self.game, position, episode)}: {length} frames do not fit "
                       f"a pool of {self.capacity} frames; raise the pool size.")
    returns, discounts, ks = n_step_targets(
        np.asarray(episode["reward"]), bool(np.asarray(episode["is_terminal"])[-1]),
        self.n_step, self.gamma)
    if self._open is not None:
      raise ValueError(f"game {self.game.name!r}: add() while an episode is open (begin() without "
                       f"its last append()); a pool is fed one way at a time.")
    self._make_room(length)
    first = self._end % self.capacity
    for dst, src in ((self._frames, episode["observation"]),
                     (self._action, np.asarray(episode["action"])),
                     (self._return, returns), (self._discount, discounts), (self._k, ks)):
      head = min(src.shape[0], self.capacity - first)  # The rest wraps round to row 0.
      dst[first:first + head] = src[:head]
      dst[:src.shape[0] - head] = src[head:]
    self._live.append(_Live(self._end, length, position))
    self._end += length
    self._num_frames += length
    self._num_transitions += length - 1
    self._index = None
    return True

  def _make_room(self, frames: int) -> None:
    while self._num_frames + frames > self.capacity:
      self.evict_oldest()

  def evict_oldest(self) -> None:
    """Drops the oldest episode (an open one is never evicted: `append` cuts it first)."""
    gone = self._live.popleft()
    self._num_frames -= gone.length
    self._num_transitions -= gone.transitions
    self._index = None

  # -- Ingest, one env step at a time. ------------------------------------------------------
  @property
  def is_open(self) -> bool:
    return self._open is not None

  def begin(self, frame: np.ndarray, position: Optional[int] = None) -> None:
    """Opens an episode at its first frame [84, 84] (see the module docstring)."""
    if self._open is not None:
      raise ValueError(f"game {self.game.name!r}: begin() while an episode is open.")
    self._make_room(1)
    self._frames[self._end % self.capacity] = frame
    self._action[self._end % self.capacity] = 0  # As `add` pads a final step's action.
    self._live.append(_Live(self._end, 1, position, 0))
    self._open = []
    self._end += 1
    self._num_frames += 1
    self._index = None

  def append(self, action: int, reward: float, frame: np.ndarray, *, done: bool,
             terminal: bool) -> int:
    """The open episode's next step: `action` taken, `reward` received, `frame` reached.
    done: the episode ended here (terminal: by game over; else truncated, bootstrapped).
    Returns the transitions that became sampleable."""
    if self._open is None:
      raise ValueError(f"game {self.game.name!r}: append() without an open episode (begin()).")
    live = self._live[-1]
    if live.length == self.capacity:  # The episode alone fills the pool: cut it (truncated).
      self._finalize(live, live.length - 1, terminal=False)
      last = self._frames[(live.start + live.length - 1) % self.capacity].copy()
      self._open = None
      self.evict_oldest()  # It is the only episode.
      self.begin(last)
      live = self._live[-1]
    self._make_room(1)
    t = live.length - 1
    self._action[(live.start + t) % self.capacity] = action
    self._open.append(min(max(float(reward), -1.0), 1.0))
    self._frames[self._end % self.capacity] = frame
    self._action[self._end % self.capacity] = 0
    live.length += 1
    self._end += 1
    self._num_frames += 1
    before = live.transitions
    m = live.length - 1
    if done:
      self._finalize(live, m, terminal=bool(terminal))
      self._open = None
    elif m - self.n_step >= live.transitions:  # The window of step m - n is complete.
      self._finalize(live, m - self.n_step + 1, terminal=None)
    self._index = None
    return live.transitions - before

  def _finalize(self, live: _Live, upto: int, terminal: Optional[bool]) -> None:
    """Targets of steps live.transitions .. upto - 1 of the open episode. terminal None: full
    n-step windows inside the episode; else the episode ends at step `upto` (so the windows are
    cut there), by game over (terminal) or not. The arithmetic is `n_step_targets`'."""
    m = live.length - 1
    for t in range(live.transitions, upto):
      k = self.n_step if terminal is None else min(self.n_step, m - t)
      value = 0.0
      for i in range(k):
        value += self.gamma**i * self._open[t + i]
      row = (live.start + t) % self.capacity
      self._return[row] = value
      self._discount[row] = 0.0 if (terminal and t + k == m) else np.power(self.gamma,
                                                                           np.int64(k))
      self._k[row] = k
    self._num_transitions += max(upto - live.transitions, 0)
    live.transitions = max(upto, live.transitions)

  # -- Saving and restoring the contents. ---------------------------------------------------
  def state_arrays(self) -> dict:
    """The live contents as arrays (logical order); an open episode is saved closed, with the
    transitions final now."""
    first = self._live[0].start if self._live else self._end
    rows = (first + np.arange(self._num_frames)) % self.capacity
    episodes = np.array([[e.start, e.length, e.transitions,
                          -1 if e.position is None else e.position] for e in self._live],
                        np.int64).reshape(-1, 4)
    return dict(frames=self._frames[rows], action=self._action[rows],
                ret=self._return[rows], discount=self._discount[rows], k=self._k[rows],
                episodes=episodes, end=np.int64(self._end))

  def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
    """Replaces the contents by those of `state_arrays()` (of a pool of the same capacity)."""
    episodes = np.asarray(arrays["episodes"], np.int64).reshape(-1, 4)
    frames = int(episodes[:, 1].sum()) if len(episodes) else 0
    if frames > self.capacity or len(arrays["frames"]) != frames:
      raise ValueError(f"game {self.game.name!r}: saved pool contents of {frames} frames do not "
                       f"fit this pool of {self.capacity} frames (or are inconsistent).")
    first = int(episodes[0, 0]) if len(episodes) else int(arrays["end"])
    self.clear(first)
    rows = (first + np.arange(frames)) % self.capacity
    for dst, key in ((self._frames, "frames"), (self._action, "action"),
                     (self._return, "ret"), (self._discount, "discount"), (self._k, "k")):
      dst[rows] = arrays[key]
    for start, length, transitions, position in episodes.tolist():
      self._live.append(_Live(start, length, None if position < 0 else position, transitions))
      self._num_transitions += transitions
    self._num_frames, self._end = frames, int(arrays["end"])

  # -- Sampling. ----------------------------------------------------------------------------
  def _episode_index(self):
    if self._index is None:
      starts = np.array([e.start for e in self._live], np.int64)
      transitions = np.array([e.transitions for e in self._live], np.int64)
      cum = np.cumsum(transitions)
      self._index = (starts, cum, cum - transitions)
    return self._index

  def locate(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logical transition indices -> (physical rows, steps within their episodes)."""
    starts, cum, before = self._episode_index()
    episode = np.searchsorted(cum, u, side="right")
    step = u - before[episode]
    return (starts[episode] + step) % self.capacity, step

  def _stack_rows(self, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """[N, stack] frame rows of the stacks ending at `rows`: the zero row before step 0."""
    offsets = np.arange(1 - self.stack_size, 1)
    index = (rows[:, None] + offsets) % self.capacity
    index[(steps[:, None] + offsets) < 0] = self.capacity
    return index

  def gather(self, u: np.ndarray, observation: np.ndarray, next_observation: np.ndarray,
             action: np.ndarray, reward: np.ndarray, discount: np.ndarray) -> None:
    """Writes transitions `u` (logical indices) into the given [len(u), ...] batch arrays."""
    if self.num_transitions == 0:
      raise ValueError(f"game {self.game.name!r}: the pool is empty; nothing to sample.")
    rows, steps = self.locate(np.asarray(u, np.int64))
    ks = self._k[rows]
    action[:] = self._action[rows]
    reward[:] = self._return[rows]
    discount[:] = self._discount[rows]
    for out, index in ((observation, self._stack_rows(rows, steps)),
                       (next_observation,
                        self._stack_rows((rows + ks) % self.capacity, steps + ks))):
      for j in range(self.stack_size):  # One gather per slot; the interleave is the cost.
        out[..., j] = self._frames[index[:, j]]
