r"""Evaluates a pre-trained multi-game Q-network in the emulator; prints and saves its scores.

  python -m launch.evaluate --checkpoint=runs/demo --episodes=10
  python -m launch.evaluate --checkpoint=runs/demo/checkpoints/2000 --games=pong,freeway \
      --episodes=30 --baselines=random,behaviour --out=runs/demo/eval_step2000

--checkpoint is a pre-training workdir (its newest checkpoint), its checkpoints/ directory, or
one step directory. The architecture, game list and loss come from the checkpoint itself (no
config file). Protocol: sticky actions 0.25, frame skip 4, 108,000-frame cap, epsilon 0.001,
4-frame stacks with zero padding; --max_steps_per_episode shortens the cap for CPU budgets (the
output then says how many episodes it cut). Results go to --out (default WORKDIR/eval):
results.json, per_game.csv, aggregates.csv, episodes.csv (see scaled_ql.evaluation.results);
`python -m launch.report --runs=WORKDIR,...` turns several of them into a report.

Phases: checks (everything that can be wrong fails here, before any rollout) -> the agent's
rollouts -> baselines -> tables and files.
"""
from __future__ import annotations

import os

from absl import flags

from launch import common
from scaled_ql import data as data_lib
from scaled_ql import envs, evaluation
from scaled_ql import games as games_lib

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Pre-training workdir, its checkpoints/ "
                                  "directory, or one step directory.")
_GAMES = flags.DEFINE_list("games", [], "Games to play (default: all the checkpoint's games).")
_EPISODES = flags.DEFINE_integer("episodes", 10, "Episodes per game.")
_EPSILON = flags.DEFINE_float("epsilon", evaluation.DEFAULT_EPSILON,
                              "Probability of a random legal action per step.")
_ENVS = flags.DEFINE_integer("envs_per_game", 4, "Emulators per game stepped together (at most "
                             "--episodes).")
_SEED = flags.DEFINE_integer("seed", 0, "Evaluation seed (emulators and exploration).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")
_MAX_STEPS = flags.DEFINE_integer("max_steps_per_episode", 0, "Cut episodes after this many "
                                  "agent steps (CPU budgets); 0 = the protocol's 27,000.")
_BASELINES = flags.DEFINE_list("baselines", [], "Also score: random (uniform policy, same "
                               "protocol) and/or behaviour (the dataset's episode returns).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset of the behaviour baseline (default: "
                                "the workdir config's data.data_dir).")
_BEHAVIOUR_MAX = flags.DEFINE_integer("behaviour_max_episodes", 1000,
                                      "Dataset episodes read per game for the behaviour baseline.")
_REPS = flags.DEFINE_integer("bootstrap_reps", evaluation.scores.DEFAULT_BOOTSTRAP_REPS,
                             "Stratified-bootstrap replications of the aggregate CIs.")
_WORKERS = flags.DEFINE_integer("num_workers", 0, "Emulator worker processes (0: in process).")
_MODE = flags.DEFINE_integer("mode", None, "ALE game mode to play (default: the ROM's, or the "
                             "variant an online fine-tuning run trained on).")
_DIFFICULTY = flags.DEFINE_integer("difficulty", None, "ALE difficulty to play (default as "
                                   "--mode).")

BASELINE_KINDS = ("random", "behaviour")


class InputError(ValueError):
  """Bad input found before any rollout; printed as one line, no traceback."""


def check_inputs() -> tuple[evaluation.EvalCheckpoint, tuple[str, ...], dict, dict]:
  """Every check that can fail, cheapest first: (checkpoint, games, baseline options, game
  variant {"mode", "difficulty"})."""
  if not _CHECKPOINT.value:
    raise InputError("--checkpoint is required: a pre-training workdir, its checkpoints/ "
                     "directory or a step directory.")
  max_steps = _MAX_STEPS.value or None
  try:
    evaluation.check_budget(_EPISODES.value, _ENVS.value, _EPSILON.value, max_steps)
    if _MAX_STEPS.value < 0:
      raise ValueError(f"--max_steps_per_episode must be >= 0, got {_MAX_STEPS.value}.")
    if _REPS.value < 1:
      raise ValueError(f"--bootstrap_reps must be positive, got {_REPS.value}.")
    requested = tuple(g.name for g in games_lib.get_games(_GAMES.value)) if _GAMES.value else ()
  except ValueError as e:
    raise InputError(str(e).replace("episodes per game", "episodes per game (--episodes)")
                     .replace("envs per game", "envs per game (--envs_per_game)")) from e
  unknown = [b for b in _BASELINES.value if b not in BASELINE_KINDS]
  if unknown:
    raise InputError(f"--baselines: unknown {unknown}; choose from {list(BASELINE_KINDS)}.")
  try:
    checkpoint = evaluation.load(_CHECKPOINT.value)
  except evaluation.CheckpointError as e:
    raise InputError(str(e)) from e
  games = requested or checkpoint.games
  missing = [g for g in games if g not in checkpoint.games]
  if missing:
    raise InputError(f"--games: {missing} not in the checkpoint's game list "
                     f"{list(checkpoint.games)} ({checkpoint.checkpoint_dir}): the network has "
                     f"no head for them.")
  options = {}
  if "behaviour" in _BASELINES.value:
    data_dir = _DATA_DIR.value or checkpoint.config.get("data.data_dir")
    if not data_dir:
      raise InputError("--baselines=behaviour needs --data_dir (the checkpoint has no workdir "
                       "config.json naming its dataset).")
    # The training data's runs and checkpoints, unless another dataset is named.
    runs, span = None, None
    if _DATA_DIR.value is None:
      runs = checkpoint.config.get("data.runs") or None
      span = checkpoint.config.get("data.checkpoint_range") or None
    for game in games:  # Missing data fails now, not after the agent's rollouts.
      try:
        data_lib.find_sources(data_dir, game, runs=runs)
      except (ValueError, OSError) as e:
        raise InputError(f"--baselines=behaviour: {e}") from e
    options = dict(data_dir=data_dir, runs=runs,
                   checkpoints=list(range(span[0], span[1] + 1)) if span else None)
  variant = {}
  for name, flag in (("mode", _MODE), ("difficulty", _DIFFICULTY)):
    value = flag.value
    if value is None and checkpoint.config.get("finetune.mode") == "online":
      value = checkpoint.config.get(f"online.{name}", -1)  # What the run trained on.
      value = None if value == -1 else value
    variant[name] = value
  for game in games:
    modes, difficulties = envs.available_variants(game)
    if variant["mode"] is not None and variant["mode"] not in modes:
      raise InputError(f"--mode={variant['mode']}: {game} has no such mode; its ROM offers "
                       f"modes {list(modes)}.")
    if variant["difficulty"] is not None and variant["difficulty"] not in difficulties:
      raise InputError(f"--difficulty={variant['difficulty']}: {game} has no such difficulty; "
                       f"its ROM offers difficulties {list(difficulties)}.")
  return checkpoint, games, options, variant


def main(argv):
  del argv
  # -- Checks. ---------------------------------------------------------------------------
  with common.input_errors():  # InputError is a ValueError.
    checkpoint, games, behaviour, variant = check_inputs()
  out = _OUT.value or os.path.join(checkpoint.workdir or os.path.dirname(
      checkpoint.checkpoint_dir), "eval")
  max_steps = _MAX_STEPS.value or None
  protocol = dict(epsilon=_EPSILON.value, envs_per_game=_ENVS.value, seed=_SEED.value,
                  max_steps_per_episode=max_steps, num_workers=_WORKERS.value, **variant)
  print(f"evaluating {checkpoint.checkpoint_dir} step {checkpoint.step} ({checkpoint.loss_kind}, "
        f"{len(checkpoint.games)} heads) on {len(games)} games x {_EPISODES.value} episodes; "
        f"epsilon {_EPSILON.value}, sticky actions 0.25, "
        + (f"episodes cut at {max_steps} steps" if max_steps else "108,000-frame cap")
        + f", seed {_SEED.value}"
        + "".join(f", {k} {v}" for k, v in variant.items() if v is not None), flush=True)

  # -- The agent. ------------------------------------------------------------------------
  greedy = evaluation.make_greedy_policy(
      checkpoint.model, checkpoint.params, loss_kind=checkpoint.loss_kind,
      head_games=checkpoint.games, games=games, v_min=checkpoint.v_min, v_max=checkpoint.v_max)
  agent = _play("agent", lambda bar: evaluation.results.from_rollouts(evaluation.run_episodes(
      greedy, games, _EPISODES.value, on_episodes=bar.update, **protocol), "agent",
      reps=_REPS.value, seed=_SEED.value), len(games) * _EPISODES.value)

  # -- Baselines. ------------------------------------------------------------------------
  baselines = []
  if "random" in _BASELINES.value:
    baselines.append(_play("random", lambda bar: evaluation.random_policy(
        games, _EPISODES.value, reps=_REPS.value, on_episodes=bar.update, **protocol),
        len(games) * _EPISODES.value))
  if behaviour:
    baselines.append(_play("behaviour data", lambda bar: evaluation.behaviour_data(
        games=games, max_episodes=_BEHAVIOUR_MAX.value, reps=_REPS.value, seed=_SEED.value,
        on_episode=lambda: bar.update(1), **behaviour), None, unit="episode read"))

  # -- Tables and files. -----------------------------------------------------------------
  everything = [agent, *baselines]
  print("\n" + evaluation.game_table(agent))
  if baselines:
    print("\n" + evaluation.comparison_table(everything))
  print("\n" + evaluation.aggregate_table(everything))
  for note in evaluation.notes(everything):
    print(f"- {note}")
  info = dict(path=checkpoint.checkpoint_dir, step=checkpoint.step, workdir=checkpoint.workdir,
              games=list(checkpoint.games), loss_kind=checkpoint.loss_kind)
  paths = evaluation.write(out, agent, baselines, checkpoint=info)
  print(f"\nwrote {', '.join(paths.values())}", flush=True)


def _play(label: str, fn, total, unit: str = "episode"):
  bar = common.progress(total, desc=label, unit=unit)
  try:
    return fn(bar)
  finally:
    bar.close()


if __name__ == "__main__":
  common.run(main)
