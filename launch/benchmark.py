r"""Throughput and memory benchmarks, each printed beside its goal as a ratio measured in this run.

  python -m launch.benchmark --what=sampler

Benchmarks are the named functions of `BENCHMARKS`; add one by writing a function and an entry.
Rates "per core" divide by the CPU time of this process (all its threads), so they do not depend
on how busy the machine is; wall-clock rates are printed beside them.

- sampler: sampled transitions per second per core at batch 512 (4-frame stacks, n = 3), host
  bytes per stored frame of the pools, and ingest frames per second per core from disk (an RLDS
  dataset made in the emulator, read with `scaled_ql.data.read_episodes`) into a pool.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Callable

from absl import app, flags, logging
from launch import common
import numpy as np

from scaled_ql import games as games_lib
from scaled_ql.data import sampler as sampler_lib

_WHAT = flags.DEFINE_string("what", "sampler", "Benchmark(s) to run, comma-separated.")
_SAMPLER_GAMES = flags.DEFINE_list("sampler_games", ["pong", "breakout", "freeway", "qbert"],
                                   "Games of the sampler benchmark (one pool each).")
_SAMPLER_POOL_FRAMES = flags.DEFINE_integer("sampler_pool_frames", 40_000,
                                            "Pool capacity per game, in frames.")
_SAMPLER_BATCHES = flags.DEFINE_integer("sampler_batches", 40, "Batches timed.")
_INGEST_STEPS = flags.DEFINE_integer("ingest_env_steps", 3000,
                                     "Emulator steps written to disk for the ingest benchmark.")


@contextlib.contextmanager
def timed():
  """Yields a dict that receives 'wall' and 'cpu' (this process, all threads) seconds."""
  out = {}
  wall, cpu = time.perf_counter(), time.process_time()
  yield out
  out["wall"], out["cpu"] = time.perf_counter() - wall, time.process_time() - cpu


def report(name: str, value: float, goal: float, unit: str, higher_is_better: bool = True,
           note: str = "") -> None:
  ratio = value / goal if higher_is_better else goal / value
  verdict = "ok" if ratio >= 1 else "BELOW GOAL"
  print(f"  {name:<44} {value:>12,.1f} {unit:<14} goal {'>=' if higher_is_better else '<='} "
        f"{goal:,.1f}: {ratio:.2f}x {verdict}{('  ' + note) if note else ''}", flush=True)


def synthetic_stream(game: str, frames: int, rng: np.random.Generator) -> list[dict]:
  """Episodes of 400-2,000 steps (views into one block of random frames) for `frames` frames."""
  base = rng.integers(0, 256, (4000, 84, 84), dtype=np.uint8)
  num_actions = games_lib.get_game(game).num_actions
  episodes, total = [], 0
  while total < frames:
    length = int(rng.integers(400, 2001))
    start = int(rng.integers(0, len(base) - length))
    marks = np.zeros((3, length), bool)
    marks[0, 0] = marks[1, -1] = True
    marks[2, -1] = bool(rng.integers(2))
    episodes.append(dict(
        observation=base[start:start + length],
        action=rng.integers(0, num_actions, length).astype(np.int32),
        reward=rng.choice(np.array([0.0, 0.0, 0.0, 1.0, -1.0, 5.0], np.float32), length),
        discount=np.ones(length, np.float32), is_first=marks[0], is_last=marks[1],
        is_terminal=marks[2], game=game, checkpoint_id=0, episode_id=len(episodes)))
    total += length
  return episodes


def sampler_benchmark() -> None:
  games, capacity = tuple(_SAMPLER_GAMES.value), _SAMPLER_POOL_FRAMES.value
  batch = 512
  print(f"== sampler: {len(games)} games {games}, pools of {capacity:,} frames, batch {batch} "
        f"({batch // len(games)} per game), 4-frame stacks, n = 3")
  rng = np.random.default_rng(0)
  streams = {g: synthetic_stream(g, 2 * capacity, rng) for g in games}
  sampler = sampler_lib.MultiGameSampler(streams, games, batch, capacity, n_step=3, gamma=0.99)
  with timed() as fill:
    next(sampler)  # Fills the pools.
  for _ in range(3):
    next(sampler)  # Warm-up.
  with timed() as t:
    for _ in range(_SAMPLER_BATCHES.value):
      next(sampler)
  n = _SAMPLER_BATCHES.value * batch
  report("sampled transitions / s / core", n / t["cpu"], 25_000, "transitions/s",
         note=f"(wall: {n / t['wall']:,.0f}/s)")
  stored = sum(p.num_frames for p in sampler.pools)
  nbytes = sum(p.nbytes for p in sampler.pools)
  report("host bytes / stored frame", nbytes / stored, 1.1 * 84 * 84, "bytes", False,
         note=f"({nbytes / 2**20:,.0f} MiB for {stored:,} frames; a frame is {84 * 84:,})")

  # Ingest: the pool side alone (from memory), then from disk through the RLDS reader.
  pool = sampler_lib.FramePool(games[0], capacity)
  episodes = streams[games[0]]
  frames = sum(len(e["observation"]) for e in episodes)
  with timed() as t:
    for i, e in enumerate(episodes):
      pool.add(e, i)
  report("ingest frames / s / core, memory -> pool", frames / t["cpu"], 10_000, "frames/s",
         note=f"(wall: {frames / t['wall']:,.0f}/s; fill of all pools took {fill['wall']:.1f}s)")
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
      with timed() as gen:
        generate.generate_run(data_dir, game, 1, num_checkpoints=2,
                              steps_per_checkpoint=_INGEST_STEPS.value // 2,
                              max_episode_frames=2400)
      sum(len(e["observation"]) for e in rlds.read_episodes(data_dir, game))  # Warm-up.
      pool = sampler_lib.FramePool(game, capacity)
      # Streams are long: time the steady state, from the first episode on; the reader's
      # start-up (building its input pipeline) is printed apart.
      with timed() as startup:
        stream = rlds.read_episodes(data_dir, game)
        pool.add(next(stream), 0)
      frames = 0
      with timed() as t:
        for i, e in enumerate(stream, 1):
          pool.add(e, i)
          frames += len(e["observation"])
  finally:
    logging.set_verbosity(verbosity)
  report("ingest frames / s / core, disk -> pool", frames / t["cpu"], 10_000, "frames/s",
         note=f"(wall: {frames / t['wall']:,.0f}/s; {frames:,} frames of {game} written by the "
              f"emulator in {gen['wall']:.0f}s, read with read_episodes after its "
              f"{startup['wall']:.2f}s start-up)")


def eval_benchmark() -> None:
  """Evaluation rollouts: agent steps / s / core including the policy (scaled_ql.evaluation).

  The real `run_episodes` loop (VectorAtariEnv in this process, the jitted greedy policy of a
  freshly initialised Nature-CNN network, epsilon 0.001), each env playing one episode cut at
  400 steps; 1 game x 8 envs, then 4 games x 2 envs and 8 games x 1 env (one compiled policy
  for the mix). The env alone (uniform random actions, no network) is timed for reference: the
  difference is the policy's cost. Rates count the stepping loop (CPU time of this process, all
  threads), not building the envs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from scaled_ql import evaluation, networks  # pylint: disable=g-import-not-at-top

  steps, goal = 400, 3000
  layouts = (("1 game", ("pong",), 8), ("4 games", ("pong", "breakout", "freeway", "qbert"), 2),
             ("8 games", ("pong", "breakout", "freeway", "qbert", "seaquest", "space_invaders",
                          "ms_pacman", "enduro"), 1))
  heads = tuple(dict.fromkeys(g for _, names, _ in layouts for g in names))
  model = networks.build_q_network(dict(encoder="nature", spatial_features=8, feature_dim=64,
                                        num_atoms=51), len(heads))
  params = networks.init_params(model, jax.random.PRNGKey(0))
  print(f"== eval: rollouts with a Nature-CNN policy ({networks.count_params(params):,} "
        f"parameters, {len(heads)} heads, C51) on {jax.default_backend()}, epsilon 0.001, "
        f"sticky actions, {steps} steps per env, envs in this process")
  for name, games, k in layouts:
    greedy = evaluation.make_greedy_policy(model, params, loss_kind="c51", head_games=heads,
                                           games=games)
    greedy(np.zeros((len(games) * k, 84, 84, 4), np.uint8),
           np.repeat(np.arange(len(games)), k))  # Compiles outside the timing.
    for label, policy in (("policy + env", greedy), ("env only", None)):
      played = evaluation.run_episodes(policy, games, k, envs_per_game=k, seed=0,
                                       max_steps_per_episode=steps)
      share = played.policy_seconds / played.seconds
      report(f"eval {name} x {k} envs, {label}", played.agent_steps / played.cpu_seconds, goal,
             "agent steps/s",
             note=f"(wall: {played.agent_steps / played.seconds:,.0f}/s"
                  + (f"; policy {share:.0%} of wall time" if policy else "")
                  + f"; building the envs took {played.setup_seconds:.2f}s, not counted)")


BENCHMARKS: dict[str, Callable[[], None]] = {
    "sampler": sampler_benchmark,
    "eval": eval_benchmark,
}


def main(argv):
  del argv
  names = [w.strip() for w in _WHAT.value.split(",") if w.strip()]
  unknown = [w for w in names if w not in BENCHMARKS]
  if unknown or not names:
    raise app.UsageError(f"--what={_WHAT.value!r}: choose from {sorted(BENCHMARKS)} "
                         f"(comma-separated).")
  for name in names:
    BENCHMARKS[name]()


if __name__ == "__main__":
  common.run(main)
