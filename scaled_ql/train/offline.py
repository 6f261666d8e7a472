"""The offline data of a training run: this host's share of every game's episodes, sampled into
game-blocked batches (scaled_ql.data.MultiGameSampler) a few steps ahead (Prefetcher)."""
from __future__ import annotations

from scaled_ql import data


def make_sources(config, host: int, hosts: int) -> dict:
  """Per game, a deterministic stream of this host's episodes from position `start` on."""
  d = config.data
  checkpoint_ids = (list(range(d.checkpoint_range[0], d.checkpoint_range[1] + 1))
                    if d.checkpoint_range else None)

  def source(game):
    def episodes(start: int):
      return data.read_episodes(d.data_dir, game, runs=list(d.runs) or None,
                                checkpoints=checkpoint_ids, shard_index=host, num_shards=hosts,
                                start=start)
    return episodes

  return {g: source(g) for g in config.games}


class OfflineData:
  """`batches` of a training run from config.data (the default of `train`)."""

  def check(self, config, names) -> None:
    """The dataset of every game exists (fails at start-up, not in the prefetch thread)."""
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
        checkpoint_range=tuple(config.data.checkpoint_range) or None, seed=config.seed,
        host_index=host)
    return data.Prefetcher(sampler, depth=config.data.prefetch), sampler.block_size

  def on_start(self, step: int, state) -> None:
    pass

  def on_step(self, step: int, state) -> None:
    pass
