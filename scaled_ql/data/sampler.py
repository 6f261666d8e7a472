"""Game-blocked transition batches from bounded in-memory pools of single Atari frames.

Pools: `scaled_ql.data.frame_pool.FramePool`, one game's bounded FIFO ring of single frames
with the n-step targets computed at ingest (that module says how).

Refresh: FIFO from a stream. Each game's episodes come from an `EpisodeSource`, a callable
`source(start)` that yields the game's episodes from stream position `start` on, in the same
order every call. For a dataset larger than RAM that is a `scaled_ql.data.UniformStream` over
the host's share of the files: its order makes every stretch of the stream, and so the pool at
any time, an about-uniform sample of the whole selection (all runs, all selected checkpoints),
where the stored (time) order of `read_episodes` would make the pool a time window. A
UniformStream cycles by itself (each epoch another order) and numbers its episodes
("stream_position"); the sampler keeps those positions.
The sampler first fills each pool until an ingest evicts (or the source ends: the whole
dataset is then resident and never re-read); afterwards, every `refresh_every` sampling steps,
it ingests `refresh_episodes` more episodes per game, evicting the oldest episodes (whole
ones) until the new one fits. FIFO rather than a reservoir because (a) the live episodes are
then always the last ones accepted from the stream, so a pool is described by two stream
positions and can be rebuilt from them (below), where a reservoir's random subset would have
to be listed or stored; and (b) every episode read stays in the pool equally long, where a
reservoir keeps the n-th episode read with probability ~capacity / n, so late in a long run
nearly everything read is discarded. The replay ratio is the user's choice, best given as
`samples_per_transition` (R): each refresh ingests the transitions sampled since the last one
divided by R, so each stored transition is sampled about R times before it is evicted, and a
steady fraction of the pool is replaced (otherwise a refresh brings refresh_episodes episodes
per game, whatever their length). `steps_per_pass()` says how many steps one pass over the
selection takes. When a source runs out during refreshes it restarts from position
0 (`cycle=True`, the next epoch) or refreshing stops (`cycle=False`).

Quality selection (e.g. the paper's low-quality split, checkpoints 0-9 of 50) belongs in the
source (pass the checkpoint filter to the reader so unwanted files are never read); the pool
also drops, on ingest, episodes whose `checkpoint_id` lies outside `checkpoint_range`.

Determinism and state. The batch of step s is drawn with a NumPy generator seeded by
(seed, host_index, s) and depends on nothing else but the pools' contents, which are in turn
fixed by the refresh schedule (a refresh before every step s > 0 with s % refresh_every == 0).
Transitions are addressed in *logical* order (the live episodes oldest first, then step), so a
batch never depends on where in the ring an episode happens to sit. The state
(`state_dict()`, small and JSON-serializable) is the next step and, per game, the stream
position of the oldest live episode and of the next episode to read, the epoch length once
known, and checks (live episodes and frames). `load_state_dict()` rebuilds every pool by
re-reading that window of the (deterministic) stream: one pool's worth of reading, the cost of
an initial fill, and no frames in the checkpoint. A source should therefore start at `start`
cheaply (skip files); a plain sequence of episodes works as a source too.

Speed. A batch is one `searchsorted` per game to map uniform draws to (episode, step), one
fancy-index gather per stack slot, and lookups of the precomputed n-step arrays: ~29k
transitions/s on one core at batch 512 (`python -m benchmarks.sampler`). Most of
that time is NumPy interleaving single frames into [B, 84, 84, 4] (strided byte copies).
`scaled_ql.data.prefetch.Prefetcher` runs a sampler in a background thread a few batches ahead,
so sampling overlaps the learner's device step; it gives the same batches and a state that
resumes exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from scaled_ql.data.batch import Batch, split_batch
from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE
from scaled_ql.data.frame_pool import (Episode, FramePool, n_step_targets,  # noqa: F401
                                       validate_episode)
from scaled_ql.games import get_game

STATE_VERSION = 1

EpisodeSource = Callable[[int], Iterable[Episode]]


def as_source(source: Union[EpisodeSource, Sequence[Episode]]) -> EpisodeSource:
  """An `EpisodeSource` from a callable `source(start)` or a sequence of episodes."""
  if callable(source):
    return source
  if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
    return lambda start: (source[i] for i in range(start, len(source)))
  raise ValueError(f"an episode source is a callable source(start) -> episodes, or a sequence "
                   f"of episodes; got {type(source).__name__}. (A one-shot iterator cannot be "
                   f"re-read to restore or cycle: wrap its factory in a callable.)")


def steps_for_one_pass(selection_transitions: float, pool_transitions: float,
                       samples_per_step: float, *,
                       samples_per_transition: Optional[float] = None,
                       episodes_per_step: float = 0.0,
                       mean_episode_transitions: float = 0.0) -> int:
  """Sampling steps for one game's pool to read its whole selection once (initial fill
  included): the transitions left after the fill over those ingested per step, which are
  samples_per_step / samples_per_transition (each stored transition is sampled about
  samples_per_transition times before it is evicted), or else episodes_per_step x the mean
  episode's transitions (refresh_episodes / refresh_every).
  """
  if samples_per_transition:
    per_step = samples_per_step / samples_per_transition
  else:
    per_step = episodes_per_step * mean_episode_transitions
  left = max(selection_transitions - pool_transitions, 0.0)
  if not left:
    return 0
  if per_step <= 0:
    raise ValueError("the refresh setting ingests nothing: the pool never turns over.")
  return int(math.ceil(left / per_step))


class _Stream:
  """One game's position in its episode source (raw positions count filtered episodes too)."""

  def __init__(self, source: EpisodeSource):
    self.source = source
    self.iterator: Optional[Iterator[Episode]] = None
    self.consumed = 0  # raw stream positions read so far.
    self.epoch_length: Optional[int] = None  # episodes in one pass, once a pass has ended.
    self.resident = False  # the whole source fit in the pool during the fill.
    self.ended = False  # cycle=False and the source ran out: no more refreshes.
    self.credit = 0.0  # transitions still to ingest (refresh by samples_per_transition).
    # A positioned source (`UniformStream`) numbers its episodes itself ("stream_position",
    # across epochs) and says how many one epoch holds.
    self.pass_length: Optional[int] = getattr(source, "epoch_length", None)

  def open(self) -> None:
    offset = self.consumed % self.epoch_length if self.epoch_length else self.consumed
    self.iterator = iter(self.source(offset))


class MultiGameSampler:
  """Game-blocked batches of n-step transitions from one `FramePool` per game.

  Args:
    sources: {game: EpisodeSource or sequence of episodes} (this host's share), one per game.
    games: the game list (config.games); game_id = index in it, blocks in its order.
    batch_size: transitions per batch on this host.
    pool_frames: each game's pool capacity in frames.
    n_step, gamma: the n-step return (config.loss.n_step, config.loss.gamma).
    game_weights: relative samples per game (default equal); batch_size x weight / sum must be
      a whole number for every game, so per-game counts are the same in every batch.
    refresh_every: sampling steps between refreshes (0: never refresh after the fill).
    refresh_episodes: episodes ingested per game at each refresh (where samples_per_transition
      is None).
    samples_per_transition: R, the refresh in terms a user can reason about: each refresh
      ingests, per game, the transitions sampled from its pool since the last one divided by R
      (whole episodes; the remainder carries over), so each stored transition is sampled about
      R times before it is evicted, the pool turns over every R x pool transitions / samples
      per step steps, and one pass over the selection takes `steps_per_pass()` steps.
    checkpoint_range: (first, last) checkpoint ids kept on ingest, both included, e.g. (0, 9)
      for the paper's low-quality data; None keeps all.
    cycle: restart a source from position 0 when it runs out during refreshes.
    seed, host_index: the batch of step s is a function of (seed, host_index, s) and the pools.
    stack_size: frames per observation.

  Use `next(sampler)` (refreshes when due, then samples the current step) or `sample(step)`
  (samples a step from the pools as they are). Batches are `scaled_ql.data.Batch` of NumPy
  arrays; `counts[g]` consecutive rows belong to game g; `block_size` is the largest block of
  one game that tiles the layout (the learner's `block_size`).
  """

  def __init__(self, sources: Mapping[str, Union[EpisodeSource, Sequence[Episode]]],
               games: Sequence[str], batch_size: int, pool_frames: int, *, n_step: int = 3,
               gamma: float = 0.99, game_weights: Optional[Sequence[float]] = None,
               refresh_every: int = 0, refresh_episodes: int = 1,
               samples_per_transition: Optional[float] = None,
               checkpoint_range: Optional[tuple[int, int]] = None, cycle: bool = True,
               seed: int = 0, host_index: int = 0, stack_size: int = STACK_SIZE):
    self.games = tuple(get_game(g) for g in games)
    names = [g.name for g in self.games]
    if not names:
      raise ValueError("the game list is empty.")
    if len(set(names)) != len(names):
      raise ValueError(f"a game is listed twice in games {names}.")
    by_name = {}
    for key, source in dict(sources).items():
      by_name[get_game(key).name] = source
    missing = [g for g in names if g not in by_name]
    extra = [g for g in by_name if g not in names]
    if missing or extra:
      raise ValueError(f"sources must name exactly the games {names}: missing {missing}, "
                       f"not in games {extra}.")
    for name, value in (("refresh_every", refresh_every), ("refresh_episodes", refresh_episodes),
                        ("seed", seed), ("host_index", host_index)):
      if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    self.counts = split_batch(batch_size, game_weights or [1] * len(names), names)
    self.batch_size = int(batch_size)
    self.block_size = math.gcd(*self.counts)
    self.pools = tuple(FramePool(g, pool_frames, n_step=n_step, gamma=gamma,
                                 stack_size=stack_size, checkpoint_range=checkpoint_range)
                       for g in self.games)
    self._streams = tuple(_Stream(as_source(by_name[g])) for g in names)
    self.refresh_every, self.refresh_episodes = int(refresh_every), int(refresh_episodes)
    if samples_per_transition is not None and not (
        isinstance(samples_per_transition, (int, float)) and
        0 < samples_per_transition < math.inf):
      raise ValueError(f"samples_per_transition must be a positive finite number (each stored "
                       f"transition is sampled about that many times before it is evicted), "
                       f"got {samples_per_transition!r}.")
    if samples_per_transition and not self.refresh_every:
      raise ValueError(f"samples_per_transition={samples_per_transition} needs refresh_every > "
                       f"0: with refresh_every=0 the pool is never refreshed.")
    self.samples_per_transition = (float(samples_per_transition) if samples_per_transition
                                   else None)
    self.cycle, self.seed, self.host_index = bool(cycle), int(seed), int(host_index)
    self._game_id = np.repeat(np.arange(len(names), dtype=np.int32), self.counts)
    self._bounds = np.concatenate([[0], np.cumsum(self.counts)])
    self._step = 0
    self._filled = False

  @property
  def step(self) -> int:
    """The step of the next batch `next()` returns."""
    return self._step

  def _fingerprint(self) -> dict:
    pool = self.pools[0]
    return dict(games=[g.name for g in self.games], counts=list(self.counts),
                pool_frames=pool.capacity, n_step=pool.n_step, gamma=pool.gamma,
                stack_size=pool.stack_size,
                checkpoint_range=list(pool.checkpoint_range) if pool.checkpoint_range else None,
                refresh_every=self.refresh_every, refresh_episodes=self.refresh_episodes,
                samples_per_transition=self.samples_per_transition,
                cycle=self.cycle, seed=self.seed, host_index=self.host_index)

  # -- Reading the streams. -----------------------------------------------------------------
  def _read(self, g: int, during_fill: bool) -> Optional[tuple[int, Episode]]:
    """The next raw (position, episode) of game g's stream; None when it has run out.

    Outside the fill, with `cycle`, a source that runs out starts its next pass from 0.
    """
    stream = self._streams[g]
    if stream.iterator is None:
      stream.open()
    episode = next(stream.iterator, None)
    if episode is not None and isinstance(episode, Mapping) and "stream_position" in episode:
      position = int(episode["stream_position"])
      stream.consumed = position + 1
      return position, episode
    if episode is None and stream.pass_length is not None:
      return None  # A positioned source that ends is not restarted (it cycles by itself).
    if episode is None and not during_fill and self.cycle and stream.consumed:
      if stream.epoch_length is None:
        stream.epoch_length = stream.consumed
      elif stream.consumed % stream.epoch_length:
        raise ValueError(f"game {self.games[g].name!r}: the episode source yielded "
                         f"{stream.epoch_length} episodes in its first pass but "
                         f"{stream.consumed % stream.epoch_length} in a later one; a source "
                         f"must yield the same stream on every call.")
      stream.iterator = iter(stream.source(0))
      episode = next(stream.iterator, None)
    if episode is None:
      return None
    stream.consumed += 1
    return stream.consumed - 1, episode

  def _fill(self) -> None:
    """Fills every pool until an ingest evicts or its source runs out (see module docstring)."""
    for g, (pool, stream) in enumerate(zip(self.pools, self._streams)):
      while True:
        item = self._read(g, during_fill=True)
        if item is None or (stream.pass_length is not None and item[0] >= stream.pass_length):
          stream.resident = True  # The whole selection is in the pool (the item is a repeat).
          if item is not None:
            stream.consumed = item[0]  # Not taken: a restore re-reads up to here.
          break
        before = pool.num_episodes
        if pool.add(item[1], item[0]) and pool.num_episodes <= before:
          break  # It evicted: the pool is full.
        if pool.num_frames == pool.capacity:
          break
      if pool.num_transitions == 0:
        kept = f" with checkpoint_id in {pool.checkpoint_range}" if pool.checkpoint_range else ""
        raise ValueError(f"game {pool.game.name!r}: its episode source yielded no episodes"
                         f"{kept} ({stream.consumed} read); every game needs data.")
      if not stream.resident and not (self.refresh_every and (
          self.samples_per_transition or self.refresh_episodes)):
        raise ValueError(
            f"game {pool.game.name!r}: its selection does not fit in the pool of "
            f"{pool.capacity:,} frames, and refresh_every={self.refresh_every} with "
            f"refresh_episodes={self.refresh_episodes} never replaces any of it: training would "
            f"see only the first {pool.num_episodes} episodes read. Set refresh_every > 0 "
            f"(and samples_per_transition), or a pool that holds the whole selection.")
    self._filled = True

  def _refresh(self) -> None:
    for g, (pool, stream) in enumerate(zip(self.pools, self._streams)):
      if self.samples_per_transition:
        # Ingest what the steps since the last refresh sampled, divided by R, in transitions.
        stream.credit += self.counts[g] * self.refresh_every / self.samples_per_transition
        while stream.credit > 0 and not (stream.resident or stream.ended):
          item = self._read(g, during_fill=False)
          if item is None:
            stream.ended = True
            break
          if pool.add(item[1], item[0]):
            stream.credit -= len(item[1]["observation"]) - 1
        continue
      added = 0
      while added < self.refresh_episodes and not (stream.resident or stream.ended):
        item = self._read(g, during_fill=False)
        if item is None:
          stream.ended = True
          break
        added += pool.add(item[1], item[0])

  def steps_per_pass(self) -> Optional[int]:
    """Sampling steps (counting from step 0) until every game has read its whole selection
    (this host's share) once: 0 where it all fits in the pool; None where unknown (a source
    that does not say its epoch length, or no refresh). Fills the pools if they are not yet.

    Needs the selection's size in transitions: its episodes (from the datasets' metadata) times
    their mean length in the filled pool, an unbiased estimate where the pool is a uniform
    sample of the selection (a `UniformStream` source).
    """
    if not self._filled:
      self._fill()
    worst = 0
    for g, (pool, stream) in enumerate(zip(self.pools, self._streams)):
      if stream.resident:
        continue
      episodes = stream.pass_length or stream.epoch_length
      if episodes is None or not self.refresh_every:
        return None
      mean_transitions = pool.num_transitions / pool.num_episodes
      worst = max(worst, steps_for_one_pass(
          episodes * mean_transitions, pool.num_transitions, self.counts[g],
          samples_per_transition=self.samples_per_transition,
          episodes_per_step=self.refresh_episodes / self.refresh_every,
          mean_episode_transitions=mean_transitions))
    return worst

  # -- Batches. -----------------------------------------------------------------------------
  def sample(self, step: int) -> Batch:
    """The batch of `step` from the pools as they are (no refresh)."""
    if not self._filled:
      self._fill()
    rng = np.random.default_rng([self.seed, self.host_index, int(step)])
    b, shape = self.batch_size, (*FRAME_SHAPE, self.pools[0].stack_size)
    obs, next_obs = np.empty((b, *shape), np.uint8), np.empty((b, *shape), np.uint8)
    action, reward = np.empty(b, np.int32), np.empty(b, np.float32)
    discount = np.empty(b, np.float32)
    for pool, lo, hi in zip(self.pools, self._bounds[:-1], self._bounds[1:]):
      u = rng.integers(0, pool.num_transitions, size=hi - lo)
      pool.gather(u, obs[lo:hi], next_obs[lo:hi], action[lo:hi], reward[lo:hi],
                  discount[lo:hi])
    return Batch(observation=obs, action=action, reward=reward, discount=discount,
                 next_observation=next_obs, game_id=self._game_id.copy())

  def __iter__(self) -> "MultiGameSampler":
    return self

  def __next__(self) -> Batch:
    if not self._filled:
      self._fill()
    if self.refresh_every and self._step > 0 and self._step % self.refresh_every == 0:
      self._refresh()
    batch = self.sample(self._step)
    self._step += 1
    return batch

  next_batch = __next__

  # -- State. -------------------------------------------------------------------------------
  def state_dict(self) -> dict:
    """What a resumed run needs to continue with exactly the next batches (JSON-serializable)."""
    games = None
    if self._filled:
      games = {}
      for pool, stream in zip(self.pools, self._streams):
        oldest = pool.oldest
        games[pool.game.name] = dict(
            consumed=stream.consumed, epoch_length=stream.epoch_length,
            resident=stream.resident, ended=stream.ended, credit=stream.credit,
            first_live=oldest.position, first_live_frame=oldest.start,
            num_episodes=pool.num_episodes, num_frames=pool.num_frames)
    return dict(version=STATE_VERSION, step=self._step, config=self._fingerprint(), games=games)

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores a `state_dict()`: re-reads each game's live window of its stream."""
    if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
      raise ValueError(f"not a sampler state of version {STATE_VERSION}: "
                       f"{str(state)[:200]}")
    mine = self._fingerprint()
    diff = {k: (state["config"].get(k), v) for k, v in mine.items()
            if state["config"].get(k) != v}
    if diff:
      raise ValueError(f"the sampler state was saved with another configuration; "
                       f"(saved, now) per field: {diff}.")
    self._step = int(state["step"])
    if state["games"] is None:
      self._filled = False
      for stream in self._streams:
        stream.iterator, stream.consumed = None, 0
        stream.epoch_length, stream.resident, stream.ended = None, False, False
        stream.credit = 0.0
      for pool in self.pools:
        pool.clear()
      return
    for g, (pool, stream) in enumerate(zip(self.pools, self._streams)):
      saved = state["games"][pool.game.name]
      stream.epoch_length = saved["epoch_length"]
      stream.resident, stream.ended = bool(saved["resident"]), bool(saved["ended"])
      stream.credit = float(saved.get("credit", 0.0))
      stream.consumed = int(saved["first_live"])
      stream.iterator = None
      pool.clear(int(saved["first_live_frame"]))
      while stream.consumed < int(saved["consumed"]):
        item = self._read(g, during_fill=False)
        if item is None:
          break
        pool.add(item[1], item[0])
      got = (stream.consumed, pool.num_episodes, pool.num_frames)
      want = (int(saved["consumed"]), int(saved["num_episodes"]), int(saved["num_frames"]))
      if got != want:
        raise ValueError(f"game {pool.game.name!r}: re-reading the episode source from position "
                         f"{saved['first_live']} gave (position, episodes, frames) {got}, but "
                         f"the saved state has {want}: the source is not the one the state was "
                         f"saved with.")
    self._filled = True
