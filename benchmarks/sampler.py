"""Sampler: sampled transitions per second per core at batch 512 (4-frame stacks, n = 3), host
bytes per stored frame of the pools, and ingest frames per second per core from memory and from
disk (an RLDS dataset made in the emulator, read with `scaled_ql.data.read_episodes`; skipped
without TensorFlow) into a pool.

  python -m benchmarks.sampler

Rates "per core" divide by the CPU time of this process (all its threads), so they do not
depend on how busy the machine is; wall-clock rates are printed beside them.
"""
from __future__ import annotations

import tempfile

from absl import flags, logging
import numpy as np

from benchmarks import common
from scaled_ql.data import sampler as sampler_lib

_SAMPLER_GAMES = flags.DEFINE_list("sampler_games", ["pong", "breakout", "freeway", "qbert"],
                                   "Games of the sampler benchmark (one pool each).")
_SAMPLER_POOL_FRAMES = flags.DEFINE_integer("sampler_pool_frames", 40_000,
                                            "Pool capacity per game, in frames.")
_SAMPLER_BATCHES = flags.DEFINE_integer("sampler_batches", 40, "Batches timed.")
_INGEST_STEPS = flags.DEFINE_integer("ingest_env_steps", 3000,
                                     "Emulator steps written to disk for the ingest benchmark.")


def run() -> None:
  games, capacity = tuple(_SAMPLER_GAMES.value), _SAMPLER_POOL_FRAMES.value
  batch = 512
  print(f"== sampler: {len(games)} games {games}, pools of {capacity:,} frames, batch {batch} "
        f"({batch // len(games)} per game), 4-frame stacks, n = 3")
  rng = np.random.default_rng(0)
  streams = {g: common.synthetic_stream(g, 2 * capacity, rng) for g in games}
  # More data than the pools hold, refreshed every 1,000 steps (after the timed batches).
  sampler = sampler_lib.MultiGameSampler(streams, games, batch, capacity, n_step=3, gamma=0.99,
                                         refresh_every=1000)
  with common.timed() as fill:
    next(sampler)  # Fills the pools.
  for _ in range(3):
    next(sampler)  # Warm-up.
  with common.timed() as t:
    for _ in range(_SAMPLER_BATCHES.value):
      next(sampler)
  n = _SAMPLER_BATCHES.value * batch
  common.report("sampled transitions / s / core", n / t["cpu"], 25_000, "transitions/s",
                note=f"(wall: {n / t['wall']:,.0f}/s)")
  stored = sum(p.num_frames for p in sampler.pools)
  nbytes = sum(p.nbytes for p in sampler.pools)
  common.report("host bytes / stored frame", nbytes / stored, 1.1 * 84 * 84, "bytes", False,
                note=f"({nbytes / 2**20:,.0f} MiB for {stored:,} frames; a frame is {84 * 84:,})")

  # Ingest: the pool side alone (from memory), then from disk through the RLDS reader.
  pool = sampler_lib.FramePool(games[0], capacity)
  episodes = streams[games[0]]
  frames = sum(len(e["observation"]) for e in episodes)
  with common.timed() as t:
    for i, e in enumerate(episodes):
      pool.add(e, i)
  common.report("ingest frames / s / core, memory -> pool", frames / t["cpu"], 10_000, "frames/s",
                note=f"(wall: {frames / t['wall']:,.0f}/s; fill of all pools took "
                     f"{fill['wall']:.1f}s)")
  disk_ingest(games[0], capacity)


def disk_ingest(game: str, capacity: int) -> None:
  """Writes an emulator dataset to a temporary directory and times reading it into a pool."""
  try:
    from scaled_ql.data import generate, rlds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"  ingest from disk: skipped, the dataset modules are not importable ({e}).")
    return
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    with tempfile.TemporaryDirectory(prefix="scaled_ql_bench_") as data_dir:
      with common.timed() as gen:
        generate.generate_run(data_dir, game, 1, num_checkpoints=2,
                              steps_per_checkpoint=_INGEST_STEPS.value // 2,
                              max_episode_frames=2400)
      sum(len(e["observation"]) for e in rlds.read_episodes(data_dir, game))  # Warm-up.
      pool = sampler_lib.FramePool(game, capacity)
      # Streams are long: time the steady state, from the first episode on; the reader's
      # start-up (building its input pipeline) is printed apart.
      with common.timed() as startup:
        stream = rlds.read_episodes(data_dir, game)
        pool.add(next(stream), 0)
      frames = 0
      with common.timed() as t:
        for i, e in enumerate(stream, 1):
          pool.add(e, i)
          frames += len(e["observation"])
  finally:
    logging.set_verbosity(verbosity)
  common.report("ingest frames / s / core, disk -> pool", frames / t["cpu"], 10_000, "frames/s",
                note=f"(wall: {frames / t['wall']:,.0f}/s; {frames:,} frames of {game} written "
                     f"by the emulator in {gen['wall']:.0f}s, read with read_episodes after its "
                     f"{startup['wall']:.2f}s start-up)")


def main(argv):
  del argv
  run()


if __name__ == "__main__":
  common.run(main)
