"""PNG figures of evaluation results (matplotlib's object API, no display needed).

- `per_game_figure`: human-normalized score per game, one bar per policy, grouped by game;
- `aggregates_figure`: IQM / median / mean with CI error bars, one panel each, policies side by
  side (the comparison papers show);
- `curves_figure`: training curves (loss, TD, CQL from metrics.jsonl) and periodic evaluation
  IQM (eval.jsonl), one line per run.
Every policy keeps its colour across figures (`colours`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from scaled_ql.evaluation import results

HUMAN_COLOUR = "0.35"


def colours(labels: Sequence[str]) -> dict[str, tuple]:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab10"]
  return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str) -> str:
  fig.savefig(path)
  return path


def per_game_figure(evaluations: Sequence[results.Evaluation], path: str,
                    title: str = "Human-normalized score per game") -> Optional[str]:
  """Grouped bars of per-game HNS; games without reference scores are named in a footnote."""
  games = list(dict.fromkeys(g.game for e in evaluations for g in e.games))
  shown = [g for g in games if any((e.game(g) and e.game(g).normalized is not None)
                                   for e in evaluations)]
  hidden = [g for g in games if g not in shown]
  if not shown:
    return None
  n = len(evaluations)
  width = min(26.0, max(6.5, 0.9 + len(shown) * (0.28 * n + 0.35)))
  fig = _figure(width, 4.6)
  ax = fig.add_subplot()
  colour = colours([e.label for e in evaluations])
  bar = 0.8 / n
  x = np.arange(len(shown))
  label_bars = len(shown) * n <= 32  # Values printed on the bars while they stay legible.
  for i, e in enumerate(evaluations):
    values = [(e.game(g).normalized if e.game(g) and e.game(g).normalized is not None
               else np.nan) for g in shown]
    bars = ax.bar(x - 0.4 + bar * (i + 0.5), values, bar, label=e.label, color=colour[e.label])
    if label_bars:
      ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2, rotation=90)
  ax.margins(y=0.12)  # Room for the value labels, above and below.
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.axhline(1.0, color=HUMAN_COLOUR, linewidth=1.0, linestyle="--", label="human (1.0)")
  ax.set_xticks(x, shown, rotation=45 if len(shown) > 8 else 0,
                ha="right" if len(shown) > 8 else "center")
  ax.set_xlim(-0.6, len(shown) - 0.4)
  ax.set_ylabel("human-normalized score")
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
  if hidden:
    fig.text(0.01, 0.005, f"Not shown (no published random/human reference scores): "
             f"{', '.join(hidden)}", fontsize=8, ha="left", va="bottom", color="0.3")
  return _save(fig, path)


def aggregates_figure(evaluations: Sequence[results.Evaluation], path: str) -> Optional[str]:
  """IQM / median / mean with CIs; one horizontal bar per policy in each panel."""
  with_agg = [e for e in evaluations if e.aggregates is not None]
  if not with_agg:
    return None
  labels = [e.label for e in with_agg]
  colour = colours([e.label for e in evaluations])
  fig = _figure(11.0, 1.4 + 0.45 * len(with_agg))
  axes = fig.subplots(1, 3, sharey=True)
  y = np.arange(len(with_agg))[::-1]
  for ax, metric, name in zip(axes, ("iqm", "median", "mean"), ("IQM", "Median", "Mean")):
    est = [getattr(e.aggregates, metric) for e in with_agg]
    values = np.array([s.value for s in est])
    errors = np.array([[s.value - s.low for s in est], [s.high - s.value for s in est]])
    ax.barh(y, values, 0.6, xerr=np.maximum(errors, 0), capsize=4,
            color=[colour[lbl] for lbl in labels], error_kw=dict(elinewidth=1.2))
    for yi, s, hi in zip(y, est, values + errors[1]):
      ax.annotate(f"{s.value:.3f}", (max(hi, s.value, 0.0), yi), xytext=(4, 0),
                  textcoords="offset points", va="center", fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_title(name)
    ax.set_xlabel("human-normalized score")
    ax.grid(axis="x", alpha=0.3)
    lo, hi = min(0.0, float(np.min(values - errors[0]))), float(np.max(values + errors[1]))
    pad = 0.08 * max(hi - lo, 1e-3)
    ax.set_xlim(lo - (pad if lo < 0 else 0), hi + 3 * pad)  # Room for the value labels.
  axes[0].set_yticks(y, labels)
  a = with_agg[0].aggregates
  fig.suptitle(f"Aggregate human-normalized scores, {a.confidence:.0%} stratified-bootstrap CIs "
               f"(over {len(a.games)} game{'s' if len(a.games) != 1 else ''})", fontsize=11)
  return _save(fig, path)


CURVE_PANELS = (("loss", "loss"), ("td_loss", "TD loss"), ("cql_penalty", "CQL penalty"),
                ("online/episode_return", "actors' episode return (last 20)"))


def curves_figure(histories: dict[str, list[dict]], evals: dict[str, list[dict]],
                  path: str) -> Optional[str]:
  """Training curves per run: loss, TD loss, CQL penalty, and evaluation IQM where logged.

  histories: run name -> metrics.jsonl records; evals: run name -> eval.jsonl records.
  """
  panels = [(k, t) for k, t in CURVE_PANELS
            if any(k in h for hist in histories.values() for h in hist)]
  if any(evals.values()):
    panels.append(("eval/iqm", "evaluation IQM (HNS)"))
  if not panels:
    return None
  colour = colours(list(dict.fromkeys([*histories, *evals])))
  fig = _figure(min(4.0 * len(panels), 16.0), 3.6)
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (key, title) in zip(axes, panels):
    source = evals if key.startswith("eval/") else histories
    for name, records in source.items():
      points = sorted((r["step"], r[key]) for r in records if key in r)
      if not points:
        continue
      steps, values = zip(*points)
      ax.plot(steps, values, label=name, color=colour[name],
              marker="o" if len(points) < 12 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("gradient step")
    ax.grid(alpha=0.3)
  handles, names = axes[0].get_legend_handles_labels()
  for ax in axes[1:]:
    for h, n in zip(*ax.get_legend_handles_labels()):
      if n not in names:
        handles.append(h)
        names.append(n)
  fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6),
             frameon=False)
  return _save(fig, path)
