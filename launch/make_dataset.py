r"""Makes an offline Atari dataset (RLDS episodes in TFDS folders, the rlu_atari format).

From the emulator, with a behaviour policy:

  python -m launch.make_dataset --source=ale --games=pong,breakout,freeway --runs=1 \
      --checkpoints_per_run=3 --steps_per_checkpoint=10000 --policy=random --seed=0 \
      --data_dir=data/atari

From DQN Replay Dataset files of one game-run (e.g. gs://atari-replay-datasets/dqn/Pong/1):

  python -m launch.make_dataset --source=dqn_replay --replay_dir=dqn/Pong/1 --game=pong --run=1 \
      --data_dir=data/atari

Output: `{data_dir}/{dataset_name}/{AleName}_run_{k}/{version}/`, one split per checkpoint,
readable by `scaled_ql.data.read_episodes` and `tfds.builder_from_directory`. Every input is
checked before the long work starts; each game-run appears atomically when it is complete, and an
existing one is never replaced without --overwrite. Prepared TFDS `rlu_atari*` folders need no
conversion: point the reader at them.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from absl import app, flags
from launch import common
import tqdm

from scaled_ql import games as games_lib
from scaled_ql.data import dqn_replay, generate, rlds

_SOURCE = flags.DEFINE_enum("source", "ale", ["ale", "dqn_replay"], "Where episodes come from.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output TFDS data_dir.", required=True)
_DATASET_NAME = flags.DEFINE_string(
    "dataset_name", None, f"Output dataset name (default: {rlds.DEFAULT_DATASET_NAME!r} for "
    f"--source=ale, {dqn_replay.DATASET_NAME!r} for --source=dqn_replay).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing game-run datasets.")
_SKIP_EXISTING = flags.DEFINE_bool(
    "skip_existing", False, "ale: keep existing game-run datasets and make only the missing ones "
    "(what `make demo` does when run again).")
# --source=ale
_GAMES = flags.DEFINE_list("games", ["pong"], "ale: games (snake_case or ALE names).")
_RUNS = flags.DEFINE_list("runs", ["1"], "ale: run numbers, e.g. 1,2,3 (each its own seed).")
_CHECKPOINTS_PER_RUN = flags.DEFINE_integer("checkpoints_per_run", 3,
                                            "ale: checkpoint ids 0..N-1 per run.")
_STEPS_PER_CHECKPOINT = flags.DEFINE_integer("steps_per_checkpoint", 10_000,
                                             "ale: environment steps per checkpoint.")
_POLICY = flags.DEFINE_enum(
    "policy", "random", ["random", "eps_greedy", "mixture"],
    "ale: uniform random; epsilon-greedy over --q_policy (epsilon from --epsilon_start to "
    "--epsilon_end over the checkpoints); or that plus whole random episodes "
    "(--random_episode_prob).")
_Q_POLICY = flags.DEFINE_string(
    "q_policy", None, "ale, eps_greedy/mixture: 'module:factory'; factory(game_names) returns "
    "policy(stacked_obs [N,84,84,4] uint8, game_index) -> actions [N].")
_EPSILON_START = flags.DEFINE_float("epsilon_start", 1.0, "ale: epsilon at checkpoint 0.")
_EPSILON_END = flags.DEFINE_float("epsilon_end", 0.01, "ale: epsilon at the last checkpoint.")
_RANDOM_EPISODE_PROB = flags.DEFINE_float("random_episode_prob", 0.5,
                                          "ale, mixture: chance an episode is played at random.")
_SEED = flags.DEFINE_integer("seed", 0, "ale: seed; a game-run's data depends on it only.")
_MAX_EPISODE_FRAMES = flags.DEFINE_integer("max_episode_frames", 108_000,
                                           "ale: emulator frames before an episode is truncated.")
# --source=dqn_replay
_REPLAY_DIR = flags.DEFINE_string("replay_dir", None, "dqn_replay: one game-run's folder.")
_GAME = flags.DEFINE_string("game", None, "dqn_replay: the game of --replay_dir.")
_RUN = flags.DEFINE_integer("run", 1, "dqn_replay: the run number to file it under.")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", None,
                                 "dqn_replay: checkpoint indices to convert (default: all).")


def _int_list(values, name: str) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f"--{name} must be integers, got {values}.") from e
  if len(set(out)) != len(out) or any(v < 0 for v in out):
    raise app.UsageError(f"--{name} must be distinct non-negative integers, got {values}.")
  return out


def _refuse_existing(data_dir: str, dataset_name: str, game_runs) -> None:
  if _OVERWRITE.value:
    return
  existing = [os.path.join(data_dir, dataset_name, rlds.config_name(g, r)) for g, r in game_runs]
  existing = [p for p in existing if os.path.exists(p)]
  if existing:
    raise rlds.DatasetExistsError(f"these datasets exist already (pass --overwrite to replace "
                                  f"them): {', '.join(existing)}")


def _load_q_policy(spec: str, game_names: list[str]) -> Callable:
  module_name, sep, factory_name = (spec or "").partition(":")
  if not sep or not module_name or not factory_name:
    raise app.UsageError(f"--policy={_POLICY.value} needs --q_policy=module:factory, got "
                         f"{spec!r}.")
  factory = getattr(importlib.import_module(module_name), factory_name)
  return factory(game_names)


def _print_summary(title: str, results) -> None:
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


def make_ale() -> None:
  try:
    game_list = games_lib.get_games(_GAMES.value)
  except ValueError as e:
    raise app.UsageError(f"--games: {e}") from e
  runs = _int_list(_RUNS.value, "runs")
  if not runs or min(runs) < 1:
    raise app.UsageError(f"--runs must be positive run numbers, got {_RUNS.value}.")
  for name, value in (("checkpoints_per_run", _CHECKPOINTS_PER_RUN.value),
                      ("steps_per_checkpoint", _STEPS_PER_CHECKPOINT.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be positive, got {value}.")
  dataset_name = _DATASET_NAME.value or rlds.DEFAULT_DATASET_NAME
  wanted = [(g, r) for g in game_list for r in runs]
  if _SKIP_EXISTING.value and not _OVERWRITE.value:
    exists = lambda g, r: os.path.exists(os.path.join(_DATA_DIR.value, dataset_name,
                                                      rlds.config_name(g, r)))
    for g, r in wanted:
      if exists(g, r):
        print(f"keeping the existing dataset {rlds.config_name(g, r)} in "
              f"{os.path.join(_DATA_DIR.value, dataset_name)}")
    wanted = [(g, r) for g, r in wanted if not exists(g, r)]
  _refuse_existing(_DATA_DIR.value, dataset_name, wanted)
  if _POLICY.value == "random":
    policy = generate.random_policy()
  else:
    q_policy = _load_q_policy(_Q_POLICY.value, [g.name for g in game_list])
    policy = generate.epsilon_greedy(
        q_policy, _EPSILON_START.value, _EPSILON_END.value,
        _RANDOM_EPISODE_PROB.value if _POLICY.value == "mixture" else 0.0)
  total = len(wanted) * _CHECKPOINTS_PER_RUN.value * _STEPS_PER_CHECKPOINT.value
  rlds.features()  # Imports TensorFlow now, so that the progress bar's first rate is honest.
  results = []
  with tqdm.tqdm(total=total, desc="emulator", unit="step", dynamic_ncols=True,
                 file=sys.stdout, mininterval=1.0) as bar:
    for game_index, game in enumerate(game_list):
      for run in runs:
        if (game, run) not in wanted:
          continue
        bar.set_description(f"{game.name} run {run}")
        splits = generate.generate_run(
            _DATA_DIR.value, game, run, num_checkpoints=_CHECKPOINTS_PER_RUN.value,
            steps_per_checkpoint=_STEPS_PER_CHECKPOINT.value, policy=policy, seed=_SEED.value,
            game_index=game_index, dataset_name=dataset_name, overwrite=_OVERWRITE.value,
            max_episode_frames=_MAX_EPISODE_FRAMES.value, progress=bar.update)
        results.append((game.name, run, splits))
  _print_summary(f"{dataset_name} in {os.path.join(_DATA_DIR.value, dataset_name)} "
                 f"(policy {_POLICY.value}, seed {_SEED.value})", results)


def make_dqn_replay() -> None:
  if not _REPLAY_DIR.value or not _GAME.value:
    raise app.UsageError("--source=dqn_replay needs --replay_dir and --game.")
  try:
    game = games_lib.get_game(_GAME.value)
  except ValueError as e:
    raise app.UsageError(f"--game: {e}") from e
  if _RUN.value < 1:
    raise app.UsageError(f"--run must be positive, got {_RUN.value}.")
  checkpoints = None if _CHECKPOINTS.value is None else _int_list(_CHECKPOINTS.value,
                                                                  "checkpoints")
  dataset_name = _DATASET_NAME.value or dqn_replay.DATASET_NAME
  _refuse_existing(_DATA_DIR.value, dataset_name, [(game, _RUN.value)])
  ckpts = dqn_replay.check_replay_dir(_REPLAY_DIR.value, game, checkpoints=checkpoints)
  print(f"{_REPLAY_DIR.value}: {len(ckpts)} checkpoint(s) checked, "
        f"{dqn_replay.total_rows(ckpts):,} rows.")
  with tqdm.tqdm(total=dqn_replay.total_rows(ckpts), desc=f"{game.name} run {_RUN.value}",
                 unit="row", dynamic_ncols=True, file=sys.stdout, mininterval=1.0) as bar:
    result = dqn_replay.convert_run(
        _REPLAY_DIR.value, _DATA_DIR.value, game, _RUN.value,
        checkpoints=[c.index for c in ckpts], dataset_name=dataset_name,
        overwrite=_OVERWRITE.value, progress=bar.update)
  _print_summary(f"{dataset_name} in {result.path}", [(game.name, _RUN.value, result.splits)])
  dropped = {c: n for c, n in result.rows_dropped.items() if n}
  if dropped:
    print(f"rows not converted (an episode whose start the circular buffer overwrote, or a lone "
          f"last row without a transition), by checkpoint: {dropped}")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if _SOURCE.value == "ale":
      make_ale()
    else:
      make_dqn_replay()
  except (rlds.DatasetError, rlds.DatasetExistsError, dqn_replay.ReplayFileError) as e:
    # Bad input, named in the message; nothing was written (outputs appear atomically).
    print(f"make_dataset: error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  common.run(main)
