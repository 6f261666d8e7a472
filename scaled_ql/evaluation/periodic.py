"""Evaluation during pre-training: a few episodes per game every `config.eval_every` steps.

`evaluate_during_training` plays the current parameters with the evaluation protocol (the same
rollouts as `launch.evaluate`, fewer episodes) and returns an `Evaluation`; `scalars` turns it
into TensorBoard scalars (eval/iqm, eval/median, eval/mean, eval/hns/<game>,
eval/return/<game>) and `append_jsonl` logs it to WORKDIR/eval.jsonl, where `launch.report`
draws the score curves from.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from scaled_ql.evaluation import policy as policy_lib
from scaled_ql.evaluation import results, rollout

EVAL_LOG = "eval.jsonl"
DEFAULT_REPS = 1000  # Bootstrap replications: the curves need the point estimates, mostly.


def evaluate_during_training(model, params: Any, games: Sequence[str], *, loss_kind: str,
                             episodes_per_game: int = 2, envs_per_game: int = 2,
                             epsilon: float = rollout.DEFAULT_EPSILON, seed: int = 0,
                             max_steps_per_episode: Optional[int] = None,
                             head_games: Optional[Sequence[str]] = None,
                             v_min: float = -10.0, v_max: float = 10.0,
                             reps: int = DEFAULT_REPS, mode: Optional[int] = None,
                             difficulty: Optional[int] = None) -> results.Evaluation:
  """Plays `params` on `games` (heads: `head_games`, default `games`) and scores it.

  `params` may be sharded over the devices of one process (jit consumes them where they are);
  in a multi-host job gather them first (every process must take part in the gather), e.g.
  `jax.experimental.multihost_utils.process_allgather(state.params)`, and evaluate on process 0.
  The same seed every time: differences between evaluations come from the parameters.
  mode / difficulty: an ALE game variant to play (online fine-tuning evaluates on its variant).
  """
  greedy = policy_lib.make_greedy_policy(model, params, loss_kind=loss_kind,
                                         head_games=head_games or games, games=games,
                                         v_min=v_min, v_max=v_max)
  played = rollout.run_episodes(greedy, games, episodes_per_game, epsilon=epsilon,
                                envs_per_game=envs_per_game, seed=seed,
                                max_steps_per_episode=max_steps_per_episode, mode=mode,
                                difficulty=difficulty)
  return results.from_rollouts(played, "agent", reps=reps, seed=seed)


def scalars(evaluation: results.Evaluation) -> dict[str, float]:
  """TensorBoard scalars of an evaluation (aggregates only over games with reference scores)."""
  out = {}
  if evaluation.aggregates is not None:
    for metric in ("iqm", "median", "mean"):
      out[f"eval/{metric}"] = getattr(evaluation.aggregates, metric).value
  for g in evaluation.games:
    out[f"eval/return/{g.game}"] = g.mean_return
    if g.normalized is not None:
      out[f"eval/hns/{g.game}"] = g.normalized
  return out


def append_jsonl(path: str, step: int, evaluation: results.Evaluation) -> None:
  """Appends {"step": step, **scalars, "seconds": ...} to a JSON-lines log (e.g. eval.jsonl)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  record = dict(step=int(step), **scalars(evaluation),
                seconds=evaluation.settings.get("seconds"),
                episodes_per_game=evaluation.settings.get("episodes_per_game"),
                max_steps_per_episode=evaluation.settings.get("max_steps_per_episode"))
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
