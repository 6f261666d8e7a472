"""One process of the multi-host equivalence test (run by tests/test_parallel.py).

  python tests/multihost_worker.py OUT.npz PROCESS_ID NUM_PROCESSES PORT STEPS MODEL_AXIS HOSTS

Trains the `tiny` preset for STEPS updates on a fixed, seeded global batch stream. Each process
feeds only its own rows (host-local batch), assembled into the global batch over the mesh.
The global batch is laid out as HOSTS host blocks, each blocked by game, whatever the number of
processes actually running, so a single process can replay exactly the batches of several.
Process 0 writes the per-step losses and the final parameters.
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scaled_ql import app, configs, games, learner, networks, parallel  # noqa: E402


def global_rows(step: int, batch: int, num_games: int, hosts: int):
  """The global batch of `step`, in host order; every process computes the same arrays."""
  rng = np.random.default_rng(1000 + step)
  per_game = batch // (num_games * hosts)
  return learner.Batch(
      observation=rng.integers(0, 256, (batch, 84, 84, 4), dtype=np.uint8),
      action=rng.integers(0, 3, batch).astype(np.int32),
      reward=rng.uniform(-1, 1, batch).astype(np.float32),
      discount=np.where(rng.random(batch) < 0.2, 0.0, 0.97).astype(np.float32),
      next_observation=rng.integers(0, 256, (batch, 84, 84, 4), dtype=np.uint8),
      game_id=np.tile(np.repeat(np.arange(num_games, dtype=np.int32), per_game), hosts))


def main(out, process_id, num_processes, port, steps, model_axis, hosts):
  config = configs.load("configs/pretrain.py:tiny")
  # The XLA:CPU runtime `launch.pretrain` gives this encoder (classic for Nature-CNN), so the
  # cross-process CPU collectives are tested on the runtime that training uses.
  print("XLA:CPU runtime:", parallel.select_cpu_runtime(config.model.encoder))
  app.configure_jax()
  if num_processes > 1:
    parallel.initialize(f"localhost:{port}", num_processes, process_id)
  num_games = len(config.games)
  mesh = parallel.make_mesh(model_axis)
  model = networks.build_q_network(config.model, num_games)
  optimizer = learner.make_optimizer(config.optimizer)
  # A low threshold so that the tiny model's larger arrays really are split over `model`.
  shardings = learner.state_shardings(mesh, learner.abstract_train_state(model, optimizer),
                                      min_size=4096)
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0), shardings)
  block = config.batch_size // (num_games * hosts)
  update = learner.jit_update(
      learner.make_update_fn(model, optimizer, config.loss, games.legal_action_mask(config.games),
                             config.target_update_period, block_size=block), mesh, shardings)
  local = config.batch_size // num_processes
  losses = []
  for step in range(steps):
    rows = global_rows(step, config.batch_size, num_games, hosts)
    mine = jax.tree_util.tree_map(lambda x: x[process_id * local:(process_id + 1) * local], rows)
    state, metrics = update(state, parallel.global_batch(mine, mesh))
    losses.append(float(metrics["loss"]))
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True)),
      state.params)
  if process_id == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out, losses=np.array(losses), devices=jax.device_count(), **flat)


if __name__ == "__main__":
  import jax.experimental.multihost_utils  # noqa: F401
  a = sys.argv[1:]
  main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6]))
