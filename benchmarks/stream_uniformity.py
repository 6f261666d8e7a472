"""The uniform stream at simulated paper scale: does what the learner samples match the selection?

`measure_stream()` writes a synthetic dataset laid out as the DQN Replay data are (per game,
runs x checkpoints, one read unit per run and checkpoint, stored in time order), with short
episodes whose frames carry their (run, checkpoint) label, then runs the real `UniformStream`
and `MultiGameSampler` on it with pools much smaller than the data. It reports:

- the total-variation distance between the (run, checkpoint) distribution of the transitions
  the sampler draws and that of the selection, after the initial fill and after one pass over
  the data (goal <= 0.05; a time-ordered stream is near 1). "Exact" is the distribution the
  sampler draws from (its pools' transitions: sampling within a game's pool is uniform);
  "drawn" counts the labels of actually sampled batches, which adds multinomial noise of about
  `noise_floor`;
- the sampler's rate at batch 512 on one core (goal >= 25k transitions/s/core);
- host bytes per stored frame (goal <= 1.1 x 7,056 B);
- ingest from disk: frames read, parsed and PNG-decoded per second per core of process time,
  during the fill (short episodes: per-episode costs dominate) and, by `measure_ingest()`, for
  episodes of 1,000 frames as in the real data.

Run: `python benchmarks/stream_uniformity.py [--small]`. Absolute rates depend on the machine
and on what else runs on it; the distances do not.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from scaled_ql import data
from scaled_ql.frames import FRAME_BYTES

DEFAULT_GAMES = ("pong", "breakout", "freeway")


def _frames(rng, length: int, run: int, checkpoint: int) -> np.ndarray:
  """Atari-like frames (flat areas and a few moving blocks) labelled at pixels [0, 0:2]."""
  frames = np.full((length, 84, 84), 40, np.uint8)
  for t in range(length):
    y, x = rng.integers(4, 70, 2)
    frames[t, y:y + 12, x:x + 6] = 200
    frames[t, 60:64, :] = 90
  frames[:, 0, 0], frames[:, 0, 1] = run, checkpoint
  return frames


def write_dataset(root: str, games: Sequence[str], runs: int, checkpoints: int,
                  episodes_per_checkpoint: int, lengths=(6, 15), seed: int = 0) -> dict:
  """Writes the synthetic dataset; returns {game: {(run, checkpoint): transitions}}."""
  rng = np.random.default_rng(seed)
  cells = {}
  for game in games:
    counts = collections.Counter()
    for run in range(1, runs + 1):
      with data.EpisodeWriter(root, game, run, encode_threads=1, shard_bytes=4 << 20) as writer:
        for c in range(checkpoints):
          for e in range(episodes_per_checkpoint):
            t = int(rng.integers(*lengths))
            writer.write(data.make_episode(_frames(rng, t, run, c), rng.integers(0, 3, t),
                                           rng.normal(size=t), terminated=bool(e % 2),
                                           checkpoint_id=c, episode_id=e))
            counts[(run, c)] += t - 1
    cells[game] = counts
  return cells


def _tv(shares: dict, reference: dict) -> float:
  keys = set(shares) | set(reference)
  total_s, total_r = sum(shares.values()), sum(reference.values())
  return 0.5 * sum(abs(shares.get(k, 0) / total_s - reference.get(k, 0) / total_r) for k in keys)


def _pool_shares(pool) -> collections.Counter:
  """(run, checkpoint) -> transitions in the pool (the exact sampling distribution)."""
  shares = collections.Counter()
  for live in pool.episodes():
    row = live.start % pool.capacity
    label = tuple(int(v) for v in pool._frames[row, 0, :2])  # pylint: disable=protected-access
    shares[label] += live.length - 1
  return shares


def _drawn_shares(sampler, steps: int, first_step: int) -> list[collections.Counter]:
  out = [collections.Counter() for _ in sampler.games]
  bounds = np.concatenate([[0], np.cumsum(sampler.counts)])
  for s in range(first_step, first_step + steps):
    obs = sampler.sample(s).observation[:, 0, :2, -1]
    for g in range(len(sampler.games)):
      out[g].update(map(tuple, obs[bounds[g]:bounds[g + 1]].tolist()))
  return out


def measure_stream(games: Sequence[str] = DEFAULT_GAMES, runs: int = 5, checkpoints: int = 50,
                   episodes_per_checkpoint: int = 40, pool_fraction: float = 0.25,
                   batch_size: int = 512, samples_per_transition: float = 1.0,
                   refresh_every: int = 1, draw_steps: int = 300, seed: int = 0,
                   workdir: Optional[str] = None) -> dict:
  """Runs the measurements (module docstring) and returns them as a dict of numbers."""
  own_dir = workdir is None
  root = tempfile.mkdtemp(prefix="stream_uniformity_") if own_dir else workdir
  try:
    t0 = time.perf_counter()
    marker = os.path.join(root, f".written-{'-'.join(games)}-{runs}-{checkpoints}-"
                          f"{episodes_per_checkpoint}-{seed}.json")
    if os.path.exists(marker):  # A kept workdir: the same dataset, written before.
      cells = {g: collections.Counter({tuple(k): v for k, v in c})
               for g, c in json.load(open(marker)).items()}
    else:
      cells = write_dataset(root, games, runs, checkpoints, episodes_per_checkpoint, seed=seed)
      json.dump({g: [[list(k), v] for k, v in c.items()] for g, c in cells.items()},
                open(marker, "w"))
    write_s = time.perf_counter() - t0
    frames_per_game = sum(sum(c.values()) for c in cells.values()) / len(games)
    frames_per_game += runs * checkpoints * episodes_per_checkpoint  # + one final step each.
    pool_frames = int(pool_fraction * frames_per_game)
    sources = data.uniform_sources(root, games, seed=seed)
    units = min(s.num_units for s in sources.values())
    counts = data.split_batch(batch_size, None, list(games), uneven="largest_remainder")
    sampler = data.MultiGameSampler(sources, list(games), batch_size, pool_frames,
                                    game_weights=counts, refresh_every=refresh_every,
                                    samples_per_transition=samples_per_transition, seed=seed)
    out = dict(games=len(games), read_units_per_game=units,
               episodes_per_game=runs * checkpoints * episodes_per_checkpoint,
               frames_per_game=int(frames_per_game), pool_frames_per_game=pool_frames,
               write_s=write_s)

    t0, c0 = time.perf_counter(), time.process_time()
    sampler.sample(0)  # The initial fill.
    fill_wall, fill_cpu = time.perf_counter() - t0, time.process_time() - c0
    filled_frames = sum(p.num_frames for p in sampler.pools)
    out["ingest_frames_per_s_per_core"] = filled_frames / fill_cpu
    out["ingest_frames_per_s_wall"] = filled_frames / fill_wall

    def distances(tag, first_step):
      exact = [_tv(_pool_shares(p), cells[g]) for p, g in zip(sampler.pools, games)]
      drawn = _drawn_shares(sampler, draw_steps, first_step)
      out[f"tv_exact_{tag}"] = float(np.mean(exact))
      out[f"tv_exact_{tag}_max"] = float(np.max(exact))
      out[f"tv_drawn_{tag}"] = float(np.mean([_tv(d, cells[g]) for d, g in zip(drawn, games)]))

    distances("after_fill", 0)
    out["steps_per_pass_predicted"] = sampler.steps_per_pass()
    steps = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while min(s.consumed - s.pass_length for s in sampler._streams) < 0:  # pylint: disable=protected-access
      next(sampler)
      steps += 1
    out["steps_for_one_pass"] = steps
    out["pass_wall_s"] = time.perf_counter() - t0
    distances("after_one_pass", sampler.step)

    rate_steps = 30
    c0 = time.process_time()
    for s in range(rate_steps):
      sampler.sample(10_000 + s)
    out["sampler_transitions_per_s_per_core"] = rate_steps * batch_size / (time.process_time() - c0)
    out["host_bytes_per_stored_frame"] = (sum(p.nbytes for p in sampler.pools)
                                          / sum(p.num_frames for p in sampler.pools))
    out["bytes_goal"] = 1.1 * FRAME_BYTES
    per_game = batch_size / len(games) * draw_steps  # Samples per game in the drawn counts.
    out["noise_floor"] = 0.5 * runs * checkpoints * np.sqrt(
        2 / (np.pi * runs * checkpoints * per_game))
    return out
  finally:
    if own_dir:
      shutil.rmtree(root, ignore_errors=True)


def measure_ingest(episode_length: int = 1000, episodes: int = 12, parallelism: int = 1,
                   seed: int = 0) -> dict:
  """Frames read from disk, parsed and PNG-decoded per second, with episodes as long as the
  real ones (the short episodes of `measure_stream` are dominated by per-episode costs)."""
  root = tempfile.mkdtemp(prefix="stream_ingest_")
  try:
    rng = np.random.default_rng(seed)
    with data.EpisodeWriter(root, "pong", 1, encode_threads=1) as writer:
      for e in range(episodes):
        writer.write(data.make_episode(_frames(rng, episode_length, 1, e), np.zeros(
            episode_length, int), np.zeros(episode_length), terminated=True, checkpoint_id=e,
            episode_id=0))
    stream = data.UniformStream(root, "pong", parallelism=parallelism, cycle=False)
    next(stream(0))  # Traces the decoder.
    t0, c0 = time.perf_counter(), time.process_time()
    frames = sum(len(e["observation"]) for e in stream(0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(long_episode_length=episode_length,
                long_ingest_frames_per_s_per_core=frames / cpu,
                long_ingest_frames_per_s_wall=frames / wall, long_ingest_threads=parallelism)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="a seconds-long run (2 games, "
                      "2 x 10 checkpoints): checks the harness, not the goals.")
  parser.add_argument("--workdir", default=None, help="keep the synthetic dataset here (and "
                      "reuse it in later runs); default: a temporary folder, removed after.")
  args = parser.parse_args(argv)
  if args.small:
    result = measure_stream(games=("pong", "breakout"), runs=2, checkpoints=10,
                            episodes_per_checkpoint=6, batch_size=64, draw_steps=10,
                            workdir=args.workdir)
  else:
    result = measure_stream(workdir=args.workdir)
  result.update(measure_ingest(episodes=4 if args.small else 12))
  goals = dict(tv_exact_after_fill=("<=", 0.05), tv_exact_after_one_pass=("<=", 0.05),
               sampler_transitions_per_s_per_core=(">=", 25_000),
               host_bytes_per_stored_frame=("<=", 1.1 * FRAME_BYTES))
  for key, value in result.items():
    goal = goals.get(key)
    note = ""
    if goal:
      ok = value <= goal[1] if goal[0] == "<=" else value >= goal[1]
      note = f"   goal {goal[0]} {goal[1]:,.3g}: {'met' if ok else 'NOT met'}"
    shown = f"{value:,.4f}" if isinstance(value, float) else f"{value}"
    print(f"{key:>38}  {shown}{note}")


if __name__ == "__main__":
  main()
