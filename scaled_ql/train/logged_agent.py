"""Logged-agent datasets: an online C51 agent learns a game from scratch, and every transition it
plays is the dataset, its training run cut into checkpoints (as the DQN Replay Dataset is the
replay of DQN agents learning, in 50 checkpoints).

One game-run: `num_checkpoints` segments of `steps_per_checkpoint` env steps (all emulators
together, rounded up to whole vector steps). `config.num_envs` emulators play the whole run;
the agent acts epsilon-greedily with its current parameters (epsilon falls linearly over the
first `epsilon_decay_fraction` of the run), every finished episode goes into the agent's FIFO
replay (`data.FramePool`, the offline sampler's pool, so n-step targets are computed exactly as
offline) and into the checkpoint in which it ends (episodes run on across checkpoint
boundaries, as in a replay buffer saved at each checkpoint); an update (`learner`, C51 with
the config's loss) runs every `update_every` env steps once the replay holds
`min_replay_transitions`. The run's last step closes the episodes still running as truncated.
The data: `{data_dir}/{dataset_name}/{Game}_run_{k}/` (RLDS, one split per checkpoint),
written atomically when the last segment is done, with `agent_returns.json` beside it.

Reruns. After each segment the job keeps, in `{data_dir}/{dataset_name}/.agent-{Game}_run_{k}/`,
the segment's episodes (`segment_NN.npz`) and `progress.json` (the segment's returns, updates,
env steps); the dataset is written from them when the run's last segment is done. A game-run
stopped midway is played again from its start when the same command is rerun, so its data are
the same bytes as an uninterrupted run's (same seed, stack and machine): an exact resume would
have to save and restore every emulator's internal state (ALE's and the preprocessing's), the
episodes in progress and the generators, and the cost of a restart is at most one game-run
(~5 min at 30k env steps on 2 cores). Finished game-runs (their dataset written) are kept. A
staging folder made with other settings is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import zlib
from typing import Callable, Optional

import jax
import numpy as np
import tqdm

from scaled_ql import (actors, data, envs, errors, games, learner, networks, parallel,
                       run_meta)
from scaled_ql.data import rlds
from scaled_ql.evaluation import policy as policy_lib

PROGRESS_FILE = "progress.json"
DATASET_NAME = "scaled_ql_agent"


@dataclasses.dataclass(frozen=True)
class Segment:
  """What one checkpoint segment of the agent's run held."""
  checkpoint: int
  env_steps: int  # total, after this segment
  updates: int  # total, after this segment
  episodes: int  # finished in this segment (terminated or truncated)
  terminated: int
  mean_return: float  # over terminated episodes (NaN when none)
  epsilon: float  # at the segment's end


def staging_dir(data_dir: str, game, run: int, dataset_name: str = DATASET_NAME) -> str:
  return os.path.join(data_dir, dataset_name, f".agent-{rlds.config_name(game, run)}")


def settings(config, game: str, run: int, num_checkpoints: int, steps_per_checkpoint: int,
             seed: int) -> dict:
  """Everything that decides the data; a staging folder must have been made with the same."""
  return dict(game=game, run=int(run), num_checkpoints=int(num_checkpoints),
              steps_per_checkpoint=int(steps_per_checkpoint), seed=int(seed),
              config=json.loads(config.to_json()))


def check(config, game: str, num_checkpoints: int, steps_per_checkpoint: int) -> None:
  """Bad settings raise ValueError naming the field, before any play."""
  games.get_game(game)
  if num_checkpoints < 1:
    raise ValueError(f"--checkpoints_per_run must be >= 1, got {num_checkpoints}.")
  if steps_per_checkpoint < config.num_envs:
    raise ValueError(f"--steps_per_checkpoint={steps_per_checkpoint} is less than one step of "
                     f"the agent's {config.num_envs} emulators: a checkpoint would be empty.")
  for field in ("num_envs", "batch_size", "update_every", "target_update_period",
                "replay_frames", "min_replay_transitions"):
    if config[field] < 1:
      raise ValueError(f"agent config {field} must be >= 1, got {config[field]}.")
  if config.min_replay_transitions >= config.replay_frames:
    raise ValueError(f"agent config min_replay_transitions ({config.min_replay_transitions}) "
                     f"must be below replay_frames ({config.replay_frames}).")
  if not 0 <= config.epsilon_end <= config.epsilon_start <= 1:
    raise ValueError("agent config: need 0 <= epsilon_end <= epsilon_start <= 1.")
  if config.loss.kind not in ("c51", "mse", "hl_gauss"):
    raise ValueError(f"agent config loss.kind={config.loss.kind!r}: an acting agent needs a "
                     f"Q-learning loss (c51, mse or hl_gauss), not behaviour cloning.")


def epsilon_at(config, env_steps: int, total_steps: int) -> float:
  """The agent's exploration: `actors.linear_epsilon` over the first epsilon_decay_fraction of
  the run's total_steps."""
  return actors.linear_epsilon(env_steps, config.epsilon_start, config.epsilon_end,
                               max(config.epsilon_decay_fraction * total_steps, 1.0))


class _Episodes:
  """The episodes of one segment, as arrays (what segment_NN.npz holds)."""

  def __init__(self):
    self.frames, self.actions, self.rewards, self.terminated = [], [], [], []

  def add(self, frames, actions, rewards, terminated: bool) -> None:
    self.frames.append(np.asarray(frames, np.uint8))
    self.actions.append(np.asarray(actions, np.int64))
    self.rewards.append(np.asarray(rewards, np.float32))
    self.terminated.append(bool(terminated))

  def save(self, path: str) -> None:
    lengths = np.array([len(a) for a in self.actions], np.int64)
    tmp = path + ".tmp.npz"
    np.savez_compressed(
        tmp, lengths=lengths, terminated=np.array(self.terminated, bool),
        frames=np.concatenate(self.frames) if self.frames else np.zeros((0, 84, 84), np.uint8),
        actions=np.concatenate(self.actions) if self.actions else np.zeros(0, np.int64),
        rewards=np.concatenate(self.rewards) if self.rewards else np.zeros(0, np.float32))
    os.replace(tmp, path)


def _load_episodes(path: str, checkpoint: int):
  """The RLDS episodes of a saved segment, in the order played."""
  with np.load(path) as z:
    lengths, terminated = z["lengths"], z["terminated"]
    frames, actions, rewards = z["frames"], z["actions"], z["rewards"]
  out, f, a = [], 0, 0
  for i, (n, term) in enumerate(zip(lengths.tolist(), terminated.tolist())):
    # n steps: n + 1 observations (the final one last); the final step's action/reward unused.
    out.append(rlds.make_episode(frames[f:f + n + 1], np.append(actions[a:a + n], 0),
                                 np.append(rewards[a:a + n], 0.0), terminated=term,
                                 checkpoint_id=checkpoint, episode_id=i))
    f, a = f + n + 1, a + n
  return out


def _segment_seeds(seed: int, game, run: int, checkpoint: int, n: int):
  seq = np.random.SeedSequence([int(seed), zlib.crc32(game.name.encode()), int(run),
                                int(checkpoint)])
  states = seq.generate_state(n + 1)
  return [int(s) >> 1 for s in states[:n]], np.random.default_rng(int(states[-1]))


def run_agent(config, data_dir: str, game: str, run: int, *, num_checkpoints: int,
              steps_per_checkpoint: int, seed: int = 0, dataset_name: str = DATASET_NAME,
              overwrite: bool = False, progress: Optional[Callable] = None) -> list[Segment]:
  """One game-run of a logged-agent dataset (see the module docstring); returns its segments.

  progress(n, postfix: dict) is called after each vector step with the env steps taken.
  """
  with errors.input_checks(rlds.DatasetExistsError):
    info = games.get_game(game)
    check(config, info.name, num_checkpoints, steps_per_checkpoint)
    final = os.path.join(data_dir, dataset_name, rlds.config_name(info, run))
    if os.path.exists(final) and not overwrite:
      raise rlds.DatasetExistsError(f"{final} exists already (pass --overwrite to replace it).")
    stage = staging_dir(data_dir, info, run, dataset_name)
    wanted = settings(config, info.name, run, num_checkpoints, steps_per_checkpoint, seed)
    done = _read_progress(stage)
    if done and done["settings"] != wanted:
      raise ValueError(f"{stage} holds an agent run made with other settings ("
                       + _differences(done["settings"], wanted) + "); remove it or use the "
                       f"settings it was made with.")
  if os.path.exists(stage):  # An unfinished run (module docstring): played again from its start.
    if done and done.get("segments"):
      print(f"{info.name} run {run}: an unfinished run of {len(done['segments'])} of "
            f"{num_checkpoints} checkpoints is played again from its start (its data then equal "
            f"an uninterrupted run's)", flush=True)
    shutil.rmtree(stage)
  os.makedirs(stage, exist_ok=True)
  segments: list[Segment] = []

  # -- The agent: network, optimizer, update step, replay. ------------------------------------
  model = networks.build_q_network(config.model, 1)
  optimizer = learner.make_optimizer(config.optimizer)
  mesh = parallel.make_mesh(1)
  abstract = learner.abstract_train_state(model, optimizer)
  shardings = learner.state_shardings(mesh, abstract)
  update = learner.jit_update(learner.make_update_fn(
      model, optimizer, config.loss, games.legal_action_mask((info.name,)),
      config.target_update_period, config.batch_size), mesh, shardings)
  pool = data.FramePool(info, config.replay_frames, n_step=config.loss.n_step,
                        gamma=config.loss.gamma)
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(seed), shardings)
  total = num_checkpoints * steps_per_checkpoint
  updates, env_steps = 0, 0
  game_id = np.zeros(config.batch_size, np.int32)

  n = config.num_envs
  env_seeds, rng = _segment_seeds(seed, info, run, 0, n)
  batch_rng = np.random.default_rng([int(seed), zlib.crc32(info.name.encode()), int(run), 0, 7])
  specs = [envs.EnvSpec(info.name, s) for s in env_seeds]
  with envs.VectorAtariEnv(specs, max_episode_frames=config.max_episode_frames) as vec:
    observation = vec.reset()
    current = [dict(frames=[observation[i, ..., -1]], actions=[], rewards=[])
               for i in range(n)]
    since_update = 0
    for c in range(num_checkpoints):
      played, returns = _Episodes(), []
      budget = steps_per_checkpoint
      while budget > 0:
        epsilon = epsilon_at(config, env_steps, total)
        greedy = policy_lib.make_greedy_policy(
            model, state.params, loss_kind=config.loss.kind, head_games=(info.name,),
            games=(info.name,), v_min=config.loss.v_min, v_max=config.loss.v_max)
        actions = actors.epsilon_greedy(greedy, observation, epsilon, rng, info.num_actions)
        observation, reward, terminated, _, step_info = vec.step(actions)
        budget -= n
        run_ends = budget <= 0 and c == num_checkpoints - 1
        for i in range(n):
          ep = current[i]
          ep["actions"].append(int(actions[i]))
          ep["rewards"].append(float(reward[i]))
          ep["frames"].append(step_info["next_observation"][i, ..., -1])
          if step_info["episode_done"][i] or run_ends:
            # An episode belongs to the checkpoint in which it ends (as in a replay buffer
            # saved at each checkpoint); the run's last step closes the rest as truncated.
            ended = bool(terminated[i])
            played.add(ep["frames"], ep["actions"], ep["rewards"], ended)
            pool.add(rlds.make_episode(np.stack(ep["frames"]), ep["actions"] + [0],
                                       ep["rewards"] + [0.0], terminated=ended,
                                       checkpoint_id=c, episode_id=len(played.actions) - 1))
            if ended:
              returns.append(float(np.sum(ep["rewards"])))
            current[i] = dict(frames=[observation[i, ..., -1]], actions=[], rewards=[])
        env_steps += n
        since_update += n
        while since_update >= config.update_every:
          since_update -= config.update_every
          if pool.num_transitions < config.min_replay_transitions:
            continue
          state, _ = update(state, parallel.global_batch(
              _sample(pool, batch_rng, config.batch_size, game_id), mesh))
          updates += 1
        if progress is not None:
          progress(n, dict(checkpoint=c, eps=f"{epsilon:.3f}", updates=updates,
                           ret=f"{np.mean(returns[-10:]):.1f}" if returns else "-"))
      played.save(os.path.join(stage, f"segment_{c:02d}.npz"))
      segments.append(Segment(c, env_steps, updates, len(played.actions),
                              int(sum(played.terminated)),
                              float(np.mean(returns)) if returns else float("nan"),
                              epsilon))
      _write_progress(stage, wanted, segments)

  # -- The dataset, atomically, from the kept segments. ----------------------------------------
  with rlds.EpisodeWriter(data_dir, info, run, dataset_name=dataset_name,
                          overwrite=overwrite) as writer:
    for c in range(num_checkpoints):
      for episode in _load_episodes(os.path.join(stage, f"segment_{c:02d}.npz"), c):
        writer.write(episode)
  with open(os.path.join(final, "agent_returns.json"), "w") as f:
    json.dump(dict(settings=wanted, segments=[dataclasses.asdict(s) for s in segments]), f,
              indent=1)
  shutil.rmtree(stage, ignore_errors=True)
  return segments


def _sample(pool: data.FramePool, rng: np.random.Generator, batch_size: int, game_id):
  shape = (batch_size, 84, 84, pool.stack_size)
  obs, next_obs = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
  action, reward = np.empty(batch_size, np.int32), np.empty(batch_size, np.float32)
  discount = np.empty(batch_size, np.float32)
  pool.gather(rng.integers(0, pool.num_transitions, size=batch_size), obs, next_obs, action,
              reward, discount)
  return data.Batch(observation=obs, action=action, reward=reward, discount=discount,
                    next_observation=next_obs, game_id=game_id)


def _read_progress(stage: str) -> Optional[dict]:
  path = os.path.join(stage, PROGRESS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_progress(stage: str, wanted: dict, segments: list[Segment]) -> None:
  tmp = os.path.join(stage, PROGRESS_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(dict(settings=wanted, segments=[dataclasses.asdict(s) for s in segments]), f,
              indent=1)
  os.replace(tmp, os.path.join(stage, PROGRESS_FILE))


def _differences(saved: dict, wanted: dict) -> str:
  a, b = run_meta.flatten(saved), run_meta.flatten(wanted)
  return "; ".join(f"{k}: kept {a.get(k)!r} vs now {b.get(k)!r}"
                   for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def segment_table(game: str, run: int, segments: list[Segment]) -> str:
  """The per-checkpoint table of the agent's returns."""
  lines = [f"{'game':<16}{'run':>4}{'checkpoint':>11}{'env steps':>11}{'updates':>9}"
           f"{'episodes':>9}{'ended':>7}{'mean return':>13}{'epsilon':>9}"]
  for s in segments:
    lines.append(f"{game:<16}{run:>4}{s.checkpoint:>11}{s.env_steps:>11,}{s.updates:>9,}"
                 f"{s.episodes:>9}{s.terminated:>7}{s.mean_return:>13.2f}{s.epsilon:>9.3f}")
  return "\n".join(lines)


def progress_bar(total: int, desc: str):
  """tqdm bar over env steps; returns (bar, callback for run_agent's progress)."""
  bar = tqdm.tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stdout,
                  mininterval=1.0)

  def callback(n, postfix):
    bar.set_postfix(postfix, refresh=False)
    bar.update(n)
  return bar, callback


def make_agent_datasets(config, data_dir: str, game_names, runs=(1,), *, checkpoints_per_run: int,
                        steps_per_checkpoint: int, seed: int = 0,
                        dataset_name: Optional[str] = None, overwrite: bool = False,
                        skip_existing: bool = False) -> dict:
  """The job of `launch.make_dataset --source=agent`: one logged-agent game-run per (game, run),
  with a progress bar and the per-checkpoint table of returns. Returns {(game, run): segments}."""
  dataset_name = dataset_name or DATASET_NAME
  with errors.input_checks():
    names = games.canonical_names(game_names)
    runs = [int(r) for r in runs]
    if not runs or min(runs) < 1:
      raise ValueError(f"--runs must be positive run numbers, got {runs}.")
    for name in names:
      check(config, name, checkpoints_per_run, steps_per_checkpoint)
  out = {}
  for name in names:
    for run in runs:
      final = os.path.join(data_dir, dataset_name, rlds.config_name(games.get_game(name), run))
      if skip_existing and not overwrite and os.path.exists(final):
        print(f"keeping the existing dataset {final}", flush=True)
        continue
      per_segment = -(-steps_per_checkpoint // config.num_envs) * config.num_envs
      bar, callback = progress_bar(checkpoints_per_run * per_segment, f"{name} run {run}")
      try:
        segments = run_agent(config, data_dir, name, run, num_checkpoints=checkpoints_per_run,
                             steps_per_checkpoint=steps_per_checkpoint, seed=seed,
                             dataset_name=dataset_name, overwrite=overwrite,
                             progress=callback)
      finally:
        bar.close()
      print(segment_table(name, run, segments), flush=True)
      out[(name, run)] = segments
  return out
