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


def resize_area(frame: np.ndarray, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
  """Shrinks a [H, W] uint8 frame to `shape` by area averaging, like `cv2.INTER_AREA`.

  Float32 arithmetic in OpenCV's order (columns, then rows; taps summed in sequence; round half
  to even), so the result is the same to the bit, not just to +-1: the policy must see the pixels
  the dataset holds. (Checked against opencv-python-headless 4.11 on real and random 210x160
  frames. Integer factors, e.g. 168 -> 84, are refused: OpenCV computes those another way.)
  """
  if frame.ndim != 2:
    raise ValueError(f"resize_area takes a single [H, W] frame, got shape {frame.shape}.")
  # Columns first, as OpenCV does; both passes gather whole rows (fast), hence the transposes.
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
  them.
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
    self._screens = np.zeros((2, height, width), np.uint8)  # The last two frames fetched.
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

  def reset(self) -> np.ndarray:
    """Starts a new episode; returns its first frame, [84, 84] uint8."""
    self._ale.reset_game()
    self._episode_over = False
    self._ale.getScreenGrayscale(self._screens[1])
    return resize_area(self._screens[1])

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
    ale, ale_action = self._ale, self._actions[int(action)]
    reward, fetched = 0.0, 0
    terminated = truncated = False
    for t in range(self._frame_skip):
      reward += ale.act(ale_action)
      terminated = ale.game_over(with_truncation=False)
      truncated = not terminated and ale.getEpisodeFrameNumber() >= self._max_episode_frames
      ended = terminated or truncated
      if t >= self._frame_skip - 2 or ended:
        self._screens[0] = self._screens[1]
        ale.getScreenGrayscale(self._screens[1])
        fetched += 1
      if ended:
        break
    self._episode_over = terminated or truncated
    screen = self._screens.max(axis=0) if fetched >= 2 else self._screens[1]
    return resize_area(screen), float(reward), terminated, truncated


def make_variant_env(game: GameLike, mode: Optional[int], difficulty: Optional[int], seed: int,
                     **kwargs) -> AtariEnv:
  """An `AtariEnv` of one game variant (a ROM mode and difficulty); kwargs go to AtariEnv."""
  return AtariEnv(game, seed, mode=mode, difficulty=difficulty, **kwargs)


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
    self._stack = np.zeros((*self._frame_shape, stack_size), np.uint8)
    self._started = False

  @property
  def stack_size(self) -> int:
    return self._stack.shape[-1]

  def _check(self, frame: np.ndarray) -> None:
    if frame.shape != self._frame_shape or frame.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 {self._frame_shape}, got {frame.dtype} "
                       f"{frame.shape}.")

  def reset(self, first_frame: np.ndarray) -> np.ndarray:
    """Starts an episode: zeros, then `first_frame` last. Returns a copy of the stack."""
    self._check(first_frame)
    self._stack[...] = 0
    self._stack[..., -1] = first_frame
    self._started = True
    return self._stack.copy()

  def push(self, frame: np.ndarray) -> np.ndarray:
    """Appends `frame`, dropping the oldest. Returns a copy of the stack."""
    if not self._started:
      raise RuntimeError("FrameStacker.push() before reset(): an episode must start with reset().")
    self._check(frame)
    self._stack[..., :-1] = self._stack[..., 1:]
    self._stack[..., -1] = frame
    return self._stack.copy()


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
      self._stackers = [FrameStacker() for _ in self._specs]
      self._returns = np.zeros(len(self._specs), np.float64)
      self._lengths = np.zeros(len(self._specs), np.int64)
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
    return np.stack([st.reset(env.reset()) for env, st in zip(self._envs, self._stackers)])

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
    obs = np.empty((n, *FRAME_SHAPE, STACK_SIZE), np.uint8)
    next_obs = np.empty_like(obs)
    rewards = np.zeros(n, np.float32)
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    done = np.zeros(n, bool)
    episode_return = np.full(n, np.nan, np.float64)
    episode_length = np.zeros(n, np.int64)
    for i, (env, stacker) in enumerate(zip(self._envs, self._stackers)):
      frame, rewards[i], terminated[i], truncated[i] = env.step(int(actions[i]))
      next_obs[i] = stacker.push(frame)
      self._returns[i] += rewards[i]
      self._lengths[i] += 1
      if terminated[i] or truncated[i]:
        done[i] = True
        episode_return[i], episode_length[i] = self._returns[i], self._lengths[i]
        self._returns[i], self._lengths[i] = 0.0, 0
        obs[i] = stacker.reset(env.reset())
      else:
        obs[i] = next_obs[i]
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
