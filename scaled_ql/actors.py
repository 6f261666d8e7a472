r"""An actor of online fine-tuning: plays a game variant in the emulator, writes to Reverb.

  python -m scaled_ql.actors --spec=WORKDIR/online/launch_0/spec.json --actor_id=0

Started (and restarted) by online fine-tuning (`scaled_ql.train.online`); the spec (JSON, written by the
learner) says everything: the replay address, the game variant, the network, the exploration,
the n-step return and this actor's share of the env-step budget. The loop: the newest
parameters from the replay server's "variables" table (re-read every `poll_every` agent steps),
epsilon-greedy actions for `envs_per_actor` emulators stepped together (scaled_ql.envs
.VectorAtariEnv with the variant's mode and difficulty, the evaluation protocol's sticky actions
and frame skip), n-step transitions into the "online" table (scaled_ql.replay.TransitionWriter).

Progress goes to PROGRESS (JSON lines next to the spec, one per second or so and at the end):
{"env_steps", "param_step", "returns": [finished episodes since the last line], "returns_at":
[the run's env step at which each ended, base + this actor's steps x actors], "finished"}.
A restarted actor reads its last line and plays only the rest of its budget.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np


def progress_path(spec_path: str, actor_id: int) -> str:
  return os.path.join(os.path.dirname(spec_path), f"actor_{actor_id}.jsonl")


def read_progress(path: str) -> dict:
  """The actor's last progress line ({} when it has none)."""
  if not os.path.exists(path):
    return {}
  last = {}
  with open(path) as f:
    for line in f:
      try:
        last = json.loads(line)
      except ValueError:  # A line cut by a kill: the previous one stands.
        continue
  return last


def linear_epsilon(env_steps: float, start: float, end: float, decay_steps: float) -> float:
  """Exploration at `env_steps`: from `start` down to `end`, linearly over `decay_steps` env
  steps, then `end` (decay_steps <= 0: `end` throughout). The one schedule of every acting loop
  that learns (the logged agent, both online replay backends)."""
  if decay_steps <= 0:
    return end
  frac = min(env_steps / decay_steps, 1.0)
  return start + (end - start) * frac


def epsilon_at(env_steps: int, spec: dict) -> float:
  """The online schedule of a spec (or config.online): epsilon_start -> epsilon over
  epsilon_decay_steps env steps."""
  return linear_epsilon(env_steps, spec.get("epsilon_start", 1.0), spec["epsilon"],
                        spec["epsilon_decay_steps"])


def epsilon_greedy(greedy, observation: np.ndarray, epsilon: float, rng: np.random.Generator,
                   num_actions: int) -> np.ndarray:
  """[N] int64 actions of N emulators of one game: greedy(observation), each replaced by a
  uniform random action with probability epsilon (draws from `rng` in a fixed order)."""
  n = len(observation)
  actions = np.asarray(greedy(observation, np.zeros(n, np.int32)), np.int64)
  explore = rng.random(n) < epsilon
  actions[explore] = rng.integers(num_actions, size=int(explore.sum()))
  return actions


def run_actor(spec: dict, actor_id: int, progress_file: str) -> None:
  from scaled_ql import envs, evaluation, games, networks, replay  # pylint: disable=g-import-not-at-top

  budget = int(spec["budgets"][actor_id])
  previous = read_progress(progress_file)  # A restarted actor goes on from its last line.
  done = int(previous.get("env_steps", 0))
  restarts = int(previous.get("restarts", -1)) + 1
  if done >= budget:
    return
  model = networks.build_q_network(spec["model"], 1)
  params_client = replay.ParamsClient(spec["address"], networks.param_shapes(model),
                                      timeout_s=spec["timeout_s"])
  params, param_step = params_client.latest(wait=True)
  game = spec["game"]

  def policy(p):
    return evaluation.make_greedy_policy(model, p, loss_kind=spec["loss_kind"], head_games=(game,),
                                         games=(game,), v_min=spec["v_min"], v_max=spec["v_max"])

  greedy = policy(params)
  n = int(spec["envs_per_actor"])
  # Seeds differ per actor and per restart, so a restarted actor does not replay its start.
  seeds = np.random.SeedSequence([spec["seed"], actor_id, restarts]).generate_state(n + 1)
  rng = np.random.default_rng(seeds[-1])
  specs = [envs.EnvSpec(game, int(s) % 2**31, spec["mode"], spec["difficulty"])
           for s in seeds[:n]]
  writer = replay.TransitionWriter(spec["address"], replay.ONLINE, n_step=spec["n_step"],
                                   gamma=spec["gamma"], num_envs=n, timeout_s=spec["timeout_s"])
  num_actions = games.get_game(game).num_actions
  returns, returns_at, last_write, since_poll = [], [], 0.0, 0

  def run_steps(own: int) -> int:
    return int(spec["env_steps_base"] + own * len(spec["budgets"]))

  def write(finished=False):
    with open(progress_file, "a") as f:
      f.write(json.dumps(dict(env_steps=done, param_step=param_step, returns=returns,
                              returns_at=returns_at, finished=finished, restarts=restarts,
                              time=time.time())) + "\n")
    returns.clear()
    returns_at.clear()

  with envs.VectorAtariEnv(specs) as vec:
    observation = vec.reset()
    while done < budget:
      # The run's env steps so far, as this actor sees them: its own times the number of
      # actors (the clock of its epsilon schedule and of the returns it reports).
      actions = epsilon_greedy(greedy, observation, epsilon_at(run_steps(done), spec), rng,
                               num_actions)
      next_observation, reward, terminated, truncated, info = vec.step(actions)
      for i in range(n):
        writer.add(i, observation[i], int(actions[i]), float(reward[i]), bool(terminated[i]),
                   bool(truncated[i]), info["next_observation"][i], 0)
      observation = next_observation
      done += n
      for r in info["episode_return"][info["episode_done"]]:
        returns.append(float(r))
        returns_at.append(run_steps(done))
      since_poll += n
      if since_poll >= spec["poll_every"]:
        since_poll = 0
        latest = params_client.latest()
        if latest is not None and latest[1] != param_step:
          params, param_step = latest
          greedy = policy(params)
      if time.time() - last_write > 1.0:
        write()
        last_write = time.time()
  writer.close()
  write(finished=True)


def main(argv=None) -> None:
  """`python -m scaled_ql.actors --spec=SPEC --actor_id=I`."""
  import argparse  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m scaled_ql.actors", description=__doc__)
  parser.add_argument("--spec", required=True, help="The actor spec JSON of the online run.")
  parser.add_argument("--actor_id", type=int, default=0,
                      help="This actor's index (budget share, seeds).")
  args = parser.parse_args(argv)
  # Library INFO logs hidden: the learner prints this log's tail on a crash.
  logging.set_verbosity(logging.WARNING)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # Stopped by the learner: quietly.
  with open(args.spec) as f:
    spec = json.load(f)
  run_actor(spec, args.actor_id, progress_path(args.spec, args.actor_id))


if __name__ == "__main__":
  main()
