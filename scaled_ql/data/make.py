"""The dataset jobs (`launch.make_dataset`): emulator datasets played by a behaviour policy, and
DQN Replay Dataset conversion, with checks first, a progress bar and a summary table.

Every input is checked before the long work starts (bad input raises errors.InputError naming
the flag); each game-run appears atomically when it is complete, and an existing one is never
replaced without `overwrite`. Argument names are `launch.make_dataset`'s flags.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Optional, Sequence

import tqdm

from scaled_ql import errors
from scaled_ql import games as games_lib
from scaled_ql.data import dqn_replay, generate, rlds

POLICIES = ("random", "eps_greedy", "mixture")


def _int_list(values, name: str) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError as e:
    raise errors.InputError(f"--{name} must be integers, got {list(values)}.") from e
  if len(set(out)) != len(out) or any(v < 0 for v in out):
    raise errors.InputError(f"--{name} must be distinct non-negative integers, got "
                            f"{list(values)}.")
  return out


def _refuse_existing(data_dir: str, dataset_name: str, game_runs, overwrite: bool) -> None:
  if overwrite:
    return
  existing = [os.path.join(data_dir, dataset_name, rlds.config_name(g, r)) for g, r in game_runs]
  existing = [p for p in existing if os.path.exists(p)]
  if existing:
    raise errors.InputError(f"these datasets exist already (pass --overwrite to replace "
                            f"them): {', '.join(existing)}")


def load_q_policy(spec: str, game_names: list[str]) -> Callable:
  """'module:factory' -> factory(game_names), a policy(stacked_obs, game_index) -> actions."""
  module_name, sep, factory_name = (spec or "").partition(":")
  if not sep or not module_name or not factory_name:
    raise errors.InputError(f"--policy=eps_greedy/mixture needs --q_policy=module:factory, got "
                            f"{spec!r}.")
  factory = getattr(importlib.import_module(module_name), factory_name)
  return factory(game_names)


def print_summary(title: str, results) -> None:
  print(f"\n== {title}")
  print(f"{'game':<16}{'run':>4}{'checkpoint':>12}{'episodes':>10}{'frames':>10}"
        f"{'terminated':>12}{'mean return':>13}")
  total_episodes = total_frames = 0
  for game, run, splits in results:
    for s in splits:
      print(f"{game:<16}{run:>4}{s.split.removeprefix('checkpoint_'):>12}{s.episodes:>10}"
            f"{s.steps:>10}{s.terminated:>12}{s.mean_return:>13.2f}")
      total_episodes += s.episodes
      total_frames += s.steps
  print(f"total: {total_episodes} episodes, {total_frames} frames.")


def _bar(total: int, desc: str, unit: str):
  return tqdm.tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stdout,
                   mininterval=1.0)


def make_ale(data_dir: str, games: Sequence[str], *, runs: Sequence = (1,),
             checkpoints_per_run: int = 3, steps_per_checkpoint: int = 10_000,
             policy: str = "random", q_policy: Optional[str] = None,
             epsilon_start: float = 1.0, epsilon_end: float = 0.01,
             random_episode_prob: float = 0.5, seed: int = 0,
             max_episode_frames: int = 108_000, dataset_name: Optional[str] = None,
             overwrite: bool = False, skip_existing: bool = False) -> list:
  """Emulator datasets of `games` x `runs`; returns [(game, run, splits)] of those made."""
  with errors.input_checks():
    try:
      game_list = games_lib.get_games(games)
    except ValueError as e:
      raise errors.InputError(f"--games: {e}") from e
    runs = _int_list(runs, "runs")
    if not runs or min(runs) < 1:
      raise errors.InputError(f"--runs must be positive run numbers, got {runs}.")
    for name, value in (("checkpoints_per_run", checkpoints_per_run),
                        ("steps_per_checkpoint", steps_per_checkpoint)):
      if value < 1:
        raise errors.InputError(f"--{name} must be positive, got {value}.")
    if policy not in POLICIES:
      raise errors.InputError(f"--policy={policy!r}: choose one of {POLICIES}.")
    dataset_name = dataset_name or rlds.DEFAULT_DATASET_NAME
    wanted = [(g, r) for g in game_list for r in runs]
    if skip_existing and not overwrite:
      exists = lambda g, r: os.path.exists(os.path.join(data_dir, dataset_name,
                                                        rlds.config_name(g, r)))
      for g, r in wanted:
        if exists(g, r):
          print(f"keeping the existing dataset {rlds.config_name(g, r)} in "
                f"{os.path.join(data_dir, dataset_name)}")
      wanted = [(g, r) for g, r in wanted if not exists(g, r)]
    _refuse_existing(data_dir, dataset_name, wanted, overwrite)
    if policy == "random":
      behaviour = generate.random_policy()
    else:
      behaviour = generate.epsilon_greedy(
          load_q_policy(q_policy, [g.name for g in game_list]), epsilon_start, epsilon_end,
          random_episode_prob if policy == "mixture" else 0.0)
  total = len(wanted) * checkpoints_per_run * steps_per_checkpoint
  rlds.features()  # Imports TensorFlow now, so that the progress bar's first rate is honest.
  results = []
  with _bar(total, "emulator", "step") as bar, errors.input_checks(rlds.DatasetError,
                                                                   rlds.DatasetExistsError):
    for game_index, game in enumerate(game_list):
      for run in runs:
        if (game, run) not in wanted:
          continue
        bar.set_description(f"{game.name} run {run}")
        splits = generate.generate_run(
            data_dir, game, run, num_checkpoints=checkpoints_per_run,
            steps_per_checkpoint=steps_per_checkpoint, policy=behaviour, seed=seed,
            game_index=game_index, dataset_name=dataset_name, overwrite=overwrite,
            max_episode_frames=max_episode_frames, progress=bar.update)
        results.append((game.name, run, splits))
  print_summary(f"{dataset_name} in {os.path.join(data_dir, dataset_name)} "
                f"(policy {policy}, seed {seed})", results)
  return results


def make_dqn_replay(data_dir: str, replay_dir: str, game: str, *, run: int = 1,
                    checkpoints: Optional[Sequence] = None, dataset_name: Optional[str] = None,
                    overwrite: bool = False):
  """One game-run of DQN Replay Dataset files converted; returns the conversion result."""
  if not replay_dir or not game:
    raise errors.InputError("--source=dqn_replay needs --replay_dir and --game.")
  with errors.input_checks(dqn_replay.ReplayFileError, rlds.DatasetError,
                           rlds.DatasetExistsError):
    try:
      info = games_lib.get_game(game)
    except ValueError as e:
      raise errors.InputError(f"--game: {e}") from e
    if run < 1:
      raise errors.InputError(f"--run must be positive, got {run}.")
    checkpoints = None if checkpoints is None else _int_list(checkpoints, "checkpoints")
    dataset_name = dataset_name or dqn_replay.DATASET_NAME
    _refuse_existing(data_dir, dataset_name, [(info, run)], overwrite)
    ckpts = dqn_replay.check_replay_dir(replay_dir, info, checkpoints=checkpoints)
    print(f"{replay_dir}: {len(ckpts)} checkpoint(s) checked, "
          f"{dqn_replay.total_rows(ckpts):,} rows.")
    with _bar(dqn_replay.total_rows(ckpts), f"{info.name} run {run}", "row") as bar:
      result = dqn_replay.convert_run(
          replay_dir, data_dir, info, run, checkpoints=[c.index for c in ckpts],
          dataset_name=dataset_name, overwrite=overwrite, progress=bar.update)
  print_summary(f"{dataset_name} in {result.path}", [(info.name, run, result.splits)])
  dropped = {c: n for c, n in result.rows_dropped.items() if n}
  if dropped:
    print(f"rows not converted (an episode whose start the circular buffer overwrote, or a lone "
          f"last row without a transition), by checkpoint: {dropped}")
  return result
