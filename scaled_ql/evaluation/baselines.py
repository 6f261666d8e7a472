"""Baselines a pre-trained agent is compared with: the random policy, the best constant action
and the behaviour data.

- random: the evaluator itself with a uniformly random policy over each game's legal actions
  (same envs, seeds, sticky actions and frame cap as the agent), see `random_policy`;
- best constant action: every legal action held for whole episodes under the same protocol
  (epsilon, sticky actions, cap, env seeds), the best per game reported (`constant_action`).
  In Atari this, not the random policy, is the floor: several games reward holding one button,
  and a network that has learned nothing state-dependent plays one action. Each game's result
  is cached per protocol, so it is computed once. The best of several noisy means is biased
  upward, which makes "beats the best constant action" a conservative claim;
- behaviour data: the mean episode return of the dataset's episodes per game (the policy that
  collected the data, e.g. the DQN replay agent), read with `scaled_ql.data.read_episodes`.
  Dataset episodes are whatever the files hold: an episode cut at a checkpoint boundary (no game
  over at its end) counts with its partial return; `GameScore.truncated` counts those. With
  `max_steps_per_episode`, each episode's return is that of its first N steps (episodes longer
  than N count as truncated), the same cap as the agent's and the random policy's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from scaled_ql import envs
from scaled_ql import games as games_lib
from scaled_ql.evaluation import policy, results, rollout
from scaled_ql.evaluation import scores as scores_lib

RANDOM = "random"
BEHAVIOUR = "behaviour data"
CONSTANT = "best constant action"
CACHE_FORMAT = "scaled_ql.constant_action/1"


def random_policy(games: Sequence[str], episodes_per_game: int, *, reps: int, seed: int = 0,
                  **rollout_kwargs) -> results.Evaluation:
  """The uniformly random policy, played by `rollout.run_episodes` (kwargs go there)."""
  played = rollout.run_episodes(None, games, episodes_per_game, seed=seed, policy_name=RANDOM,
                                **rollout_kwargs)
  return results.from_rollouts(played, RANDOM, reps=reps, seed=seed)


def constant_action(games: Sequence[str], episodes_per_game: int, *, reps: int,
                    cache_dir: Optional[str] = None, seed: int = 0,
                    on_episodes: Optional[Callable[[int], None]] = None,
                    **rollout_kwargs) -> results.Evaluation:
  """The best constant action per game (module docstring): every legal action slot played for
  `episodes_per_game` episodes by `rollout.run_episodes` (kwargs go there), the best mean
  return's episodes kept. `cache_dir`: where each game's result is kept, per protocol."""
  names = [games_lib.get_game(g).name for g in games]
  protocol = dict(episodes_per_game=int(episodes_per_game), seed=int(seed), **rollout_kwargs)
  protocol.pop("num_workers", None)  # How the envs are stepped, not what they play.
  per_game, missing = {}, []
  for game in names:
    cached = _read_cache(cache_dir, game, protocol)
    if cached is None:
      missing.append(game)
    else:
      per_game[game] = cached
      if on_episodes is not None:
        on_episodes(len(cached["episodes"]) * games_lib.get_game(game).num_actions)
  for slot in range(max((games_lib.get_game(g).num_actions for g in missing), default=0)):
    playing = [g for g in missing if slot < games_lib.get_game(g).num_actions]
    played = rollout.run_episodes(policy.fixed_action_policy(slot), playing, episodes_per_game,
                                  seed=seed, policy_name="constant", on_episodes=on_episodes,
                                  **rollout_kwargs)
    for game in playing:
      eps = played.of(game)
      entry = per_game.setdefault(game, dict(means=[], episodes=[], settings={}))
      mean = float(np.mean([e.episode_return for e in eps]))
      if not entry["means"] or mean > max(entry["means"]):  # The first best slot wins a tie.
        entry["episodes"] = [dataclasses.asdict(e) for e in eps]
        entry["settings"] = dataclasses.asdict(played.settings)
      entry["means"].append(mean)
  for game in missing:
    _write_cache(cache_dir, game, protocol, per_game[game])
  scores, returns, episodes, best = [], {}, [], {}
  for game in names:
    entry = per_game[game]
    slot = int(np.argmax(entry["means"]))
    eps = [rollout.Episode(**e) for e in entry["episodes"]]
    returns[game] = [e.episode_return for e in eps]
    episodes += eps
    scores.append(scores_lib.game_score(game, returns[game], [e.length for e in eps],
                                        sum(e.truncated for e in eps),
                                        [0] * slot + [1]))  # A constant policy: share 1.0.
    best[game] = dict(slot=slot, action=games_lib.action_name(game, slot),
                      mean_returns={games_lib.action_name(game, k): round(m, 3)
                                    for k, m in enumerate(entry["means"])})
  aggregates = scores_lib.aggregate(returns, reps=reps, seed=seed)
  settings = dict(per_game[names[0]]["settings"], policy="constant", best=best)
  return results.Evaluation(CONSTANT, scores, aggregates, settings, episodes)


def _cache_path(cache_dir: str, game: str, protocol: dict) -> str:
  key = dict(protocol, game=game, sticky_action_prob=envs.DEFAULT_STICKY_ACTION_PROB,
             frame_skip=envs.DEFAULT_FRAME_SKIP, ale=envs.ale_version())
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"{game}-{digest}.json")


def _read_cache(cache_dir: Optional[str], game: str, protocol: dict) -> Optional[dict]:
  if not cache_dir:
    return None
  path = _cache_path(cache_dir, game, protocol)
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None  # Absent or damaged: computed again (and rewritten).
  return content.get("result") if content.get("format") == CACHE_FORMAT else None


def _write_cache(cache_dir: Optional[str], game: str, protocol: dict, result: dict) -> None:
  if not cache_dir:
    return
  os.makedirs(cache_dir, exist_ok=True)
  results.atomic_write(_cache_path(cache_dir, game, protocol), json.dumps(
      dict(format=CACHE_FORMAT, game=game, protocol=protocol, result=result)))


def behaviour_data(data_dir: str, games: Sequence[str], *, runs: Optional[Iterable[int]] = None,
                   checkpoints: Optional[Iterable[int]] = None,
                   max_episodes: Optional[int] = None, reps: int, seed: int = 0,
                   max_steps_per_episode: Optional[int] = None,
                   on_episode: Optional[Callable[[], None]] = None) -> results.Evaluation:
  """Per-game mean return of the dataset's episodes (the first `max_episodes` per game), each
  cut at `max_steps_per_episode` steps where given (module docstring)."""
  from scaled_ql import data  # pylint: disable=g-import-not-at-top (TensorFlow: only if asked)
  runs = list(runs) if runs else None
  checkpoints = list(checkpoints) if checkpoints else None
  returns, scores, capped = {}, [], []
  for game in games:
    name = games_lib.get_game(game).name
    rs, lengths, truncated = [], [], 0
    for episode in data.read_episodes(data_dir, name, runs=runs, checkpoints=checkpoints):
      steps = len(episode["action"]) - 1  # The last step holds the final frame only.
      if max_steps_per_episode and steps > max_steps_per_episode:
        rs.append(float(np.sum(episode["reward"][:max_steps_per_episode], dtype=np.float64)))
        lengths.append(int(max_steps_per_episode))
        truncated += 1
      else:
        rs.append(float(episode["episode_return"]))
        lengths.append(steps)
        truncated += int(not episode["is_terminal"][-1])
      if on_episode is not None:
        on_episode()
      if max_episodes and len(rs) >= max_episodes:
        capped.append(name)
        break
    if not rs:
      raise ValueError(f"{data_dir} holds no {name} episodes for runs={runs}, "
                       f"checkpoints={checkpoints}.")
    returns[name] = rs
    scores.append(scores_lib.game_score(name, rs, lengths, truncated))
  aggregates = scores_lib.aggregate(returns, reps=reps, seed=seed)
  settings = dict(policy=BEHAVIOUR, data_dir=data_dir, runs=runs, checkpoints=checkpoints,
                  max_episodes=max_episodes, capped_games=capped,
                  max_steps_per_episode=max_steps_per_episode)
  if max_steps_per_episode:
    settings["max_episode_frames"] = min(envs.DEFAULT_MAX_EPISODE_FRAMES,
                                         int(max_steps_per_episode) * envs.DEFAULT_FRAME_SKIP)
  return results.Evaluation(BEHAVIOUR, scores, aggregates, settings)
