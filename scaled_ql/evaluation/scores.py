"""Scores: per-game raw and human-normalized scores, and IQM / median / mean with CIs (rliable's).

Human-normalized score (HNS) = (score - random) / (human - random), with the reference scores of
`scaled_ql.games`. Games without reference scores (Carnival, Pooyan) get raw scores only and
are left out of the normalized aggregates; `Aggregates.excluded` names them so every table can
say so.

Aggregates follow Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice") and
are rliable's, on the [1, games] matrix of per-game mean HNS (one trained agent = one run; games
with reference scores only), as papers report one model over many games:
  - IQM: the mean of the middle 50% of the games' scores (rliable `aggregate_iqm`);
  - median, mean: over games (`aggregate_median`, `aggregate_mean`);
with percentile confidence intervals from a stratified bootstrap that resamples each game's
episodes independently and recomputes the per-game means (rliable
`get_interval_estimates` with one array per game, i.e. `StratifiedIndependentBootstrap`): the
evaluation noise of this agent. Games may have different episode counts (dataset baselines).

`aggregate_runs` is for several trained agents of one method (training seeds): rliable's own
setting, the [runs, games] matrix of each run's per-game mean HNS, IQM over all its entries,
CIs from `StratifiedBootstrap` resampling the runs of each game (training-seed variance).

The bootstrap is rliable's, computed here with numpy (`_bootstrap`): the same random indices and
the same float operations, so the same bits (tests/test_evaluation.py compares with rliable
itself), with all replications at once instead of one Python call each. Importing rliable (it
imports arch, pandas and scipy.stats) and its loop cost every evaluation 3-5 s of CPU; this
takes milliseconds, and rliable is only a test requirement.
"""
from __future__ import annotations

import dataclasses
import math
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


def metrics_of(matrices: np.ndarray) -> np.ndarray:
  """[IQM, median, mean] of a [runs, games] score matrix, as rliable's `aggregate_iqm`,
  `aggregate_median` and `aggregate_mean` compute them; of a stack [R, runs, games]: [R, 3].

  IQM: scipy's `trim_mean(proportiontocut=0.25, axis=None)`, the same partition and mean per
  matrix, so the same bits; median and mean: of the per-game means over runs."""
  batch = matrices[None] if matrices.ndim == 2 else matrices
  r = batch.shape[0]
  flat = batch.reshape(r, -1)
  cut = int(0.25 * flat.shape[1])
  kept = np.partition(flat, (cut, flat.shape[1] - cut - 1), axis=1)[:, cut:flat.shape[1] - cut]
  task_means = np.mean(batch, axis=1)
  out = np.stack([np.mean(kept, axis=1), np.median(task_means, axis=1),
                  np.mean(task_means, axis=1)], axis=1)
  return out[0] if matrices.ndim == 2 else out


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


def _bootstrap(scores, reps: int, confidence: float, seed: int) -> list[Estimate]:
  """rliable's `get_interval_estimates` (percentile CIs; module docstring), bit for bit, with
  every replication's resample drawn in one call and the metrics computed for all at once.

  scores: a [runs, games] matrix (`StratifiedBootstrap`: each game's runs resampled) or a list
  of per-game arrays of episodes (`StratifiedIndependentBootstrap`: each game's episodes
  resampled, then averaged). The indices come from `RandomState(seed)` in rliable's order (per
  replication, per game), the percentiles from numpy as arch's `conf_int` takes them.
  tests/test_evaluation.py checks equality with rliable itself.
  """
  rng = np.random.RandomState(seed)
  if isinstance(scores, np.ndarray):
    runs, num_games = scores.shape
    point = metrics_of(scores)
    rows = rng.randint(0, runs, size=(int(reps), runs, num_games))
    values = metrics_of(scores[rows, np.arange(num_games)])
  else:
    columns = [np.asarray(c, np.float64).reshape(-1) for c in scores]
    point = metrics_of(np.array([[np.mean(c) for c in columns]]))
    sizes = [c.size for c in columns]
    draws = rng.randint(0, np.repeat(sizes, sizes), size=(int(reps), sum(sizes)))
    bounds = np.cumsum([0] + sizes)
    means = np.stack([np.mean(c[draws[:, bounds[g]:bounds[g + 1]]], axis=1)
                      for g, c in enumerate(columns)], axis=1)  # [reps, games]
    values = metrics_of(means[:, None, :])
  alpha = (1.0 - confidence) / 2
  percentiles = list(100 * np.array([alpha, 1.0 - alpha]))
  return [Estimate(float(point[i]), *(float(v) for v in np.percentile(values[:, i], percentiles)))
          for i in range(3)]


def aggregate(returns_by_game: dict[str, Sequence[float]], *,
              reps: int = DEFAULT_BOOTSTRAP_REPS, confidence: float = DEFAULT_CONFIDENCE,
              seed: int = 0) -> Optional[Aggregates]:
  """IQM / median / mean with CIs over the games with reference scores (None if there are none).

  returns_by_game: per game, its episodes' raw returns (any counts >= 1).
  """
  columns, kept, excluded = normalized_by_game(returns_by_game)
  if not kept:
    return None
  est = _bootstrap(columns, reps, confidence, seed)
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
  est = _bootstrap(matrix, reps, confidence, seed)
  episodes = min(c.size for columns, _, _ in per_run for c in columns)
  return Aggregates(*est, games=kept, excluded=excluded, episodes=int(episodes),
                    reps=int(reps), confidence=float(confidence), runs=len(runs))
