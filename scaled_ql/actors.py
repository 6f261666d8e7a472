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
{"env_steps", "param_step", "returns": [finished episodes since the last line], "finished"}.
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


def epsilon_at(env_steps: int, spec: dict) -> float:
  """Linear decay from 1.0 to spec["epsilon"] over spec["epsilon_decay_steps"] env steps."""
  decay = spec["epsilon_decay_steps"]
  if decay <= 0 or env_steps >= decay:
    return spec["epsilon"]
  return 1.0 + (spec["epsilon"] - 1.0) * env_steps / decay


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
  game_index = np.zeros(n, np.int32)
  returns, last_write, since_poll = [], 0.0, 0

  def write(finished=False):
    with open(progress_file, "a") as f:
      f.write(json.dumps(dict(env_steps=done, param_step=param_step, returns=returns,
                              finished=finished, restarts=restarts, time=time.time())) + "\n")
    returns.clear()

  with envs.VectorAtariEnv(specs) as vec:
    observation = vec.reset()
    while done < budget:
      actions = np.asarray(greedy(observation, game_index), np.int64)
      # The run's env steps so far, roughly: this actor's times the number of actors.
      explore = rng.random(n) < epsilon_at(spec["env_steps_base"] + done * len(spec["budgets"]),
                                           spec)
      actions[explore] = rng.integers(num_actions, size=int(explore.sum()))
      next_observation, reward, terminated, truncated, info = vec.step(actions)
      for i in range(n):
        writer.add(i, observation[i], int(actions[i]), float(reward[i]), bool(terminated[i]),
                   bool(truncated[i]), info["next_observation"][i], 0)
      returns.extend(float(r) for r in info["episode_return"][info["episode_done"]])
      observation = next_observation
      done += n
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
