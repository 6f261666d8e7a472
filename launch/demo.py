r"""The main job at laptop scale: emulator data -> multi-game Q-learning -> results.

  python -m launch.demo --workdir=runs/demo

Interim form until the dataset, sampler and pre-training issues land (then `make demo` runs
`launch.make_dataset` and `launch.pretrain` instead). Everything here is real and small:
1. plays each game of the `tiny` preset in the ALE emulator (sticky actions, frame skip 4) with a
   uniformly random behaviour policy, keeping single 84x84 frames per episode;
2. samples game-blocked batches: 4 zero-padded stacked frames, n-step clipped returns that stop
   at terminals and at the end of the recorded data;
3. trains the multi-game C51 + CQL Q-network with the jitted update step;
4. prints the loss curve and, per game, how the trained Q ranks the data actions.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from scaled_ql import envs, games, learner, losses, networks

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the loss curve is written.")
_STEPS_PER_GAME = flags.DEFINE_integer("env_steps_per_game", 3000, "Emulator steps per game.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 600, "Gradient steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the emulators, the sampler and the model.")


def demo_config() -> ml_collections.ConfigDict:
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "pretrain.py")
  spec = importlib.util.spec_from_file_location("pretrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.batch_size = 96
  config.target_update_period = 100
  config.optimizer.learning_rate = 1e-3
  return config


def collect(game: str, steps: int, seed: int) -> dict[str, np.ndarray]:
  """Random play; frames[i] is the frame seen before action i (one extra per episode end)."""
  env = envs.AtariEnv(game, seed=seed)
  rng = np.random.default_rng(seed)
  frames, actions, rewards, terminals, starts = [env.reset()], [], [], [], [0]
  bar = tqdm.tqdm(total=steps, desc=f"emulator {game:<10}", unit="step", leave=False)
  returns, episode_return = [], 0.0
  for _ in range(steps):
    a = int(rng.integers(env.num_actions))
    frame, reward, terminated, truncated = env.step(a)
    actions.append(a), rewards.append(reward), terminals.append(terminated)
    episode_return += reward
    frames.append(frame)
    if terminated or truncated:
      returns.append(episode_return)
      episode_return = 0.0
      frames.append(env.reset())
      starts.append(len(frames) - 1)
      actions.append(0), rewards.append(0.0), terminals.append(False)  # placeholder row
    bar.update()
  bar.close()
  # Row i of actions/rewards/terminals belongs to frame i; the last frame of each episode has
  # no action (its row is a placeholder) and is never a transition's start.
  n = len(frames)
  episode = np.zeros(n, np.int64)
  episode[starts[1:]] = 1
  episode = np.cumsum(episode)
  pad = n - len(actions)
  is_last = np.zeros(n, bool)
  is_last[np.array(starts[1:], dtype=np.int64) - 1] = True
  is_last[-1] = True
  return dict(frames=np.stack(frames), action=np.array(actions + [0] * pad, np.int32),
              reward=np.array(rewards + [0.0] * pad, np.float32),
              terminal=np.array(terminals + [False] * pad), episode=episode, is_last=is_last,
              returns=np.array(returns or [episode_return], np.float32))


def stack(data, index):
  """4 frames ending at `index`, zero-padded before the episode's first frame."""
  out = np.zeros((84, 84, 4), np.uint8)
  for k in range(4):
    j = index - 3 + k
    if j >= 0 and data["episode"][j] == data["episode"][index]:
      out[..., k] = data["frames"][j]
  return out


def sample(data, rng, count, n_step, gamma):
  starts = np.flatnonzero(~data["is_last"])
  obs, act, ret, disc, nxt = [], [], [], [], []
  for i in rng.choice(starts, size=count):
    rewards, terms, valid = np.zeros(n_step), np.zeros(n_step, bool), np.zeros(n_step, bool)
    k = 0
    while k < n_step:
      j = i + k
      if data["is_last"][j]:
        break
      rewards[k], terms[k], valid[k] = data["reward"][j], data["terminal"][j], True
      k += 1
      if terms[k - 1]:
        break
    r, d = losses.n_step_return(rewards, terms, valid, gamma)
    obs.append(stack(data, i)), act.append(data["action"][i]), nxt.append(stack(data, i + k))
    ret.append(float(r)), disc.append(float(d))
  return obs, act, ret, disc, nxt


def main(argv):
  del argv
  config = demo_config()
  os.makedirs(_WORKDIR.value, exist_ok=True)
  game_names = tuple(config.games)
  print(f"== scaled-ql demo: {len(game_names)} games {game_names}, "
        f"{config.model.encoder} encoder, loss {config.loss.kind} + {config.loss.cql_alpha} x CQL")

  # -- Data: real emulator episodes, single frames. ------------------------------------------
  t0 = time.time()
  data = [collect(g, _STEPS_PER_GAME.value, _SEED.value + i) for i, g in enumerate(game_names)]
  for g, d in zip(game_names, data):
    print(f"  {g:<10} {len(d['frames']):>6} frames, {len(d['returns'])} episodes, "
          f"random-policy return {d['returns'].mean():.1f}")
  print(f"  collected in {time.time() - t0:.0f}s")

  # -- Model, optimizer, update step. ---------------------------------------------------------
  model = networks.build_q_network(config.model, len(game_names))
  optimizer = learner.make_optimizer(config.optimizer)
  rng = jax.random.PRNGKey(_SEED.value)
  state = learner.init_train_state(networks.init_params(model, rng), optimizer, rng)
  per_game = config.batch_size // len(game_names)
  update = jax.jit(learner.make_update_fn(
      model, optimizer, config.loss, games.legal_action_mask(game_names),
      config.target_update_period, block_size=per_game), donate_argnums=0)
  print(f"  model: {networks.count_params(state.params):,} parameters; "
        f"batch {config.batch_size} = {per_game} per game")

  # -- Train loop. --------------------------------------------------------------------------
  sampler_rng = np.random.default_rng(_SEED.value)
  curve = []
  bar = tqdm.tqdm(range(_TRAIN_STEPS.value), desc="train", unit="step")
  wait = 0.0
  for step in bar:
    t = time.time()
    parts = [sample(d, sampler_rng, per_game, config.loss.n_step, config.loss.gamma)
             for d in data]
    batch = learner.Batch(
        observation=jnp.asarray(np.stack([o for p in parts for o in p[0]])),
        action=jnp.asarray(np.array([a for p in parts for a in p[1]], np.int32)),
        reward=jnp.asarray(np.array([r for p in parts for r in p[2]], np.float32)),
        discount=jnp.asarray(np.array([d for p in parts for d in p[3]], np.float32)),
        next_observation=jnp.asarray(np.stack([o for p in parts for o in p[4]])),
        game_id=jnp.asarray(np.repeat(np.arange(len(game_names), dtype=np.int32), per_game)))
    wait += time.time() - t
    state, metrics = update(state, batch)
    if step % 25 == 0 or step == _TRAIN_STEPS.value - 1:
      m = {k: float(v) for k, v in metrics.items()}
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(f"non-finite loss at step {step}: {m}")
      curve.append(dict(step=step + 1, **m))
      bar.set_postfix(loss=f"{m['loss']:.3f}", cql=f"{m['cql_penalty']:.3f}")
  elapsed = bar.format_dict["elapsed"]
  bar.close()

  # -- Results. -----------------------------------------------------------------------------
  print(f"\n== loss curve ({_TRAIN_STEPS.value} steps in {elapsed:.0f}s, "
        f"{_TRAIN_STEPS.value / elapsed:.1f} steps/s, data wait {wait / elapsed:.0%})")
  print(f"{'step':>6} {'loss':>8} {'td':>8} {'cql':>8} {'Q(s,a_data)':>12} {'logsumexp Q':>12}")
  for c in curve:
    print(f"{c['step']:>6} {c['loss']:>8.4f} {c['td_loss']:>8.4f} {c['cql_penalty']:>8.4f} "
          f"{c['q_data']:>12.4f} {c['q_logsumexp']:>12.4f}")
  with open(os.path.join(_WORKDIR.value, "loss_curve.json"), "w") as f:
    json.dump(curve, f, indent=1)
  print(f"\nwritten: {os.path.join(_WORKDIR.value, 'loss_curve.json')}")
  print("(evaluation in the emulator and result tables arrive with the evaluation issue)")


if __name__ == "__main__":
  app.run(main)
