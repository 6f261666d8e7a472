"""The update step the learner and accelerator benchmarks time: the jitted, donated C51 + CQL
update of a config (`scaled_ql.learner`), compiled, with its train state and a game-blocked
batch laid out as the sampler lays it out (split_counts, block = gcd of the counts)."""
from __future__ import annotations

import math
import time

import jax
import numpy as np
from jax.sharding import Mesh

from benchmarks import flops
from scaled_ql import games as games_lib
from scaled_ql import learner, networks, parallel
from scaled_ql.data.batch import Batch


def one_device_mesh(device=None) -> Mesh:
  """A (data, model) mesh of one device (the first by default)."""
  device = device or jax.local_devices()[0]
  return Mesh(np.asarray([device]).reshape(1, 1), (parallel.DATA, parallel.MODEL))


def host_batch(games: tuple[str, ...], batch_size: int, seed: int = 0) -> Batch:
  """A game-blocked batch of random frames in NumPy (the sampler's layout)."""
  counts = parallel.split_counts(batch_size, len(games))
  rng = np.random.default_rng(seed)
  frames = lambda: rng.integers(0, 256, (batch_size, 84, 84, 4), dtype=np.uint8)
  game_id = np.repeat(np.arange(len(games), dtype=np.int32), counts)
  actions = np.asarray([games_lib.get_game(games[g]).num_actions for g in game_id])
  return Batch(observation=frames(),
               action=(rng.random(batch_size) * actions).astype(np.int32),
               reward=rng.uniform(-1, 1, batch_size).astype(np.float32),
               discount=np.full(batch_size, 0.97, np.float32), next_observation=frames(),
               game_id=game_id)


def build(config, batch_size: int, mesh: Mesh) -> dict:
  """{update (compiled), state, batch (on the devices), host_batch, model, block,
  compile_seconds, analytic_flops (model FLOPs of one update, `flops.update_flops`),
  xla_flops (XLA's cost analysis, all devices), memory (XLA's estimate, bytes, or None)}."""
  names = tuple(config.games)
  model = networks.build_q_network(config.model, len(names))
  optimizer = learner.make_optimizer(config.optimizer)
  shardings = learner.state_shardings(mesh, learner.abstract_train_state(model, optimizer))
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0), shardings)
  counts = parallel.split_counts(batch_size, len(names))
  block = math.gcd(*counts)
  update = learner.jit_update(
      learner.make_update_fn(model, optimizer, config.loss, games_lib.legal_action_mask(names),
                             config.target_update_period, block), mesh, shardings)
  local = host_batch(names, batch_size)
  batch = parallel.global_batch(local, mesh)
  start = time.perf_counter()
  compiled = update.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(update=compiled, state=state, batch=batch, host_batch=local, model=model,
              block=block, compile_seconds=compile_seconds,
              # The cost analysis counts one device's share of the partitioned program.
              xla_flops=float((cost or {}).get("flops", 0.0)) * mesh.devices.size,
              analytic_flops=flops.update_flops(model, state.params, batch.observation,
                                                batch.game_id, block),
              memory=_memory_estimate(compiled))


def _memory_estimate(compiled) -> int | None:
  """XLA's estimate of the update's device memory: arguments + outputs + temporaries, less
  what donation aliases."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend has one)
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
