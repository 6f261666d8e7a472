"""Scores: per-game raw and human-normalized scores, and IQM / median / mean with CIs (rliable).

Human-normalized score (HNS) = (score - random) / (human - random), with the reference scores of
`scaled_ql.games`. Games without reference scores (Carnival, Pooyan) get raw scores only and
are left out of the normalized aggregates; `Aggregates.excluded` names them so every table can
say so.

Aggregates follow Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice") and
are computed by `rliable` on the [1, games] matrix of per-game mean HNS (one trained agent = one
run; games with reference scores only), as papers report one model over many games:
  - IQM: the mean of the middle 50% of the games' scores (rliable `aggregate_iqm`);
  - median, mean: over games (`aggregate_median`, `aggregate_mean`);
with percentile confidence intervals from a stratified bootstrap that resamples each game's
episodes independently and recomputes the per-game means (rliable
`get_interval_estimates` with one array per game, i.e. `StratifiedIndependentBootstrap`): the
evaluation noise of this agent. Games may have different episode counts (dataset baselines).

`aggregate_runs` is for several trained agents of one method (training seeds): rliable's own
setting, the [runs, games] matrix of each run's per-game mean HNS, IQM over all its entries,
CIs from `StratifiedBootstrap` resampling the runs of each game (training-seed variance).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Optional, Sequence

import numpy as np

from scaled_ql import games as games_lib

METRICS = ("iqm", "median", "mean")
DEFAULT_BOOTSTRAP_REPS = 2000  # Percentile CIs settle well before (rliable defaults to 50,000).
DEFAULT_CONFIDENCE = 0.95


def normalize(game: str, score):
  """HNS of a score or an array of scores; raises for a game without reference scores."""
  g = games_lib.get_game(game)
  if not g.has_reference_scores:
    raise ValueError(f"game {g.name!r} has no published random/human reference scores.")
  return (np.asarray(score, np.float64) - g.random_score) / (g.human_score - g.random_score)


def has_reference(game: str) -> bool:
  return games_lib.get_game(game).has_reference_scores


@dataclasses.dataclass(frozen=True)
class GameScore:
  """One game's evaluation: raw returns summarised, and the HNS of their mean."""
  game: str
  episodes: int
  mean_return: float
  stderr_return: float  # Standard error of the mean (0 with one episode).
  min_return: float
  max_return: float
  mean_length: float  # Agent steps.
  truncated: int  # Episodes ended by the frame cap (108,000 frames, or a shorter CPU budget).
  normalized: Optional[float]  # HNS of mean_return; None without reference scores.
  # The share of the policy's own choices (before epsilon) that went to its most frequent
  # action, and that action's slot: 1.0 is a constant policy. None where not measured (the
  # random policy, dataset baselines, results written before it was recorded).
  top_action_share: Optional[float] = None
  top_action: Optional[int] = None


def game_score(game: str, returns: Sequence[float], lengths: Sequence[int] = (),
               truncated: int = 0, action_counts: Sequence[int] = ()) -> GameScore:
  """Summarises one game's episode returns (and the policy's action counts, where given)."""
  r = np.asarray(returns, np.float64)
  if r.size == 0:
    raise ValueError(f"no episodes for game {game!r}.")
  name = games_lib.get_game(game).name
  stderr = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else 0.0
  return GameScore(
      game=name, episodes=int(r.size), mean_return=float(r.mean()), stderr_return=stderr,
      min_return=float(r.min()), max_return=float(r.max()),
      mean_length=float(np.mean(lengths)) if len(lengths) else float("nan"),
      truncated=int(truncated),
      normalized=float(normalize(name, r.mean())) if has_reference(name) else None,
      **top_action(action_counts))


def top_action(action_counts: Sequence[int]) -> dict:
  """{top_action_share, top_action} of per-slot action counts ({} when none were counted)."""
  counts = np.asarray(action_counts, np.int64)
  if counts.size == 0 or counts.sum() == 0:
    return {}
  return dict(top_action_share=float(counts.max() / counts.sum()),
              top_action=int(counts.argmax()))


@dataclasses.dataclass(frozen=True)
class Estimate:
  value: float
  low: float  # Lower end of the confidence interval.
  high: float


@dataclasses.dataclass(frozen=True)
class Aggregates:
  """IQM / median / mean of human-normalized scores with their confidence intervals."""
  iqm: Estimate
  median: Estimate
  mean: Estimate
  games: tuple[str, ...]  # The games aggregated over.
  excluded: tuple[str, ...]  # Played but without reference scores: not in the aggregates.
  episodes: int  # Episodes per game (the fewest, where games differ).
  reps: int  # Bootstrap replications.
  confidence: float
  runs: int = 1  # Trained agents (seeds) pooled; > 1: the CIs resample runs, not episodes.

  def note(self) -> str:
    """A sentence for tables: what was aggregated and what was left out, and why."""
    over = (f"each game's {self.runs} runs (training seeds)" if self.runs > 1
            else "each game's episodes")
    text = (f"IQM / median / mean over {len(self.games)} game(s) of per-game mean "
            f"human-normalized scores; {self.confidence:.0%} CIs from {self.reps} stratified-"
            f"bootstrap replications over {over} (rliable).")
    if self.excluded:
      text += (f" Not in the aggregates (no published random/human reference scores): "
               f"{', '.join(self.excluded)}.")
    return text


def metrics_of(matrix: np.ndarray) -> np.ndarray:
  """[IQM, median, mean] of a [runs, games] score matrix, by rliable."""
  from rliable import metrics  # pylint: disable=g-import-not-at-top
  return np.array([metrics.aggregate_iqm(matrix), metrics.aggregate_median(matrix),
                   metrics.aggregate_mean(matrix)])


def _metrics_of_episodes(*per_game: np.ndarray) -> np.ndarray:
  return metrics_of(np.array([[np.mean(c) for c in per_game]]))


def normalized_by_game(returns_by_game: dict[str, Sequence[float]]
                       ) -> tuple[list[np.ndarray], tuple[str, ...], tuple[str, ...]]:
  """(per-game arrays of episode HNS, games in them, games left out for lack of references)."""
  kept = tuple(g for g in returns_by_game if has_reference(g))
  excluded = tuple(g for g in returns_by_game if not has_reference(g))
  columns = [normalize(g, returns_by_game[g]).reshape(-1) for g in kept]
  empty = [g for g, c in zip(kept, columns) if c.size == 0]
  if empty:
    raise ValueError(f"no episodes for game(s) {empty}.")
  return columns, kept, excluded


def score_matrix(returns_by_game: dict[str, Sequence[float]]) -> np.ndarray:
  """The [1, games] matrix of per-game mean HNS the aggregates are computed on."""
  columns, _, _ = normalized_by_game(returns_by_game)
  return np.array([[c.mean() for c in columns]])


def _bootstrap(scores, func, reps: int, confidence: float, seed: int):
  """rliable's (point, (low, high)) of `func` on `scores` (a [runs, games] matrix: resample runs
  within games; or a list of per-game arrays: resample each game's entries)."""
  from rliable import library  # pylint: disable=g-import-not-at-top
  # rliable 1.2's stratified bootstraps draw their indices from the global np.random (they
  # ignore random_state), so the global generator is seeded here and restored after.
  global_state = np.random.get_state()
  np.random.seed(seed)
  try:
    with warnings.catch_warnings():  # arch's FutureWarning about RandomState.
      warnings.simplefilter("ignore", FutureWarning)
      points, intervals = library.get_interval_estimates(
          {"x": scores}, func, reps=int(reps), confidence_interval_size=confidence,
          random_state=np.random.RandomState(seed))
  finally:
    np.random.set_state(global_state)
  point, (low, high) = points["x"], intervals["x"]
  return [Estimate(float(point[i]), float(low[i]), float(high[i])) for i in range(3)]


def aggregate(returns_by_game: dict[str, Sequence[float]], *,
              reps: int = DEFAULT_BOOTSTRAP_REPS, confidence: float = DEFAULT_CONFIDENCE,
              seed: int = 0) -> Optional[Aggregates]:
  """IQM / median / mean with CIs over the games with reference scores (None if there are none).

  returns_by_game: per game, its episodes' raw returns (any counts >= 1).
  """
  columns, kept, excluded = normalized_by_game(returns_by_game)
  if not kept:
    return None
  est = _bootstrap(columns, _metrics_of_episodes, reps, confidence, seed)
  return Aggregates(*est, games=kept, excluded=excluded,
                    episodes=int(min(c.size for c in columns)), reps=int(reps),
                    confidence=float(confidence))


def aggregate_runs(runs: Sequence[dict[str, Sequence[float]]], *,
                   reps: int = DEFAULT_BOOTSTRAP_REPS, confidence: float = DEFAULT_CONFIDENCE,
                   seed: int = 0) -> Optional[Aggregates]:
  """IQM / median / mean with CIs over runs x games (rliable's setting; module docstring).

  runs: per trained agent (seed), per game, its episodes' raw returns; every run plays the
  same games. A run's score on a game is the mean HNS of its episodes there.
  """
  if len(runs) < 2:
    raise ValueError(f"aggregate_runs needs at least 2 runs, got {len(runs)}; use aggregate.")
  game_sets = {tuple(r) for r in runs}
  if len(game_sets) != 1:
    raise ValueError(f"the runs played different games: {sorted(game_sets)}.")
  per_run = [normalized_by_game(r) for r in runs]
  _, kept, excluded = per_run[0]
  if not kept:
    return None
  matrix = np.array([[c.mean() for c in columns] for columns, _, _ in per_run])
  est = _bootstrap(matrix, metrics_of, reps, confidence, seed)
  episodes = min(c.size for columns, _, _ in per_run for c in columns)
  return Aggregates(*est, games=kept, excluded=excluded, episodes=int(episodes),
                    reps=int(reps), confidence=float(confidence), runs=len(runs))
