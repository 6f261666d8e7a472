"""The evaluation job (`launch.evaluate`): a checkpoint's agent in the emulator, baselines
beside it, tables printed and result files written.

Phases: checks (everything that can be wrong raises `errors.InputError` here, before any
rollout) -> the agent's rollouts -> baselines -> tables and files. `Request` fields are
`launch.evaluate`'s flags, and messages name them as flags.
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Optional

from scaled_ql import data as data_lib
from scaled_ql import envs, errors
from scaled_ql import games as games_lib
from scaled_ql.evaluation import baselines as baselines_lib
from scaled_ql.evaluation import policy, restore, results, rollout, scores, tables

BASELINE_KINDS = ("random", "constant", "behaviour")


@dataclasses.dataclass
class Request:
  """What to evaluate and how (see `launch.evaluate --help`)."""
  checkpoint: str
  games: tuple[str, ...] = ()  # default: all the checkpoint's games.
  episodes: int = 10
  epsilon: float = rollout.DEFAULT_EPSILON
  envs_per_game: int = 4
  seed: int = 0
  out: Optional[str] = None  # default: WORKDIR/eval.
  max_steps_per_episode: int = 0  # 0: the protocol's 27,000 agent steps.
  baselines: tuple[str, ...] = ()
  data_dir: Optional[str] = None  # behaviour baseline's dataset (default: the run's).
  behaviour_max_episodes: int = 1000
  bootstrap_reps: int = scores.DEFAULT_BOOTSTRAP_REPS
  num_workers: int = 0
  mode: Optional[int] = None
  difficulty: Optional[int] = None
  baseline_cache: Optional[str] = None  # the constant baseline's cache (None: none).


def default_baseline_cache() -> str:
  """$XDG_CACHE_HOME/scaled_ql/baselines (~/.cache/...): the constant baseline's results per
  game and protocol, shared by every evaluation on this machine."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "scaled_ql", "baselines")


class Checked(NamedTuple):
  checkpoint: restore.EvalCheckpoint
  games: tuple[str, ...]
  behaviour: dict  # read options of the behaviour baseline ({} when not asked for).
  variant: dict  # {"mode", "difficulty"}
  out: str


def check(r: Request) -> Checked:
  """Every check that can fail, cheapest first; raises errors.InputError naming the flag."""
  if not r.checkpoint:
    raise errors.InputError("--checkpoint is required: a pre-training workdir, its checkpoints/ "
                            "directory or a step directory.")
  try:
    rollout.check_budget(r.episodes, r.envs_per_game, r.epsilon, r.max_steps_per_episode or None)
    if r.max_steps_per_episode < 0:
      raise ValueError(f"--max_steps_per_episode must be >= 0, got {r.max_steps_per_episode}.")
    if r.bootstrap_reps < 1:
      raise ValueError(f"--bootstrap_reps must be positive, got {r.bootstrap_reps}.")
    requested = games_lib.canonical_names(r.games) if games_lib.split_names(r.games) else ()
  except ValueError as e:
    raise errors.InputError(str(e).replace("episodes per game", "episodes per game (--episodes)")
                            .replace("envs per game", "envs per game (--envs_per_game)")) from e
  unknown = [b for b in r.baselines if b not in BASELINE_KINDS]
  if unknown:
    raise errors.InputError(f"--baselines: unknown {unknown}; choose from "
                            f"{list(BASELINE_KINDS)}.")
  try:
    checkpoint = restore.load(r.checkpoint)
  except restore.CheckpointError as e:
    raise errors.InputError(str(e)) from e
  games = requested or checkpoint.games
  missing = [g for g in games if g not in checkpoint.games]
  if missing:
    raise errors.InputError(f"--games: {missing} not in the checkpoint's game list "
                            f"{list(checkpoint.games)} ({checkpoint.checkpoint_dir}): the network "
                            f"has no head for them.")
  behaviour = {}
  if "behaviour" in r.baselines:
    data_dir = r.data_dir or checkpoint.config.get("data.data_dir")
    if not data_dir:
      raise errors.InputError("--baselines=behaviour needs --data_dir (the checkpoint has no "
                              "workdir config.json naming its dataset).")
    # The training data's runs and checkpoints, unless another dataset is named.
    runs, span = None, None
    if r.data_dir is None:
      runs = checkpoint.config.get("data.runs") or None
      span = checkpoint.config.get("data.checkpoint_range") or None
    for game in games:  # Missing data fails now, not after the agent's rollouts.
      try:
        data_lib.find_sources(data_dir, game, runs=runs)
      except (ValueError, OSError) as e:
        raise errors.InputError(f"--baselines=behaviour: {e}") from e
    behaviour = dict(data_dir=data_dir, runs=runs,
                     checkpoints=list(range(span[0], span[1] + 1)) if span else None)
  variant = {}
  for name in ("mode", "difficulty"):
    value = getattr(r, name)
    if value is None and checkpoint.config.get("finetune.mode") == "online":
      value = checkpoint.config.get(f"online.{name}", -1)  # What the run trained on.
      value = None if value == -1 else value
    variant[name] = value
  for game in games:
    modes, difficulties = envs.available_variants(game)
    if variant["mode"] is not None and variant["mode"] not in modes:
      raise errors.InputError(f"--mode={variant['mode']}: {game} has no such mode; its ROM "
                              f"offers modes {list(modes)}.")
    if variant["difficulty"] is not None and variant["difficulty"] not in difficulties:
      raise errors.InputError(f"--difficulty={variant['difficulty']}: {game} has no such "
                              f"difficulty; its ROM offers difficulties {list(difficulties)}.")
  out = r.out or os.path.join(checkpoint.workdir or os.path.dirname(checkpoint.checkpoint_dir),
                              "eval")
  return Checked(checkpoint, tuple(games), behaviour, variant, out)


def evaluate(r: Request, progress=None, verbose: bool = True
             ) -> tuple[results.Evaluation, list, dict]:
  """The job: (the agent's Evaluation, baselines, {kind: path written}). `progress(total,
  desc, unit)` makes a progress bar (tqdm-like: update, close); None shows none. verbose:
  print the settings line and the tables (else only the files are written)."""
  say = print if verbose else (lambda *a, **k: None)
  c = check(r)
  checkpoint, games = c.checkpoint, c.games
  max_steps = r.max_steps_per_episode or None
  protocol = dict(epsilon=r.epsilon, envs_per_game=r.envs_per_game, seed=r.seed,
                  max_steps_per_episode=max_steps, num_workers=r.num_workers, **c.variant)
  say(f"evaluating {checkpoint.checkpoint_dir} step {checkpoint.step} ({checkpoint.loss_kind}, "
        f"{len(checkpoint.games)} heads) on {len(games)} games x {r.episodes} episodes; "
        f"epsilon {r.epsilon}, sticky actions 0.25, "
        + (f"episodes cut at {max_steps} steps" if max_steps else "108,000-frame cap")
        + f", seed {r.seed}"
        + "".join(f", {k} {v}" for k, v in c.variant.items() if v is not None), flush=True)

  # -- The agent. ------------------------------------------------------------------------
  greedy = policy.make_greedy_policy(
      checkpoint.model, checkpoint.params, loss_kind=checkpoint.loss_kind,
      head_games=checkpoint.games, games=games, v_min=checkpoint.v_min, v_max=checkpoint.v_max)
  agent = _play(progress, "agent", len(games) * r.episodes, lambda bar: results.from_rollouts(
      rollout.run_episodes(greedy, games, r.episodes, on_episodes=bar, **protocol), "agent",
      reps=r.bootstrap_reps, seed=r.seed))

  # -- Baselines. ------------------------------------------------------------------------
  baselines = []
  if "random" in r.baselines:
    baselines.append(_play(progress, "random", len(games) * r.episodes,
                           lambda bar: baselines_lib.random_policy(
                               games, r.episodes, reps=r.bootstrap_reps, on_episodes=bar,
                               **protocol)))
  if "constant" in r.baselines:
    slots = sum(games_lib.get_game(g).num_actions for g in games)
    baselines.append(_play(progress, "constant actions", slots * r.episodes,
                           lambda bar: baselines_lib.constant_action(
                               games, r.episodes, reps=r.bootstrap_reps,
                               cache_dir=r.baseline_cache, on_episodes=bar, **protocol)))
  if c.behaviour:
    baselines.append(_play(progress, "behaviour data", None, lambda bar: baselines_lib
                           .behaviour_data(games=games, max_episodes=r.behaviour_max_episodes,
                                           reps=r.bootstrap_reps, seed=r.seed,
                                           max_steps_per_episode=max_steps,
                                           on_episode=lambda: bar(1), **c.behaviour),
                           unit="episode read"))

  # -- Tables and files. -----------------------------------------------------------------
  everything = [agent, *baselines]
  say("\n" + tables.game_table(agent))
  if baselines:
    say("\n" + tables.comparison_table(everything))
  say("\n" + tables.aggregate_table(everything))
  for note in tables.notes(everything):
    say(f"- {note}")
  info = dict(path=checkpoint.checkpoint_dir, step=checkpoint.step, workdir=checkpoint.workdir,
              games=list(checkpoint.games), loss_kind=checkpoint.loss_kind)
  paths = results.write(c.out, agent, baselines, checkpoint=info)
  say(f"\nwrote {', '.join(paths.values())}", flush=True)
  return agent, baselines, paths


def _play(progress, label: str, total, fn, unit: str = "episode"):
  """fn(update) with a progress bar of `total` (None: unknown) made by `progress`."""
  if progress is None:
    return fn(lambda n=1: None)
  bar = progress(total, desc=label, unit=unit)
  try:
    return fn(bar.update)
  finally:
    bar.close()
