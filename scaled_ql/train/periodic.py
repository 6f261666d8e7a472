"""Evaluation during training: the config checks and one evaluation of the current parameters,
logged to TensorBoard and WORKDIR/eval.jsonl (see scaled_ql.evaluation.periodic)."""
from __future__ import annotations

import os

import jax

from scaled_ql import evaluation


def check_eval_config(config) -> None:
  """Bad `config.eval_every` / `config.eval.*` values fail at start-up, naming the field."""
  if config.eval_every < 0:
    raise ValueError(f"config.eval_every must be >= 0 (0 = never), got {config.eval_every}.")
  if config.eval_every:
    e = config.eval
    try:
      evaluation.check_budget(e.episodes_per_game, e.envs_per_game, e.epsilon,
                              e.max_steps_per_episode or None)
    except ValueError as err:
      raise ValueError(f"config.eval: {err}") from err


def game_variant(config) -> dict:
  """{"mode", "difficulty"} an online fine-tuning run plays (None: the ROM's default); both
  None for offline runs."""
  if "online" not in config or config.get("finetune", {}).get("mode") != "online":
    return dict(mode=None, difficulty=None)
  return {k: (None if config.online[k] == -1 else config.online[k]) for k in ("mode", "difficulty")}


def evaluate(config, model, params, names, step: int, workdir: str, writer) -> str:
  """Plays the current parameters (config.eval) and logs the scores to TensorBoard and
  eval.jsonl. Returns a one-line summary on process 0, '' elsewhere."""
  if jax.process_count() > 1:  # Every process takes part in the gather; process 0 plays.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params)
  if jax.process_index() != 0:
    return ""
  e = config.eval
  result = evaluation.evaluate_during_training(
      model, params, names, loss_kind=config.loss.kind, episodes_per_game=e.episodes_per_game,
      envs_per_game=e.envs_per_game, epsilon=e.epsilon, seed=e.seed,
      max_steps_per_episode=e.max_steps_per_episode or None, v_min=config.loss.v_min,
      v_max=config.loss.v_max, **game_variant(config))
  writer.write_scalars(step, evaluation.scalars(result))
  evaluation.append_jsonl(os.path.join(workdir, evaluation.EVAL_LOG), step, result)
  iqm = (f"IQM {result.aggregates.iqm.value:.3f}" if result.aggregates
         else "no game with reference scores")
  return (f"eval at step {step}: {iqm}; returns "
          + ", ".join(f"{g.game} {g.mean_return:.1f}" for g in result.games))
