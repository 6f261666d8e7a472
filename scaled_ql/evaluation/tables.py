"""Tables of evaluation results, as aligned text (consoles) or Markdown (reports, papers).

- `game_table`: one policy in detail (episodes, return mean +- s.e., min, max, length, HNS);
- `comparison_table`: several policies side by side per game (raw mean and HNS each);
- `aggregate_table`: IQM / median / mean with CIs per policy;
- `notes`: the sentences that must travel with the numbers (games left out of the aggregates,
  episodes cut short by a CPU budget).
"""
from __future__ import annotations

from typing import Optional, Sequence

from scaled_ql import games as games_lib
from scaled_ql.evaluation import results, scores

NA = "-"  # A cell with no value (no reference score, game not played).


def render(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text") -> str:
  """Right-aligned columns (the first left-aligned) as text or as a Markdown table."""
  if fmt not in ("text", "markdown"):
    raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}.")
  if fmt == "markdown":
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  def line(cells):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _num(x: Optional[float], digits: int = 1) -> str:
  return NA if x is None else f"{x:,.{digits}f}"


def _hns(x: Optional[float]) -> str:
  return NA if x is None else f"{x:.3f}"


def _reference(game: str) -> tuple[str, str]:
  g = games_lib.get_game(game)
  return _num(g.random_score), _num(g.human_score)


def game_table(evaluation: results.Evaluation, fmt: str = "text") -> str:
  """One policy's per-game scores in detail."""
  header = ["game", "episodes", "return", "± s.e.", "min", "max", "length", "truncated",
            "random", "human", "HNS"]
  shares = any(g.top_action_share is not None for g in evaluation.games)
  if shares:
    header.append("top action (share of steps)")
  rows = [[g.game, str(g.episodes), _num(g.mean_return), _num(g.stderr_return),
           _num(g.min_return), _num(g.max_return), _num(g.mean_length, 0), str(g.truncated),
           *_reference(g.game), _hns(g.normalized)] + ([top_action(g)] if shares else [])
          for g in evaluation.games]
  return render(header, rows, fmt)


def top_action(g: scores.GameScore) -> str:
  """'RIGHT 91%': the policy's most frequent action and its share of the steps."""
  if g.top_action_share is None:
    return NA
  name = (games_lib.action_name(g.game, g.top_action) + " " if g.top_action is not None
          else "")
  return f"{name}{g.top_action_share:.0%}"


def comparison_table(evaluations: Sequence[results.Evaluation], fmt: str = "text") -> str:
  """Per game, each policy's mean raw return and HNS, side by side."""
  games = list(dict.fromkeys(g.game for e in evaluations for g in e.games))
  header = ["game", "random ref", "human ref"]
  for e in evaluations:
    header += [f"{e.label} return", f"{e.label} HNS"]
  rows = []
  for game in games:
    row = [game, *_reference(game)]
    for e in evaluations:
      s = e.game(game)
      row += [NA, NA] if s is None else [_num(s.mean_return), _hns(s.normalized)]
    rows.append(row)
  return render(header, rows, fmt)


def _estimate(e: scores.Estimate) -> str:
  return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def aggregate_table(evaluations: Sequence[results.Evaluation], fmt: str = "text") -> str:
  """IQM / median / mean of HNS with their CIs, one row per policy."""
  header = ["policy", "games", "episodes/game", "IQM [95% CI]", "median [95% CI]",
            "mean [95% CI]"]
  rows = []
  for e in evaluations:
    a = e.aggregates
    if a is None:
      rows.append([e.label, "0", NA, NA, NA, NA])
      continue
    header[3:] = [f"{m} [{a.confidence:.0%} CI]" for m in ("IQM", "median", "mean")]
    episodes = f"{a.runs} x {a.episodes}" if a.runs > 1 else str(a.episodes)  # seeds x each's
    rows.append([e.label, str(len(a.games)), episodes, _estimate(a.iqm),
                 _estimate(a.median), _estimate(a.mean)])
  return render(header, rows, fmt)


def notes(evaluations: Sequence[results.Evaluation]) -> list[str]:
  """Sentences that qualify the numbers: exclusions, cut-short episodes, estimator."""
  out = []
  aggregated = [e for e in evaluations if e.aggregates is not None]
  if aggregated:
    a = aggregated[0].aggregates
    out.append(f"Aggregates: IQM / median / mean over games of the per-game mean human-"
               f"normalized score, HNS = (score - random) / (human - random); "
               f"{a.confidence:.0%} percentile CIs from {a.reps} stratified-bootstrap "
               f"replications resampling each game's episodes (rliable): evaluation noise "
               f"only, not training-seed variance.")
    for e in aggregated:
      if e.aggregates.runs > 1:
        out.append(f"{e.label}: {e.aggregates.runs} trained agents (seeds); IQM / median / mean "
                   f"over their runs x games scores (a run's score on a game: the mean HNS of "
                   f"its episodes), CIs resampling each game's runs (rliable's "
                   f"StratifiedBootstrap): training-seed variance.")
  excluded = sorted({g for e in aggregated for g in e.aggregates.excluded})
  no_aggregate = [e.label for e in evaluations if e.aggregates is None]
  if excluded:
    out.append(f"Played and reported but not in the normalized aggregates (no published "
               f"random/human reference scores): {', '.join(excluded)}.")
  if no_aggregate:
    out.append(f"No aggregate for {', '.join(no_aggregate)}: none of its games has reference "
               f"scores.")
  by_cap = {}
  for e in evaluations:
    cut = results.cut_short(e)
    if cut:
      by_cap.setdefault(cut[0], []).append(f"{e.label} {cut[1]} of {cut[2]}")
  for cap, parts in by_cap.items():
    out.append(f"Episodes cut short at {cap} agent steps (max_steps_per_episode, a CPU budget "
               f"below the protocol's 27,000): {'; '.join(parts)}. Their scores understate "
               f"full episodes and are not comparable with published numbers.")
  for e in evaluations:
    if e.settings.get("mode") is not None or e.settings.get("difficulty") is not None:
      out.append(f"{e.label}: played the game variant mode {e.settings.get('mode')}, "
                 f"difficulty {e.settings.get('difficulty')} (None = the ROM's default); "
                 f"human-normalized scores use the default game's reference scores.")
  for e in evaluations:
    best = e.settings.get("best") if e.settings.get("policy") == "constant" else None
    if best:
      out.append(f"{e.label}: " + "; ".join(
          f"{g} {b['action']} (of " + ", ".join(f"{a} {m:,.1f}" for a, m in
                                               b["mean_returns"].items()) + ")"
          for g, b in best.items()) + ": each legal action held for whole episodes under the "
          "same protocol, the best per game.")
  for e in evaluations:
    if e.settings.get("policy") != "behaviour data":
      continue
    partial = sum(g.truncated for g in e.games)
    if partial:
      out.append(f"{e.label}: {partial} of {sum(g.episodes for g in e.games)} dataset episodes "
                 f"end without a game over (cut at a checkpoint's end or by the frame cap); "
                 f"their returns are partial.")
    if e.settings.get("capped_games"):
      out.append(f"{e.label}: only the first {e.settings.get('max_episodes')} dataset episodes "
                 f"were read for {', '.join(e.settings['capped_games'])}.")
  return out
