"""Vectorised Atari envs: N envs of any games and variants, stepped together, 4-frame stacked,
auto-reset, in this process or split over worker processes."""
from __future__ import annotations

import multiprocessing
import traceback
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from scaled_ql.envs.atari import (DEFAULT_FRAME_SKIP, DEFAULT_MAX_EPISODE_FRAMES,
                                  DEFAULT_STICKY_ACTION_PROB, AtariEnv)
from scaled_ql.envs.resize import resize_area
from scaled_ql.envs.stacking import _Stacks
from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE
from scaled_ql.games import Game, get_game


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
