"""The offline data of a training run: this host's share of every game's selection, read as
the uniform stream (every run and selected checkpoint in proportion, `data.UniformStream`),
sampled into game-blocked batches (`data.MultiGameSampler`) a few steps ahead (Prefetcher)."""
from __future__ import annotations

from typing import Optional

import jax

from scaled_ql import data


def checkpoint_ids(config) -> Optional[list[int]]:
  r = config.data.checkpoint_range
  return list(range(r[0], r[1] + 1)) if r else None


def make_sources(config, host: int, hosts: int) -> dict:
  """{game: UniformStream} of this host's share (checked before anything is read)."""
  d = config.data
  return data.uniform_sources(d.data_dir, config.games, runs=list(d.runs) or None,
                              checkpoints=checkpoint_ids(config), shard_index=host,
                              num_shards=hosts, seed=config.seed)


class _Batches:
  """The sampler's batches; the prefetch thread starts at the first batch, so that a restored
  state and the pools' first fill happen before it, in the caller's thread."""

  def __init__(self, sampler: data.MultiGameSampler, depth: int):
    self.sampler, self._depth, self._prefetcher = sampler, depth, None

  def _started(self) -> data.Prefetcher:
    if self._prefetcher is None:
      self._prefetcher = data.Prefetcher(self.sampler, depth=self._depth)
    return self._prefetcher

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._started())

  def state_dict(self) -> dict:
    return (self._prefetcher.state_dict() if self._prefetcher is not None
            else self.sampler.state_dict())

  def load_state_dict(self, state) -> None:
    if self._prefetcher is not None:
      self._prefetcher.load_state_dict(state)
    else:
      self.sampler.load_state_dict(state)

  def close(self) -> None:
    if self._prefetcher is not None:
      self._prefetcher.close()


class OfflineData:
  """`batches` of a training run from config.data (the default hooks of `train`)."""

  def __init__(self):
    self._batches: Optional[_Batches] = None
    self._num_steps = 0

  def check(self, config, names) -> None:
    """The selection of every game exists and is not empty (fails at start-up)."""
    if not config.data.data_dir:
      raise ValueError("config.data.data_dir is empty: point it at a dataset directory "
                       "(`python -m launch.make_dataset ...` makes one).")
    for game in names:
      data.find_sources(config.data.data_dir, game, runs=list(config.data.runs) or None)

  def batches(self, config, names, host: int, hosts: int, counts):
    sampler = data.MultiGameSampler(
        make_sources(config, host, hosts), names, config.batch_size // hosts,
        config.data.pool_frames_per_game, n_step=config.loss.n_step, gamma=config.loss.gamma,
        game_weights=counts, refresh_every=config.data.refresh_every,
        refresh_episodes=config.data.refresh_episodes,
        samples_per_transition=config.data.samples_per_transition or None,
        checkpoint_range=tuple(config.data.checkpoint_range) or None, seed=config.seed,
        host_index=host)
    self._batches, self._num_steps = _Batches(sampler, config.data.prefetch), config.num_steps
    return self._batches, sampler.block_size

  def on_start(self, step: int, state) -> None:
    """Fills the pools (or has restored them) and says how long one pass over the data is."""
    steps = self._batches.sampler.steps_per_pass()
    if jax.process_index() != 0:
      return
    if steps is None:
      print("data: steps per pass over the selected data unknown (the data never refreshes, or "
            "a source does not say its length)", flush=True)
    elif steps == 0:
      print("data: the whole selection fits in the pools (every step samples all of it)",
            flush=True)
    else:
      print(f"data: one pass over the selected data takes {steps:,} steps; this run's "
            f"{self._num_steps:,} steps read it {self._num_steps / steps:.2f} times", flush=True)

  def on_step(self, step: int, state) -> None:
    pass
