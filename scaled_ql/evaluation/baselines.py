"""Baselines a pre-trained agent is compared with: the random policy and the behaviour data.

- random: the evaluator itself with a uniformly random policy over each game's legal actions
  (same envs, seeds, sticky actions and frame cap as the agent), see `random_policy`;
- behaviour data: the mean episode return of the dataset's episodes per game (the policy that
  collected the data, e.g. the DQN replay agent), read with `scaled_ql.data.read_episodes`.
  Dataset episodes are whatever the files hold: an episode cut at a checkpoint boundary (no game
  over at its end) counts with its partial return; `GameScore.truncated` counts those.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from scaled_ql import games as games_lib
from scaled_ql.evaluation import results, rollout
from scaled_ql.evaluation import scores as scores_lib

RANDOM = "random"
BEHAVIOUR = "behaviour data"


def random_policy(games: Sequence[str], episodes_per_game: int, *, reps: int, seed: int = 0,
                  **rollout_kwargs) -> results.Evaluation:
  """The uniformly random policy, played by `rollout.run_episodes` (kwargs go there)."""
  played = rollout.run_episodes(None, games, episodes_per_game, seed=seed, policy_name=RANDOM,
                                **rollout_kwargs)
  return results.from_rollouts(played, RANDOM, reps=reps, seed=seed)


def behaviour_data(data_dir: str, games: Sequence[str], *, runs: Optional[Iterable[int]] = None,
                   checkpoints: Optional[Iterable[int]] = None,
                   max_episodes: Optional[int] = None, reps: int, seed: int = 0,
                   on_episode: Optional[Callable[[], None]] = None) -> results.Evaluation:
  """Per-game mean return of the dataset's episodes (the first `max_episodes` per game).

  """
  from scaled_ql import data  # pylint: disable=g-import-not-at-top (TensorFlow: only if asked)
  runs = list(runs) if runs else None
  checkpoints = list(checkpoints) if checkpoints else None
  returns, scores, capped = {}, [], []
  for game in games:
    name = games_lib.get_game(game).name
    rs, lengths, truncated = [], [], 0
    for episode in data.read_episodes(data_dir, name, runs=runs, checkpoints=checkpoints):
      rs.append(float(episode["episode_return"]))
      lengths.append(len(episode["action"]) - 1)  # The last step holds the final frame only.
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
                  max_episodes=max_episodes, capped_games=capped)
  return results.Evaluation(BEHAVIOUR, scores, aggregates, settings)
