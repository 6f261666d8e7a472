r"""Throughput and memory benchmarks, each printed beside its goal as a ratio measured in this run.

  python -m launch.benchmark --what=sampler

Benchmarks are the named functions of `BENCHMARKS`; add one by writing a function and an entry.
Rates "per core" divide by the CPU time of this process (all its threads), so they do not depend
on how busy the machine is; wall-clock rates are printed beside them.

- sampler: sampled transitions per second per core at batch 512 (4-frame stacks, n = 3), host
  bytes per stored frame of the pools, and ingest frames per second per core from disk (an RLDS
  dataset made in the emulator, read with `scaled_ql.data.read_episodes`) into a pool.
- learner: the C51 + CQL update step's steps/s and MFU (its FLOPs per second over a float32
  matmul rate timed beside it) for Nature-CNN at batch 32 and 256 and ResNet-18/34 at batch 64,
  each in its own process with the XLA:CPU runtime a training run of it gets; the data-wait
  fraction of a real `demo` pre-training run; Nature-CNN throughput on 1, 2 and 4 forced host
  devices.
- replay: online fine-tuning's Reverb layer (`scaled_ql.replay`, server in its own process):
  inserts/s of 84x84x4 transitions from one TransitionWriter (Pong and random frames) and
  sampled transitions/s at batch 256 through ReplayBatches; wall-clock.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app, flags, logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from launch import common
import numpy as np

from scaled_ql import games as games_lib
from scaled_ql import learner, networks, parallel
from scaled_ql.data import sampler as sampler_lib
from scaled_ql.data.batch import Batch
from scaled_ql.networks import qnetwork

_WHAT = flags.DEFINE_string("what", "sampler", "Benchmark(s) to run, comma-separated.")
_SAMPLER_GAMES = flags.DEFINE_list("sampler_games", ["pong", "breakout", "freeway", "qbert"],
                                   "Games of the sampler benchmark (one pool each).")
_SAMPLER_POOL_FRAMES = flags.DEFINE_integer("sampler_pool_frames", 40_000,
                                            "Pool capacity per game, in frames.")
_SAMPLER_BATCHES = flags.DEFINE_integer("sampler_batches", 40, "Batches timed.")
_INGEST_STEPS = flags.DEFINE_integer("ingest_env_steps", 3000,
                                     "Emulator steps written to disk for the ingest benchmark.")
_LEARNER_ROUNDS = flags.DEFINE_integer(
    "learner_rounds", 5, "Timing rounds per learner configuration (matmul, update steps, "
    "matmul); medians over rounds are printed.")
_LEARNER_DEMO_STEPS = flags.DEFINE_integer(
    "learner_demo_steps", 300, "Steps of the real `demo` pre-training run timed for data wait.")
_LEARNER_CHILD = flags.DEFINE_string(
    "learner_child", "", "Internal: one update-step measurement (JSON: model overrides, batch, "
    "flax_conv, devices); prints one JSON line. The learner benchmark runs each in a subprocess "
    "because XLA:CPU's runtime and the host device count are set before JAX starts.")


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
  threads), not building the envs. Then each part of a step is timed alone (`_eval_step_costs`):
  the rate cannot exceed 1e6 / the sum of those CPU microseconds.
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
  greedy = evaluation.make_greedy_policy(model, params, loss_kind="c51", head_games=heads,
                                         games=heads)
  _eval_step_costs(heads, greedy, batch=8, goal=goal)


def _cpu_us(fn: Callable[[], Any], repeats: int) -> float:
  """CPU microseconds (this process, all threads) per call of `fn`, best of 3 rounds."""
  fn()
  best = math.inf
  for _ in range(3):
    start = time.process_time()
    for _ in range(repeats):
      fn()
    best = min(best, (time.process_time() - start) / repeats)
  return best * 1e6


def _eval_step_costs(games: tuple[str, ...], greedy, batch: int, goal: float) -> None:
  """Prints the CPU cost of each part of an evaluation step per agent step, each timed alone:
  the emulator (`AtariEnv.step_screen`: 4 frames with sticky actions and the max-pool of the
  last two, uniformly random actions) per game, the 84x84 area resize and the 4-frame stacking
  of a batch of `batch` screens, and the policy at batch `batch` (per observation)."""
  from scaled_ql import envs  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  emulator, screens = {}, []
  for game in games:
    env = envs.AtariEnv(game, seed=0)
    env.reset()
    screen = np.zeros(env.screen_shape, np.uint8)

    def play(env=env, screen=screen):
      _, terminated, truncated = env.step_screen(int(rng.integers(env.num_actions)), screen)
      if terminated or truncated:
        env.reset()

    emulator[game] = _cpu_us(play, 300)
    screens.append(screen.copy())
  screens = np.stack((screens * batch)[:batch])
  resize = _cpu_us(lambda: envs.resize_area(screens), 100) / batch
  # pylint: disable=protected-access
  reference = _cpu_us(lambda: envs._resize_area_reference(screens[0]), 100)
  frames = envs.resize_area(screens)
  stacks = envs._Stacks(batch, envs.FRAME_SHAPE, envs.STACK_SIZE)
  # pylint: enable=protected-access

  def stack():
    stacks.push(frames)
    return stacks.view().copy(), stacks.view().copy()  # Observation and next observation.

  stacking = _cpu_us(stack, 300) / batch
  observation = np.repeat(frames[..., None], envs.STACK_SIZE, axis=-1)
  game_index = np.arange(batch) % len(games)
  policy = _cpu_us(lambda: greedy(observation, game_index), 30) / batch
  mean_emulator = float(np.mean(list(emulator.values())))
  rest = resize + stacking
  print(f"  eval CPU us per agent step, each part timed alone: emulator {mean_emulator:.0f} (mean "
        f"of {len(games)} games: " + ", ".join(f"{g} {t:.0f}" for g, t in emulator.items())
        + f"); resize {resize:.0f} (batch of {batch}; the float32 reference "
        f"{reference:.0f}); stacking {stacking:.1f}; policy {policy:.0f} per observation at "
        f"batch {batch}")
  for label, emu in ((f"{games[0]}", emulator[games[0]]), (f"{len(games)} games", mean_emulator)):
    print(f"  eval bound ({label}): env only <= {1e6 / (emu + rest):,.0f} agent steps/s, with "
          f"the policy <= {1e6 / (emu + rest + policy):,.0f}; {goal:,.0f}/s allows "
          f"{1e6 / goal:.0f} us per step in all")


# -- learner: update-step MFU, data wait of a real run, forced host devices. ----------------

LEARNER_GAMES = ("pong", "breakout", "freeway")
# (label, config.model overrides of the paper_resnet34 preset, batch): issue 4's configurations.
LEARNER_CASES = (("Nature-CNN", dict(encoder="nature"), 32),
                 ("Nature-CNN", dict(encoder="nature"), 256),
                 ("ResNet-18", dict(encoder="resnet", depth=18), 64),
                 ("ResNet-34", dict(encoder="resnet", depth=34), 64))
MFU_GOAL = 0.35  # Nature-CNN, C51 + CQL, batch 256 (issue 4).
BEFORE = "Nature-CNN on flax.linen.Conv (before conv.py)"
DATA_WAIT_GOAL = 0.05
DEVICE_COUNTS = (1, 2, 4)
# Our goal for forced host devices (the issue sets none): they share this machine's cores, so
# splitting the batch over them should keep at least this share of the 1-device rate.
DEVICE_SCALING_GOAL = 0.9
_MATMUL_SIZE = 1024


class _FlaxConvNatureCNN(nn.Module):
  """NatureCNN as written on flax.linen.Conv before `networks.conv`: the "before" row."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, (c, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(nn.Conv(c, (k, k), (s, s), padding="VALID", dtype=self.dtype,
                          name=f"conv{i + 1}")(x))
    return x


@contextlib.contextmanager
def _flax_conv_nature_cnn():
  """Q-networks built inside this block get the flax.linen.Conv NatureCNN (same parameters)."""
  make_encoder = qnetwork.make_encoder
  qnetwork.make_encoder = lambda name, depth, width, dtype: (
      _FlaxConvNatureCNN(dtype=dtype) if name == "nature" else
      make_encoder(name, depth, width, dtype))
  try:
    yield
  finally:
    qnetwork.make_encoder = make_encoder


def _learner_config(model_overrides: dict):
  """The paper_resnet34 preset (C51 + CQL, Adam, paper head sizes) on LEARNER_GAMES."""
  config = common.load_config("configs/pretrain.py", "paper_resnet34")
  config.games = LEARNER_GAMES
  config.model.update(model_overrides)
  return config


_matmul = {}


def _matmul_seconds() -> float:
  """Best of 3 timings of a 1024 x 1024 float32 matmul: this run's reference rate is
  2 * 1024^3 / this. Taken right beside each measurement, so machine load affects both."""
  if not _matmul:
    a = jnp.asarray(np.random.default_rng(0).random((_MATMUL_SIZE,) * 2, np.float32))
    _matmul["f"], _matmul["args"] = jax.jit(jnp.matmul), (a, a)
  f, args = _matmul["f"], _matmul["args"]
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _conv_flops(eqn) -> float:
  """2 x the multiply-adds of a (forward) convolution, counting only the kernel taps that fall
  inside the input, not on SAME padding (as XLA's cost analysis counts)."""
  p = eqn.params
  lhs, kernel, out = (v.aval.shape for v in (*eqn.invars[:2], eqn.outvars[0]))
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  taps = 1
  for i, (stride, (low, _), dilation) in enumerate(
      zip(p["window_strides"], p["padding"], p["rhs_dilation"])):
    size, k, n = lhs[lhs_spec[2 + i]], kernel[rhs_spec[2 + i]], out[out_spec[2 + i]]
    offsets = np.arange(n)[:, None] * stride + np.arange(k)[None, :] * dilation - low
    taps *= int(np.sum((offsets >= 0) & (offsets < size)))
  batch_and_features = out[out_spec[0]] * out[out_spec[1]]
  return 2.0 * batch_and_features * taps * kernel[rhs_spec[1]]


def _jaxpr_flops(jaxpr) -> list[float]:
  """FLOPs (2 x multiply-adds) of every dot_general and convolution, in program order,
  nested jaxprs (jit, custom_vjp, ...) included."""
  flops = []
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      depth = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      flops.append(2.0 * np.prod(eqn.outvars[0].aval.shape) * depth)
    elif name == "conv_general_dilated":
      flops.append(_conv_flops(eqn))
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, jax.core.ClosedJaxpr):
          flops += _jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, jax.core.Jaxpr):
          flops += _jaxpr_flops(sub)
  return flops


def _analytic_update_flops(model, params, batch, block_size: int) -> float:
  """Matmul and convolution FLOPs of one update from the forward pass's layer shapes: the
  online forward (F), its backward (2F, less the first layer's input gradient, which nothing
  needs) and the target network's forward (F)."""
  jaxpr = jax.make_jaxpr(lambda p, x, g: model.apply({"params": p}, x, g, block_size))(
      params, batch.observation, batch.game_id)
  forward = _jaxpr_flops(jaxpr.jaxpr)
  return 4 * sum(forward) - forward[0]


def _update_case(config, batch_size: int, mesh) -> dict:
  """The jitted C51 + CQL update of `config` (compiled) with its state and a game-blocked batch
  laid out as the sampler does (split_counts, block = gcd of the counts)."""
  names = tuple(config.games)
  model = networks.build_q_network(config.model, len(names))
  optimizer = learner.make_optimizer(config.optimizer)
  shardings = learner.state_shardings(mesh, learner.abstract_train_state(model, optimizer))
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0), shardings)
  counts = parallel.split_counts(batch_size, len(names))
  rng = np.random.default_rng(0)
  frames = lambda: rng.integers(0, 256, (batch_size, 84, 84, 4), dtype=np.uint8)
  game_id = np.repeat(np.arange(len(names), dtype=np.int32), counts)
  actions = np.asarray([games_lib.get_game(names[g]).num_actions for g in game_id])
  batch = Batch(observation=frames(), action=(rng.random(batch_size) * actions).astype(np.int32),
                reward=rng.uniform(-1, 1, batch_size).astype(np.float32),
                discount=np.full(batch_size, 0.97, np.float32), next_observation=frames(),
                game_id=game_id)
  block = math.gcd(*counts)
  update = learner.jit_update(
      learner.make_update_fn(model, optimizer, config.loss, games_lib.legal_action_mask(names),
                             config.target_update_period, block), mesh, shardings)
  batch = parallel.global_batch(batch, mesh)
  compiled = update.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The cost analysis counts one device's share of the partitioned program.
  return dict(update=compiled, state=state, batch=batch, batch_size=batch_size,
              xla_flops=float(cost["flops"]) * mesh.devices.size,
              analytic_flops=_analytic_update_flops(model, state.params, batch, block))


def _time_update(case: dict, rounds: int) -> dict:
  """Median over rounds of (MFU, step seconds); a round = matmul, the best of a few update
  steps (about a second's worth), matmul, against the faster of the two matmuls."""
  update, state, batch = case["update"], case["state"], case["batch"]

  def step(state):
    start = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start

  state, _ = step(state)
  state, first = step(state)
  reps = int(np.clip(round(1.0 / first), 2, 10))
  mfus, seconds = [], []
  for _ in range(rounds):
    before = _matmul_seconds()
    times = []
    for _ in range(reps):
      state, t = step(state)
      times.append(t)
    rate = 2 * _MATMUL_SIZE**3 / min(before, _matmul_seconds())
    mfus.append(case["analytic_flops"] / min(times) / rate)
    seconds.append(min(times))
  case["state"] = state  # The old one was donated.
  return dict(mfu=float(np.median(mfus)), seconds=float(np.median(seconds)),
              matmul_rate=2 * _MATMUL_SIZE**3 / _matmul_seconds())


def _measure_update(overrides: dict, batch: int, rounds: int, flax_conv: bool = False,
                    devices: int = 1) -> dict:
  """`_time_update` of one configuration in its own process (`--learner_child`), on
  `devices` forced host devices and XLA:CPU's runtime for the encoder
  (`parallel.xla_flags_for`: classic for Nature-CNN and IMPALA). The flax.linen.Conv "before"
  network runs on JAX's default runtime: the classic one aborts on its strided input
  gradients."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if not flax_conv:
    xla_flags = parallel.xla_flags_for(overrides["encoder"], xla_flags)
  if devices > 1:
    xla_flags = f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  spec = dict(model=overrides, batch=batch, rounds=rounds, flax_conv=flax_conv, devices=devices)
  out = _run(["launch.benchmark", f"--learner_child={json.dumps(spec)}"], env,
             f"the learner measurement {spec}")
  result = json.loads(out.strip().splitlines()[-1])
  result["runtime"] = "classic" if "use_thunk_runtime=false" in xla_flags else "thunk"
  return result


def _learner_child(spec: dict) -> None:
  """Inside a `_measure_update` process: one JSON line of figures."""
  if jax.device_count() != spec["devices"]:
    raise RuntimeError(f"expected {spec['devices']} host devices, JAX sees "
                       f"{jax.device_count()}.")
  with _flax_conv_nature_cnn() if spec["flax_conv"] else contextlib.nullcontext():
    case = _update_case(_learner_config(spec["model"]), spec["batch"], parallel.make_mesh(1))
  timing = _time_update(case, spec["rounds"])
  print(json.dumps(dict(timing, analytic_flops=case["analytic_flops"],
                        xla_flops=case["xla_flops"])))


def learner_benchmark() -> None:
  """Issue 4's learner figures: update-step MFU, the data wait of a real run, forced devices.

  MFU = the update's model FLOPs (2 x the multiply-adds of every matmul and convolution of
  the architecture, from the layer shapes: forward, backward, target forward;
  `_analytic_update_flops`) per second, over the float32 matmul rate measured beside each
  timing in the same process. "XLA count" is XLA's cost analysis of the compiled step relative
  to that (what the machine executes: padding taps, the folded embedding, ...). Each row runs
  in its own process with the XLA:CPU runtime a training run of that encoder gets.
  """
  rounds = _LEARNER_ROUNDS.value
  print(f"== learner: C51 + CQL update step (learner.jit_update, 1-device mesh, Adam; paper "
        f"head sizes), games {'/'.join(LEARNER_GAMES)}, game-blocked batches; MFU = model "
        f"FLOPs / s over a {_MATMUL_SIZE}^2 float32 matmul timed beside every measurement; "
        f"medians of {rounds} rounds; one process per row", flush=True)
  print(f"  {'model':<46} {'batch':>5} {'runtime':>7} {'steps/s':>8} {'trans/s':>8} "
        f"{'GFLOP/step':>10} {'XLA count':>10} {'GFLOP/s':>8} {'MFU':>6}", flush=True)
  rows = [(label, overrides, batch, False) for label, overrides, batch in LEARNER_CASES]
  # The "before" row right after its "after" row, so that both see the same machine load.
  rows.insert(2, (BEFORE, dict(encoder="nature"), 256, True))
  results, rates = {}, []
  for label, overrides, batch, flax_conv in rows:
    timing = _measure_update(overrides, batch, rounds, flax_conv)
    results[label, batch] = timing
    rates.append(timing["matmul_rate"])
    flops = timing["analytic_flops"]
    counted = timing["xla_flops"] / flops
    print(f"  {label:<46} {batch:>5} {timing['runtime']:>7} {1 / timing['seconds']:>8.2f} "
          f"{batch / timing['seconds']:>8,.0f} {flops / 1e9:>10.2f} "
          f"{f'{counted:.3f}x' if counted > 0.5 else 'n/a':>10} "
          f"{flops / timing['seconds'] / 1e9:>8.1f} {timing['mfu']:>6.3f}", flush=True)
  print(f"  (float32 matmul rate in this run: {np.median(rates) / 1e9:,.0f} GFLOP/s, median; "
        f"XLA count n/a: the classic runtime emits convolutions as runtime calls, which XLA's "
        f"cost analysis does not count)")
  after, before = results["Nature-CNN", 256], results[BEFORE, 256]
  # MFU ratios: steps per second relative to each measurement's own matmul rate, so machine
  # load (and the runtimes' own matmul speeds) divide out.
  report("MFU, Nature-CNN C51 + CQL, batch 256", 100 * after["mfu"], 100 * MFU_GOAL,
         "% of matmul",
         note=f"(the update is {after['mfu'] / before['mfu']:.2f}x as fast as on "
              f"flax.linen.Conv and JAX's default runtime, whose MFU is "
              f"{100 * before['mfu']:.1f}%)")
  _demo_data_wait()
  _device_scaling(rounds)


def _run(args: list[str], env: dict, what: str) -> str:
  """Runs `python -m ...` in the repository; a failure raises with the output's tail."""
  done = subprocess.run([sys.executable, "-m", *args], cwd=common.REPO, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
  return done.stdout


def _demo_data_wait() -> None:
  """The data-wait fraction of a real `demo` pre-training run on a fresh emulator dataset."""
  steps = _LEARNER_DEMO_STEPS.value
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  with tempfile.TemporaryDirectory(prefix="scaled_ql_bench_demo_") as tmp:
    data_dir, workdir = os.path.join(tmp, "data"), os.path.join(tmp, "run")
    with timed() as made:
      _run(["launch.make_dataset", "--source=ale", f"--games={','.join(LEARNER_GAMES)}",
            "--runs=1", "--checkpoints_per_run=1", "--steps_per_checkpoint=2000",
            f"--data_dir={data_dir}"], env, "make_dataset")
    with timed() as trained:
      _run(["launch.pretrain", "--config=configs/pretrain.py:demo", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", f"--config.num_steps={steps}",
            "--config.eval_every=0"], env, "pretrain")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      windows = [json.loads(line) for line in f]
  # Each window is log_every steps; weight its fraction by its duration. The first window holds
  # compilation and the pools' first fill, so the steady state is the rest.
  seconds = np.asarray([1 / w["steps_per_second"] for w in windows])
  waits = np.asarray([w["data_wait_fraction"] for w in windows])
  steady = float(np.sum(waits[1:] * seconds[1:]) / np.sum(seconds[1:]))
  print(f"== learner: data wait of `launch.pretrain --config=configs/pretrain.py:demo` for "
        f"{steps} steps on a fresh 3-game emulator dataset (made in {made['wall']:.0f}s; "
        f"run took {trained['wall']:.0f}s)", flush=True)
  report("data-wait fraction, steady state", 100 * steady, 100 * DATA_WAIT_GOAL, "% of time",
         higher_is_better=False,
         note=f"(windows of {windows[0]['step']} steps after the first; first window "
              f"{waits[0]:.1%} with compilation and the pools' fill; "
              f"{np.median([w['steps_per_second'] for w in windows[1:]]):.1f} steps/s)")


def _device_scaling(rounds: int) -> None:
  """Nature-CNN batch-256 update throughput on 1, 2 and 4 forced host devices (one process
  each: the device count must be set before JAX starts)."""
  print(f"== learner: Nature-CNN batch-256 update over a data-parallel mesh of N forced host "
        f"devices (--xla_force_host_platform_device_count=N, one process each)", flush=True)
  results = {n: _measure_update(dict(encoder="nature"), 256, rounds, devices=n)
             for n in DEVICE_COUNTS}
  one = results[DEVICE_COUNTS[0]]
  for n, r in results.items():
    # Ratios of MFU (each process's own matmul rate), so load differences between the
    # processes cancel; transitions/s are wall-clock.
    report(f"{n} device{'s' if n > 1 else ''}: throughput vs 1 device", 100 * r["mfu"] / one["mfu"],
           100 * DEVICE_SCALING_GOAL, "% of 1 device",
           note=f"({256 / r['seconds']:,.0f} transitions/s, MFU {r['mfu']:.3f})")


_REPLAY_INSERTS = flags.DEFINE_integer("replay_inserts", 3000,
                                       "Transitions written per insert measurement (replay).")
_REPLAY_BATCHES = flags.DEFINE_integer("replay_batches", 20,
                                       "Batches of 256 timed through ReplayBatches (replay).")


def _replay_stacks(frames: np.ndarray, count: int):
  """`count` consecutive 4-frame stacks (envs.FrameStacker) cycling through `frames`."""
  from scaled_ql import envs  # pylint: disable=g-import-not-at-top

  stacker = envs.FrameStacker()
  yield stacker.reset(frames[0])
  for t in range(1, count):
    yield stacker.push(frames[t % len(frames)])


def replay_benchmark() -> None:
  """Online fine-tuning's Reverb layer (scaled_ql.replay), server in its own process.

  Inserts/s: one TransitionWriter (1 env, n = 3) writing transitions of 84x84x4 stacks, timed
  to the server's confirmation (flush), with real Pong frames from the emulator (what Reverb's
  chunk compression sees in practice) and with random frames (incompressible: the worst
  case). Sampled transitions/s: ReplayBatches at batch 256 from a table of the Pong
  transitions, after warm-up. Wall-clock rates: the server's CPU is another process's, so the
  per-core figures of the other sections would flatter it. Goals (ours; the issue sets none):
  inserts >= 2,000/s, an emulator's single-core step rate with the policy, so that writing
  never paces an actor; samples >= 10,000/s, 40 learner updates/s at batch 256.
  """
  from scaled_ql import envs, replay  # pylint: disable=g-import-not-at-top

  count = _REPLAY_INSERTS.value
  rng = np.random.default_rng(0)
  env = envs.AtariEnv("pong", 0)
  frames = [env.reset()]
  while len(frames) < 1000:
    frame, _, terminated, truncated = env.step(int(rng.integers(env.num_actions)))
    frames.append(env.reset() if terminated or truncated else frame)
  sources = {"Pong frames": np.stack(frames),
             "random frames": rng.integers(0, 256, (1000, 84, 84), dtype=np.uint8)}
  tables = replay.ReplayTables(max_size=2 * count + 1000, min_size_to_sample=1)
  print(f"== replay: Reverb {tables.max_size:,}-transition table in a server process, one "
        f"TransitionWriter (n = 3), ReplayBatches at batch 256 (prefetch 2); wall-clock rates",
        flush=True)
  with replay.start_server(tables=tables) as server:
    for i, (name, source) in enumerate(sources.items()):
      with replay.TransitionWriter(server.address, n_step=3, gamma=0.99, num_envs=1) as writer:
        stacks = _replay_stacks(source, count + 1)
        current = next(stacks)
        actions, rewards = rng.integers(0, 6, count), rng.choice([0.0, 1.0], count)
        with timed() as t:
          for step, following in enumerate(stacks):
            writer.add(0, current, int(actions[step]), float(rewards[step]), False,
                       step % 500 == 499, following, 0)
            current = following
          writer.flush()
      report(f"inserts / s, {name}", count / t["wall"], 2_000, "transitions/s",
             note=f"({count:,} transitions of {84 * 84 * 4:,}-byte stacks; episodes of 500 "
                  f"steps; {t['cpu'] / t['wall']:.0%} of a core in this process)")
      if i == 0:  # Sample only Pong transitions.
        with replay.ReplayBatches(server.address, 256, timeout_s=60) as batches:
          for _ in range(3):
            next(batches)
          with timed() as t:
            for _ in range(_REPLAY_BATCHES.value):
              next(batches)
        n = 256 * _REPLAY_BATCHES.value
        report("sampled transitions / s, ReplayBatches", n / t["wall"], 10_000,
               "transitions/s",
               note=f"(batch 256 of {count:,} Pong transitions; {t['cpu'] / t['wall']:.0%} of "
                    f"a core in this process, the server's not counted)")
  _online_loop_rates()


_ONLINE_ENV_STEPS = flags.DEFINE_integer("online_env_steps", 6000,
                                         "Env-step budget of each timed online loop (replay).")


def _online_run(backbone: str, workdir: str, samples_per_insert: float,
                *extra: str) -> dict:
  """Runs `launch.finetune` (online_cpu) and reads its rates from its own logs: env steps/s
  from the actors' progress lines (first to last line of any actor: they start once the first
  parameters are published), learner updates/s from its log (first to last line)."""
  out = _run(["launch.finetune", "--config=configs/finetune.py:online_cpu",
              f"--backbone={backbone}", f"--workdir={workdir}",
              f"--config.online.env_steps={_ONLINE_ENV_STEPS.value}", "--config.log_every=25",
              f"--config.online.samples_per_insert={samples_per_insert}", *extra],
             dict(os.environ, JAX_PLATFORMS="cpu"), "the online loop")
  with open(os.path.join(workdir, "online.jsonl")) as f:
    log = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    wait = float(np.median([json.loads(line)["data_wait_fraction"] for line in f]))
  actors = []
  for path in sorted(glob.glob(os.path.join(workdir, "online", "launch_0", "actor_*.jsonl"))):
    with open(path) as f:
      actors.append([json.loads(line) for line in f if line.strip()])
  if len(log) < 2 or not actors or min(len(a) for a in actors) < 2:
    raise RuntimeError(f"the online loop logged too little:\n{out[-2000:]}")
  start = min(a[0]["time"] for a in actors)
  seconds = max(a[-1]["time"] for a in actors) - start
  steps = sum(a[-1]["env_steps"] for a in actors)
  return dict(env=steps / seconds,
              updates=(log[-1]["step"] - log[0]["step"]) / (log[-1]["time"] - log[0]["time"]),
              wait=wait)


def _online_loop_rates() -> None:
  """The whole online loop (`launch.finetune` with configs/finetune.py:online_cpu: a server
  process, 2 actor processes x 2 Freeway mode-1 emulators, the learner at batch 32), from a
  freshly initialised demo-sized backbone; start-up not counted. Twice: with the preset's
  rate limiter (8 samples per inserted transition: env steps are then paced by the learner,
  env steps/s = updates/s x 32 / 8) and without one (the actors' own pace beside a learner
  that trains on the same cores). Goals (ours): the limiter holds its ratio within 10%; the
  unpaced actors keep >= 1,000 env steps/s on this 2-core machine, half of its cores'
  emulation rate, with the learner running."""
  from scaled_ql import export  # pylint: disable=g-import-not-at-top

  demo = common.load_config("configs/pretrain.py", "demo")
  with tempfile.TemporaryDirectory() as tmp:
    model = networks.build_q_network(demo.model, len(demo.games))
    backbone = os.path.join(tmp, "backbone")
    export.write_artifact(backbone, model_config=demo.model.to_dict(),
                          params=networks.init_params(model, jax.random.PRNGKey(0)),
                          games=demo.games, loss_kind="c51", step=0)
    paced = _online_run(backbone, os.path.join(tmp, "paced"), 8.0)
    # Without a limiter the learner does not wait for the actors: stop it after 400 updates.
    free = _online_run(backbone, os.path.join(tmp, "free"), 0.0, "--config.num_steps=400")
  print(f"  online loop, {_ONLINE_ENV_STEPS.value:,} env steps per run, Freeway mode 1, "
        f"learner batch 32:")
  ratio = paced["updates"] * 32 / paced["env"]
  report("  limiter 8: samples per env step", ratio, 8 * 0.9, "samples",
         note=f"({paced['env']:,.0f} env steps/s beside {paced['updates']:.1f} updates/s; "
              f"learner data wait {paced['wait']:.0%})")
  report("  no limiter: env steps / s", free["env"], 1_000, "steps/s",
         note=f"(beside {free['updates']:.1f} learner updates/s = {free['updates'] * 32:,.0f} "
              f"sampled transitions/s; learner data wait {free['wait']:.0%})")


BENCHMARKS: dict[str, Callable[[], None]] = {
    "sampler": sampler_benchmark,
    "eval": eval_benchmark,
    "learner": learner_benchmark,
    "replay": replay_benchmark,
}


def main(argv):
  del argv
  if _LEARNER_CHILD.value:
    _learner_child(json.loads(_LEARNER_CHILD.value))
    return
  names = [w.strip() for w in _WHAT.value.split(",") if w.strip()]
  unknown = [w for w in names if w not in BENCHMARKS]
  if unknown or not names:
    raise app.UsageError(f"--what={_WHAT.value!r}: choose from {sorted(BENCHMARKS)} "
                         f"(comma-separated).")
  for name in names:
    BENCHMARKS[name]()


if __name__ == "__main__":
  common.run(main)
