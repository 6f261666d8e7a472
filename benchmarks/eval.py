"""Evaluation rollouts: agent steps per second per core with the greedy policy in the emulator
(`scaled_ql.evaluation`), and what each part of an agent step costs.

  python -m benchmarks.eval
"""
from __future__ import annotations

import numpy as np

from benchmarks import common


def run() -> None:
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
      common.report(f"eval {name} x {k} envs, {label}", played.agent_steps / played.cpu_seconds,
                    goal, "agent steps/s",
                    note=f"(wall: {played.agent_steps / played.seconds:,.0f}/s"
                         + (f"; policy {share:.0%} of wall time" if policy else "")
                         + f"; building the envs took {played.setup_seconds:.2f}s, not counted)")
  greedy = evaluation.make_greedy_policy(model, params, loss_kind="c51", head_games=heads,
                                         games=heads)
  _eval_step_costs(heads, greedy, batch=8, goal=goal)


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

    emulator[game] = common.cpu_us(play, 300)
    screens.append(screen.copy())
  screens = np.stack((screens * batch)[:batch])
  resize = common.cpu_us(lambda: envs.resize_area(screens), 100) / batch
  # pylint: disable=protected-access
  reference = common.cpu_us(lambda: envs._resize_area_reference(screens[0]), 100)
  frames = envs.resize_area(screens)
  stacks = envs._Stacks(batch, envs.FRAME_SHAPE, envs.STACK_SIZE)
  # pylint: enable=protected-access

  def stack():
    stacks.push(frames)
    return stacks.view().copy(), stacks.view().copy()  # Observation and next observation.

  stacking = common.cpu_us(stack, 300) / batch
  observation = np.repeat(frames[..., None], envs.STACK_SIZE, axis=-1)
  game_index = np.arange(batch) % len(games)
  policy = common.cpu_us(lambda: greedy(observation, game_index), 30) / batch
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


def main(argv):
  del argv
  run()


if __name__ == "__main__":
  common.run(main)
