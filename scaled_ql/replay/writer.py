"""Writing n-step transitions into a Reverb table: from actors' env steps, or from RLDS episodes.

Each env has its own `reverb.TrajectoryWriter`, and one writer "episode" is one env episode.
Every stacked observation of an episode is appended once (column "observation"); the targets of
a transition (action, n-step return, discount, game_id) are appended with the step on which
they become known, and the item references the two observation cells, so a stack is stored
once although two items (as observation and as next observation) use it. The stack column is
chunked one step per chunk (a sampled transition transfers and decompresses exactly its two
stacks); the small target columns in chunks of `scalar_chunk_length`.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import reverb

from scaled_ql.frames import FRAME_SHAPE
from scaled_ql.replay.server import (ONLINE, TRANSITION_FIELDS, ReplayError, check_table,
                                     port_open, transition_signature)

_POLL_MS = 500


def n_step_return(clipped_rewards, k: int, gamma: float) -> float:
  """sum_{i<k} gamma^i r_i in float64, in the order `sampler.n_step_targets` adds them."""
  total = 0.0
  for i in range(k):
    total += gamma**i * clipped_rewards[i]
  return total


def _check_signature(address: str, table: str, info) -> int:
  """The stack size of `table`'s transition signature (ReplayError if it is another one)."""
  signature = info.signature
  if not isinstance(signature, Mapping) or set(signature) != set(TRANSITION_FIELDS):
    raise ReplayError(f"table {table!r} at {address} does not hold transitions: its signature "
                      f"is {signature}, expected the fields {list(TRANSITION_FIELDS)}.")
  stack_size = int(signature["observation"].shape[-1])
  expected = transition_signature(stack_size)
  for name, spec in expected.items():
    got = signature[name]
    if tuple(got.shape) != tuple(spec.shape) or got.dtype != spec.dtype:
      raise ReplayError(f"table {table!r} at {address}: field {name!r} is {got}, expected "
                        f"{spec}.")
  return stack_size


class _Env:
  """One env's episode in progress."""

  def __init__(self):
    self.writer: Optional[reverb.TrajectoryWriter] = None
    self.started = False
    self.position = 0  # History position (= episode step) of the newest stack.
    self.pending: collections.deque = collections.deque()  # (action, clipped reward, game_id)
    self.last: Optional[np.ndarray] = None


class TransitionWriter:
  """Writes n-step transitions of `num_envs` interleaved env streams into a Reverb table.

  Call `add(env_index, ...)` once per env step. A transition at time t bootstraps from the
  stack at t + k, k = min(n_step, steps left in the episode); its reward is
  sum_{i<k} gamma^i clip(r_{t+i}, -1, 1); its discount gamma^k, or 0 when the episode
  terminated at t + k (a truncation bootstraps with gamma^k) - exactly
  `scaled_ql.data.sampler.n_step_targets`. A transition is written as soon as it is complete;
  the last ones of an episode when it ends.

  Back-pressure: at most `max_in_flight_items` unconfirmed items per env (then `add` waits,
  e.g. while a samples-per-insert rate limiter holds inserts), and an episode end waits until
  the server confirmed all of that env's items. Waits check every 0.5 s that the server is
  still there (ReplayError if not); `timeout_s` (None: no limit) bounds any one wait.

  Args:
    address: "host:port" of the Reverb server.
    table: the table to write ("online" or "offline").
    n_step, gamma: the n-step return.
    num_envs: env streams (env_index in 0..num_envs-1), one Reverb writer each.
    timeout_s: the longest any insert may wait for the server (None: while it lives).
    check_continuity: check that each step's observation_stack is the previous step's
      next_observation_stack (a missed episode end would otherwise corrupt transitions).
    scalar_chunk_length: chunk length of the small target columns.
    max_in_flight_items: unconfirmed items allowed per env (default 2 x chunk + 2 x n_step).
  """

  def __init__(self, address: str, table: str = ONLINE, *, n_step: int, gamma: float,
               num_envs: int, timeout_s: Optional[float] = None,
               check_continuity: bool = True, scalar_chunk_length: int = 8,
               max_in_flight_items: Optional[int] = None):
    if isinstance(n_step, bool) or int(n_step) != n_step or n_step < 1:
      raise ValueError(f"n_step must be a positive integer, got {n_step!r}.")
    if not 0.0 <= gamma <= 1.0:
      raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    if isinstance(num_envs, bool) or int(num_envs) != num_envs or num_envs < 1:
      raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}.")
    if scalar_chunk_length < 1:
      raise ValueError(f"scalar_chunk_length must be >= 1, got {scalar_chunk_length}.")
    self.address, self.table = address, table
    self.n_step, self.gamma, self.num_envs = int(n_step), float(gamma), int(num_envs)
    self.timeout_s, self.check_continuity = timeout_s, check_continuity
    self.stack_size = _check_signature(address, table, check_table(address, table))
    self._stack_shape = (*FRAME_SHAPE, self.stack_size)
    self._scalar_chunk = int(scalar_chunk_length)
    # An item references stacks up to 2n - 1 steps back (the last of an episode's flush).
    self._keep_alive = max(2 * self.n_step + 2, self._scalar_chunk)
    self._max_in_flight = int(max_in_flight_items or 2 * self._scalar_chunk + 2 * self.n_step)
    self._discounts = [float(np.power(np.float64(self.gamma), k))
                       for k in range(self.n_step + 1)]
    self._client = reverb.Client(address)
    self._envs = [_Env() for _ in range(self.num_envs)]
    self.num_steps = 0  # add() calls.
    self.num_transitions = 0  # items created.
    self._closed = False

  # -- Writing. -----------------------------------------------------------------------------
  def _writer(self, env: _Env) -> reverb.TrajectoryWriter:
    if env.writer is None:
      # Items are checked here (stacks) or built with the signature's dtypes (scalars); Reverb's
      # own validation would fetch the signature with no deadline (a hang on a dead server).
      writer = self._client.trajectory_writer(num_keep_alive_refs=self._keep_alive,
                                              validate_items=False)
      writer.configure(("observation",), num_keep_alive_refs=self._keep_alive,
                       max_chunk_length=1)
      for name in ("action", "reward", "discount", "game_id"):
        writer.configure((name,), num_keep_alive_refs=self._keep_alive,
                         max_chunk_length=self._scalar_chunk)
      env.writer = writer
    return env.writer

  def _check_stack(self, name: str, stack: Any, env_index: int) -> np.ndarray:
    if not isinstance(stack, np.ndarray) or stack.dtype != np.uint8 or \
        stack.shape != self._stack_shape:
      desc = f"{stack.dtype} {stack.shape}" if isinstance(stack, np.ndarray) else \
          type(stack).__name__
      raise ValueError(f"env {env_index}: {name} must be a uint8 array {self._stack_shape} "
                       f"(one env's stacked frames), got {desc}.")
    return stack

  def add(self, env_index: int, observation_stack: np.ndarray, action: int, reward: float,
          terminal: bool, truncated: bool, next_observation_stack: np.ndarray,
          game_id: int) -> None:
    """One env step: `action` in `observation_stack` gave `reward` and `next_observation_stack`.

    `terminal`: the game ended (no bootstrap); `truncated`: the episode was cut (time limit),
    bootstrap from next_observation_stack. The next add() of this env starts a new episode
    after either.
    """
    if self._closed:
      raise RuntimeError("TransitionWriter.add() after close().")
    if not 0 <= env_index < self.num_envs:
      raise ValueError(f"env_index must be in 0..{self.num_envs - 1}, got {env_index}.")
    env = self._envs[env_index]
    observation_stack = self._check_stack("observation_stack", observation_stack, env_index)
    next_observation_stack = self._check_stack("next_observation_stack",
                                               next_observation_stack, env_index)
    reward = float(reward)
    if not np.isfinite(reward):
      raise ValueError(f"env {env_index}: reward must be finite, got {reward}.")
    writer = self._writer(env)
    if not env.started:
      writer.append(dict(observation=observation_stack))
      env.started, env.position = True, 0
    elif self.check_continuity and not np.array_equal(observation_stack, env.last):
      raise ValueError(f"env {env_index}: observation_stack is not the next_observation_stack "
                       f"of this env's previous add() although that step did not end the "
                       f"episode (terminal=truncated=False); was an episode end missed?")
    env.pending.append((int(action), min(max(reward, -1.0), 1.0), int(game_id)))
    position = env.position + 1
    ended = bool(terminal) or bool(truncated)
    step = dict(observation=next_observation_stack)
    full = len(env.pending) == self.n_step
    if full:  # The oldest pending transition now has its n steps.
      step.update(self._targets(env, self.n_step, bool(terminal)))
    writer.append(step)
    if full:
      self._create_item(writer, position - self.n_step, position)
    if ended:
      self._flush_episode(env, position, bool(terminal))
    else:
      env.position = position
      env.last = next_observation_stack.copy()
    self.num_steps += 1
    self._wait(lambda ms: writer.flush(self._max_in_flight, timeout_ms=ms), "an insert")

  def _targets(self, env: _Env, k: int, terminal: bool) -> dict:
    """The targets of env's oldest pending transition with k steps (popped)."""
    action, _, game_id = env.pending[0]
    rewards = [r for _, r, _ in env.pending]
    ret = n_step_return(rewards, k, self.gamma)
    env.pending.popleft()
    return dict(action=np.int32(action), reward=np.float32(ret),
                discount=np.float32(0.0 if terminal else self._discounts[k]),
                game_id=np.int32(game_id))

  def _create_item(self, writer: reverb.TrajectoryWriter, start: int, end: int) -> None:
    """An item: the stacks at history positions start and end, the newest targets."""
    history = writer.history
    trajectory = dict(observation=history["observation"][start],
                      next_observation=history["observation"][end],
                      **{k: history[k][-1] for k in ("action", "reward", "discount", "game_id")})
    writer.create_item(self.table, 1.0, trajectory)
    self.num_transitions += 1

  def _flush_episode(self, env: _Env, position: int, terminal: bool) -> None:
    """Writes env's remaining transitions (bootstrapping from `position`) and ends its episode."""
    writer = env.writer
    while env.pending:
      k = len(env.pending)
      writer.append(self._targets(env, k, terminal))
      self._create_item(writer, position - k, position)
    self._wait(lambda ms: writer.flush(0, timeout_ms=ms), "the end of an episode")
    try:
      writer.end_episode(clear_buffers=True, timeout_ms=10_000)
    except reverb.errors.DeadlineExceededError:
      self._raise_if_gone("the end of an episode")
      raise ReplayError(f"ending an episode at the Reverb server at {self.address} took over "
                        f"10s although nothing was pending.") from None
    env.started, env.position, env.last = False, 0, None

  # -- Waiting. -----------------------------------------------------------------------------
  def _raise_if_gone(self, what: str) -> None:
    if not port_open(self.address, 2.0):
      raise ReplayError(f"no Reverb server at {self.address} (table {self.table!r}): it went "
                        f"away while waiting for {what}.")

  def _wait(self, call, what: str) -> None:
    """Runs call(timeout_ms) until it returns, checking the server between tries."""
    start = time.monotonic()
    while True:
      try:
        call(_POLL_MS)
        return
      except reverb.errors.DeadlineExceededError:
        self._raise_if_gone(what)
        waited = time.monotonic() - start
        if self.timeout_s is not None and waited > self.timeout_s:
          raise ReplayError(f"{what} into table {self.table!r} at {self.address} waited "
                            f"{waited:.1f}s (timeout_s={self.timeout_s:g}): the server is up "
                            f"but does not accept the items (a samples-per-insert rate "
                            f"limiter waiting for the learner to sample?).") from None

  # -- Closing. -----------------------------------------------------------------------------
  def flush(self) -> None:
    """Sends every complete transition and waits for the server to confirm them."""
    for env in self._envs:
      if env.writer is not None:
        writer = env.writer
        self._wait(lambda ms: writer.flush(0, timeout_ms=ms), "a flush")

  def close(self, finish_episodes: bool = True) -> None:
    """Flushes and closes the writers. Idempotent.

    finish_episodes: write the last transitions of episodes in progress as truncated there
    (bootstrapping from their newest stack with gamma^k); False drops them.
    """
    if self._closed:
      return
    self._closed = True
    try:
      for env in self._envs:
        if env.writer is not None and env.started and finish_episodes:
          self._flush_episode(env, env.position, terminal=False)
      self.flush()
    finally:
      for env in self._envs:
        if env.writer is not None:
          env.writer.close()
          env.writer = None

  def __enter__(self) -> "TransitionWriter":
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:  # Do not block on a broken server while an error propagates.
      self._closed = True
      for env in self._envs:
        if env.writer is not None:
          env.writer = None


def episode_stacks(frames: np.ndarray, stack_size: int):
  """Yields the [84, 84, stack_size] stacks of an episode's [T, 84, 84] frames, in order, with
  zero frames before the first (as `scaled_ql.envs.FrameStacker` stacks them)."""
  stack = np.zeros((*frames.shape[1:], stack_size), np.uint8)
  for frame in frames:
    stack[..., :-1] = stack[..., 1:]
    stack[..., -1] = frame
    yield stack.copy()


def insert_episodes(address: str, table: str, episodes: Iterable[Mapping[str, Any]],
                    game_id: int, *, n_step: int, gamma: float, stack_size: int = 4,
                    timeout_s: Optional[float] = None) -> int:
  """Writes RLDS episodes (`scaled_ql.data.read_episodes` dicts) into `table` as transitions.

  The same transitions as `scaled_ql.data.sampler` samples from those episodes: stacks with
  zero frames before the first frame, n-step clipped returns, discount 0 after a terminal last
  step, bootstrap with gamma^k at a cut (non-terminal) end. Returns the transitions written.
  """
  count = 0
  with TransitionWriter(address, table, n_step=n_step, gamma=gamma, num_envs=1,
                        timeout_s=timeout_s) as writer:
    if writer.stack_size != stack_size:
      raise ReplayError(f"table {table!r} at {address} holds {writer.stack_size}-frame stacks, "
                        f"but stack_size={stack_size}.")
    for e, episode in enumerate(episodes):
      frames = episode["observation"]
      if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or \
          frames.shape[1:] != FRAME_SHAPE or frames.ndim != 3:
        raise ValueError(f"episode {e}: 'observation' must be uint8 [T, 84, 84] frames, got "
                         f"{getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', '')}.")
      length = frames.shape[0]
      action, reward = np.asarray(episode["action"]), np.asarray(episode["reward"])
      if length < 2 or action.shape != (length,) or reward.shape != (length,):
        raise ValueError(f"episode {e}: needs T >= 2 frames and [T] actions and rewards, got "
                         f"{length} frames, actions {action.shape}, rewards {reward.shape}.")
      terminal = bool(np.asarray(episode["is_terminal"])[-1])
      stacks = episode_stacks(frames, stack_size)
      current = next(stacks)
      for t in range(length - 1):
        following = next(stacks)
        last = t == length - 2
        writer.add(0, current, int(action[t]), float(reward[t]), terminal and last,
                   (not terminal) and last, following, game_id)
        current = following
      count += length - 1
  return count
