"""The in-process replay of online fine-tuning (`config.online.replay = "local"`): no Reverb.

`LocalReplay` holds what Reverb's tables hold, in this process, as `data.FramePool`s (the
offline sampler's and the logged agent's pool), so a transition's n-step target is computed by
the same code as offline:
- "online": one FramePool per emulator, each fed one env step at a time (`begin`/`append`), a
  transition sampleable as soon as its target is final (what Reverb's writer inserts then);
  together they hold `max_size` frames (FIFO per emulator; the emulators step together, so
  this is the FIFO of the whole replay up to one step). Frames, not transitions: a pool holds
  one frame more per episode than transitions.
- "offline" (optional): the seeded offline episodes (`add_offline`). With `keep_offline` it is
  never evicted and gives a fixed share of every batch (`offline_rows`); otherwise its
  episodes count towards `max_size` and are the first evicted as online data arrives, and
  they are sampled together with the online transitions, uniformly.

`sample(rng)` draws a `data.Batch` uniformly (with replacement) from them. `save(path)` /
`load(path)` write and read the whole contents (one .npz, atomically), with every checkpoint
of the learner: a resumed run has the transitions it had at its checkpoint. `inserted`
counts the online transitions ever made sampleable (the samples-per-insert ratio's
denominator), saved with the contents.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from scaled_ql.data.batch import Batch
from scaled_ql.data.frame_pool import Episode, FramePool
from scaled_ql.frames import FRAME_SHAPE

FORMAT = "scaled_ql.local_replay.v1"


class LocalReplay:
  """See the module docstring. game: a Game or name; num_envs: emulators feeding it."""

  def __init__(self, game, num_envs: int, max_size: int, *, batch_size: int, n_step: int,
               gamma: float, offline_size: int = 0, keep_offline: bool = True,
               offline_rows: int = 0):
    if num_envs < 1 or max_size < 2 * num_envs:
      raise ValueError(f"a local replay needs >= 1 emulator and >= 2 frames per emulator, got "
                       f"{num_envs} emulators and max_size {max_size}.")
    self.max_size, self.batch_size = int(max_size), int(batch_size)
    self.keep_offline = bool(keep_offline)
    self.online = [FramePool(game, self.max_size // num_envs, n_step=n_step, gamma=gamma)
                   for _ in range(num_envs)]
    self.game = self.online[0].game
    self.offline: Optional[FramePool] = None
    if offline_size:
      # Offline capacity in frames: the seeded transitions plus one frame per episode, which
      # `add_offline` checks; a bound the seeding cannot exceed (episodes of >= 2 frames).
      self.offline = FramePool(game, 2 * int(offline_size), n_step=n_step, gamma=gamma)
    self.offline_rows = int(offline_rows) if (self.offline is not None and keep_offline) else 0
    self.inserted = 0

  # -- Contents. ----------------------------------------------------------------------------
  @property
  def online_transitions(self) -> int:
    return sum(p.num_transitions for p in self.online)

  @property
  def offline_transitions(self) -> int:
    return self.offline.num_transitions if self.offline is not None else 0

  def sizes(self) -> dict:
    """{"online": transitions, "offline": transitions} (as Reverb's table sizes)."""
    out = {"online": self.online_transitions}
    if self.offline is not None:
      out["offline"] = self.offline_transitions
    return out

  def ready(self, min_size: int) -> bool:
    """Whether a batch can be drawn: `min_size` online transitions (the online table's
    MinSize), and offline ones where the batch has offline rows."""
    return (self.online_transitions >= min_size
            and (not self.offline_rows or self.offline_transitions > 0))

  # -- Ingest. ------------------------------------------------------------------------------
  def add_offline(self, episode: Episode) -> int:
    """One seeded offline episode; returns its transitions."""
    self.offline.add(episode)
    self._evict_offline()
    return len(episode["action"]) - 1

  def begin(self, env: int, frame: np.ndarray) -> None:
    self.online[env].begin(frame)
    self._evict_offline()

  def append(self, env: int, action: int, reward: float, frame: np.ndarray, *, done: bool,
             terminal: bool) -> None:
    """Emulator `env`'s next step (see `FramePool.append`)."""
    self.inserted += self.online[env].append(action, reward, frame, done=done,
                                             terminal=terminal)
    self._evict_offline()

  def _evict_offline(self) -> None:
    """Without keep_offline the seeded episodes share max_size and go first."""
    if self.keep_offline or self.offline is None:
      return
    while self.offline.num_episodes and (
        self.offline.num_frames + sum(p.num_frames for p in self.online) > self.max_size):
      self.offline.evict_oldest()

  # -- Sampling. ----------------------------------------------------------------------------
  def sample(self, rng: np.random.Generator) -> Batch:
    """A batch: offline_rows from the kept offline pool, the rest uniformly from the others."""
    b = self.batch_size
    shape = (b, *FRAME_SHAPE, self.online[0].stack_size)
    obs, next_obs = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    action, reward = np.empty(b, np.int32), np.empty(b, np.float32)
    discount = np.empty(b, np.float32)
    shared = list(self.online)
    if self.offline is not None and not self.keep_offline:
      shared.append(self.offline)
    groups = [(self.offline, self.offline_rows)] if self.offline_rows else []
    counts = np.array([p.num_transitions for p in shared], np.int64)
    u = np.sort(rng.integers(0, counts.sum(), size=b - self.offline_rows))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(bounds, u, side="right") - 1
    for i, pool in enumerate(shared):
      mine = u[which == i] - bounds[i]
      if len(mine):
        groups.append((pool, mine))
    lo = 0
    for pool, rows in groups:
      if isinstance(rows, int):
        rows = rng.integers(0, pool.num_transitions, size=rows)
      hi = lo + len(rows)
      pool.gather(rows, obs[lo:hi], next_obs[lo:hi], action[lo:hi], reward[lo:hi],
                  discount[lo:hi])
      lo = hi
    return Batch(observation=obs, action=action, reward=reward, discount=discount,
                 next_observation=next_obs, game_id=np.zeros(b, np.int32))

  # -- Saving and restoring. ----------------------------------------------------------------
  def save(self, path: str) -> None:
    """Writes the contents to `path` (.npz), atomically."""
    arrays = {"format": np.array(FORMAT), "inserted": np.int64(self.inserted),
              "num_envs": np.int64(len(self.online))}
    pools = [("online_%d" % i, p) for i, p in enumerate(self.online)]
    if self.offline is not None:
      pools.append(("offline", self.offline))
    for name, pool in pools:
      for key, value in pool.state_arrays().items():
        arrays[f"{name}/{key}"] = value
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)

  def load(self, path: str) -> None:
    """Replaces the contents by those saved at `path` (by a replay of the same settings)."""
    with np.load(path) as z:
      if "format" not in z.files or str(z["format"]) != FORMAT:
        raise ValueError(f"{path} is not a local replay checkpoint ({FORMAT}).")
      if int(z["num_envs"]) != len(self.online):
        raise ValueError(f"{path} holds the replay of {int(z['num_envs'])} emulators, this run "
                         f"has {len(self.online)}: keep online.num_actors x envs_per_actor.")
      pools = [("online_%d" % i, p) for i, p in enumerate(self.online)]
      if self.offline is not None:
        pools.append(("offline", self.offline))
      for name, pool in pools:
        pool.load_state_arrays({k.split("/", 1)[1]: z[k] for k in z.files
                                if k.startswith(name + "/")})
      self.inserted = int(z["inserted"])
