"""Evaluation results: a policy's per-game scores, aggregates and episodes, saved as JSON and CSV.

An `Evaluation` is what one policy scored (the agent, the random policy, the behaviour data).
`write` saves an agent's evaluation and its baselines into a directory:
  results.json    everything (read back with `read`; what `launch.report` reads);
  per_game.csv    one row per (policy, game): episodes, raw mean / stderr / min / max, HNS;
  aggregates.csv  one row per (policy, metric): value and CI, with the games aggregated over;
  episodes.csv    one row per episode: policy, game, env, env_seed, index, return, length.
Files are written to temporary names and renamed, so a crash never leaves half a result.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from scaled_ql import envs
from scaled_ql.evaluation import scores as scores_lib
from scaled_ql.evaluation.rollout import Episode, Rollouts

FORMAT = "scaled_ql.evaluation/1"
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class Evaluation:
  """What one policy scored."""
  label: str  # "agent", "random", "behaviour data", ...
  games: list[scores_lib.GameScore]
  aggregates: Optional[scores_lib.Aggregates]
  settings: dict  # How it was measured (rollout settings, or the dataset read).
  episodes: list[Episode] = dataclasses.field(default_factory=list)

  def game(self, name: str) -> Optional[scores_lib.GameScore]:
    return next((g for g in self.games if g.game == name), None)

  def to_dict(self) -> dict:
    return dict(label=self.label, settings=self.settings,
                games=[dataclasses.asdict(g) for g in self.games],
                aggregates=dataclasses.asdict(self.aggregates) if self.aggregates else None,
                episodes=[dataclasses.asdict(e) for e in self.episodes])

  @classmethod
  def from_dict(cls, d: dict) -> "Evaluation":
    agg = d.get("aggregates")
    if agg:
      agg = scores_lib.Aggregates(
          **{m: scores_lib.Estimate(**agg[m]) for m in scores_lib.METRICS},
          games=tuple(agg["games"]), excluded=tuple(agg["excluded"]), episodes=agg["episodes"],
          reps=agg["reps"], confidence=agg["confidence"], runs=agg.get("runs", 1))
    return cls(label=d["label"], settings=d.get("settings", {}),
               games=[scores_lib.GameScore(**g) for g in d["games"]], aggregates=agg or None,
               episodes=[Episode(**e) for e in d.get("episodes", [])])


def from_rollouts(rollouts: Rollouts, label: str, *,
                  reps: int = scores_lib.DEFAULT_BOOTSTRAP_REPS, seed: int = 0) -> Evaluation:
  """Per-game scores and aggregates of a set of rollouts."""
  by_game = {g: rollouts.of(g) for g in rollouts.games}
  games = [scores_lib.game_score(g, [e.episode_return for e in eps], [e.length for e in eps],
                                 sum(e.truncated for e in eps), rollouts.action_counts.get(g, ()))
           for g, eps in by_game.items()]
  aggregates = scores_lib.aggregate(
      {g: [e.episode_return for e in eps] for g, eps in by_game.items()}, reps=reps, seed=seed)
  settings = dict(dataclasses.asdict(rollouts.settings), agent_steps=rollouts.agent_steps,
                  seconds=round(rollouts.seconds, 3),
                  policy_seconds=round(rollouts.policy_seconds, 3))
  return Evaluation(label, games, aggregates, settings, list(rollouts.episodes))


def pooled(runs: Sequence[Evaluation], label: str, *,
           reps: int = scores_lib.DEFAULT_BOOTSTRAP_REPS, seed: int = 0) -> Evaluation:
  """One method's evaluations of several trained agents (seeds) as one: per-game scores over
  all their episodes, aggregates over runs x games (`scores.aggregate_runs`)."""
  by_run = [{g.game: [e.episode_return for e in r.episodes if e.game == g.game]
             for g in r.games} for r in runs]
  games = []
  for g in runs[0].games:
    eps = [e for r in runs for e in r.episodes if e.game == g.game]
    score = scores_lib.game_score(g.game, [e.episode_return for e in eps],
                                  [e.length for e in eps], sum(e.truncated for e in eps))
    shares = [r.game(g.game).top_action_share for r in runs]
    if all(s is not None for s in shares):  # Each run's own policy: the mean of their shares.
      score = dataclasses.replace(score, top_action_share=float(np.mean(shares)))
    games.append(score)
  aggregates = scores_lib.aggregate_runs(by_run, reps=reps, seed=seed)
  settings = dict(runs[0].settings, runs=len(runs))
  return Evaluation(label, games, aggregates, settings, [e for r in runs for e in r.episodes])


def cut_short(evaluation: Evaluation) -> Optional[tuple[int, int, int]]:
  """(step cap, episodes cut, episodes) where a CPU step budget shorter than the protocol's
  cut episodes short; None otherwise (episodes ended by the 108,000-frame cap are protocol)."""
  cap = evaluation.settings.get("max_steps_per_episode")
  frames = evaluation.settings.get("max_episode_frames", envs.DEFAULT_MAX_EPISODE_FRAMES)
  cut = sum(g.truncated for g in evaluation.games)
  if not cap or frames >= envs.DEFAULT_MAX_EPISODE_FRAMES or not cut:
    return None
  return int(cap), cut, sum(g.episodes for g in evaluation.games)


def atomic_write(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def to_csv(rows: Sequence[dict]) -> str:
  buf = io.StringIO()
  if rows:
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return buf.getvalue()


def game_rows(evaluations: Sequence[Evaluation]) -> list[dict]:
  return [dict(policy=e.label, **dataclasses.asdict(g)) for e in evaluations for g in e.games]


def aggregate_rows(evaluations: Sequence[Evaluation]) -> list[dict]:
  rows = []
  for e in evaluations:
    if e.aggregates is None:
      continue
    a = e.aggregates
    for m in scores_lib.METRICS:
      est = getattr(a, m)
      rows.append(dict(policy=e.label, metric=m, value=est.value, ci_low=est.low,
                       ci_high=est.high, confidence=a.confidence, games=" ".join(a.games),
                       excluded=" ".join(a.excluded), episodes_per_game=a.episodes, runs=a.runs,
                       reps=a.reps))
  return rows


def write(out_dir: str, agent: Evaluation, baselines: Sequence[Evaluation] = (),
          checkpoint: Optional[dict] = None) -> dict[str, str]:
  """Writes the files of the module docstring; returns {kind: path}."""
  os.makedirs(out_dir, exist_ok=True)
  everything = [agent, *baselines]
  content = dict(format=FORMAT, checkpoint=checkpoint or {}, agent=agent.to_dict(),
                 baselines={b.label: b.to_dict() for b in baselines})
  paths = {k: os.path.join(out_dir, f) for k, f in (
      ("results", RESULTS_FILE), ("per_game", "per_game.csv"),
      ("aggregates", "aggregates.csv"), ("episodes", "episodes.csv"))}
  atomic_write(paths["per_game"], to_csv(game_rows(everything)))
  atomic_write(paths["aggregates"], to_csv(aggregate_rows(everything)))
  atomic_write(paths["episodes"], to_csv([dict(policy=e.label, **dataclasses.asdict(ep))
                                         for e in everything for ep in e.episodes]))
  atomic_write(paths["results"], json.dumps(content, indent=1))  # Last: marks completion.
  return paths


def find(path: str) -> str:
  """The results.json for a path: the file, an eval directory, or a workdir (WORKDIR/eval)."""
  for candidate in (path, os.path.join(path, RESULTS_FILE),
                    os.path.join(path, "eval", RESULTS_FILE)):
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"no evaluation results under {path}: expected {path}/{RESULTS_FILE} "
                          f"or {path}/eval/{RESULTS_FILE} (run `python -m launch.evaluate "
                          f"--checkpoint={path}` first).")


def read(path: str) -> tuple[Evaluation, list[Evaluation], dict[str, Any]]:
  """(agent, baselines, checkpoint info) from a results path (see `find`)."""
  path = find(path)
  with open(path) as f:
    try:
      content = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
  if content.get("format") != FORMAT:
    raise ValueError(f"{path} is not a scaled_ql evaluation result (format "
                     f"{content.get('format')!r}, expected {FORMAT!r}).")
  baselines = [Evaluation.from_dict(b) for b in content.get("baselines", {}).values()]
  return Evaluation.from_dict(content["agent"]), baselines, content.get("checkpoint", {})
