"""A report comparing runs: Markdown and CSV tables and PNG figures from evaluation results.

Each run is a pre-training workdir (or an eval directory / results.json) that `launch.evaluate`
has scored. Its agent is shown under the run's name; the baselines stored with the results
(random policy, behaviour data) are shown once, or once per run where they differ. Training
curves come from the run's metrics.jsonl and, where pre-training evaluated periodically, its
eval.jsonl.

Files written into the output directory:
  report.md, per_game.csv, aggregates.csv, per_game_normalized.png, aggregates.png,
  learning_curves.png (the last only where some run has training logs).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from scaled_ql import run_meta
from scaled_ql.evaluation import periodic, plots, results, tables

METRICS_LOG = "metrics.jsonl"  # Written by the training loop (scaled_ql.train).
ONLINE_LOG = "online.jsonl"  # Written by online fine-tuning (scaled_ql.train.online).


@dataclasses.dataclass
class Run:
  name: str
  results_path: str
  agent: results.Evaluation
  baselines: list[results.Evaluation]
  checkpoint: dict
  workdir: Optional[str]
  history: list[dict]  # metrics.jsonl records, by step.
  evals: list[dict]  # eval.jsonl records, by step.
  config: dict  # The workdir's flat config.json ({} without one).


def read_jsonl(path: str) -> list[dict]:
  """Records of a JSON-lines log, the last one per step (a resumed run may repeat steps)."""
  if not os.path.isfile(path):
    return []
  by_step = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not valid JSON ({e}).") from e
      by_step[record.get("step")] = record
  return [by_step[k] for k in sorted(by_step, key=lambda s: (s is None, s))]


def _workdir(path: str, checkpoint: dict) -> Optional[str]:
  """The pre-training workdir of a run path, where one can be found."""
  path = os.path.abspath(path)
  candidates = [path, os.path.dirname(path), os.path.dirname(os.path.dirname(path)),
                checkpoint.get("workdir")]
  for c in candidates:
    if c and os.path.isfile(os.path.join(c, METRICS_LOG)):
      return c
  return checkpoint.get("workdir")


def load_run(path: str, name: Optional[str] = None) -> Run:
  """A run from a workdir, an eval directory or a results.json (see `results.find`)."""
  results_path = results.find(path)
  agent, baselines, checkpoint = results.read(results_path)
  workdir = _workdir(path, checkpoint)
  if name is None:
    name = os.path.basename(os.path.normpath(workdir or os.path.dirname(results_path)))
  history = read_jsonl(os.path.join(workdir, METRICS_LOG)) if workdir else []
  evals = read_jsonl(os.path.join(workdir, periodic.EVAL_LOG)) if workdir else []
  # Online fine-tuning: the actors' episode returns (WORKDIR/online.jsonl), as a curve.
  online = read_jsonl(os.path.join(workdir, ONLINE_LOG)) if workdir else []
  history = history + [{"step": r["step"], "online/episode_return": r["mean_return_last_20"]}
                       for r in online if r.get("mean_return_last_20") is not None]
  config = run_meta.read_config(workdir)
  return Run(name, results_path, dataclasses.replace(agent, label=name), baselines, checkpoint,
             workdir, history, evals, config)


def _loss(run: Run) -> str:
  kind = run.checkpoint.get("loss_kind") or run.config.get("loss.kind") or "?"
  alpha = run.config.get("loss.cql_alpha")
  return f"{kind}, CQL alpha {alpha}" if kind != "bc" and alpha is not None else kind


def _fingerprint(e: results.Evaluation) -> tuple:
  return tuple((g.game, g.episodes, round(g.mean_return, 9)) for g in e.games)


def policies(runs: Sequence[Run]) -> list[results.Evaluation]:
  """The runs' agents, then their baselines, each distinct baseline once."""
  out = [r.agent for r in runs]
  seen = {}
  for run in runs:
    for b in run.baselines:
      if seen.get(b.label) == _fingerprint(b):
        continue
      label = b.label if b.label not in seen else f"{b.label} ({run.name})"
      seen.setdefault(b.label, _fingerprint(b))
      out.append(dataclasses.replace(b, label=label))
  return out


def _run_table(runs: Sequence[Run]) -> str:
  header = ["run", "checkpoint", "step", "loss", "games", "episodes/game", "epsilon",
            "episode cap", "seed"]
  rows = []
  for r in runs:
    s = r.agent.settings
    cap = (f"{s['max_steps_per_episode']} steps" if s.get("max_steps_per_episode")
           else f"{s.get('max_episode_frames', 108_000):,} frames")
    rows.append([r.name, r.checkpoint.get("path", "?"), str(r.checkpoint.get("step", "?")),
                 _loss(r), str(len(r.agent.games)),
                 str(s.get("episodes_per_game", "?")), str(s.get("epsilon", "?")), cap,
                 str(s.get("seed", "?"))])
  return tables.render(header, rows, "markdown")


def write_report(runs: Sequence[Run], out_dir: str, title: str = "Evaluation report") -> dict:
  """Writes the report files (module docstring) into `out_dir`; returns {kind: path}."""
  if not runs:
    raise ValueError("no runs to report.")
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"run names must be distinct, got {names} (pass --names).")
  os.makedirs(out_dir, exist_ok=True)
  everything = policies(runs)
  paths = {}
  figures = dict(
      per_game=plots.per_game_figure(everything,
                                     os.path.join(out_dir, "per_game_normalized.png")),
      aggregates=plots.aggregates_figure(everything, os.path.join(out_dir, "aggregates.png")),
      curves=plots.curves_figure({r.name: r.history for r in runs},
                                 {r.name: r.evals for r in runs},
                                 os.path.join(out_dir, "learning_curves.png")))
  paths.update({k: v for k, v in figures.items() if v})

  md = [f"# {title}", "", "## Runs", "", _run_table(runs), ""]
  md += ["## Aggregate human-normalized scores", "",
         tables.aggregate_table(everything, "markdown"), ""]
  md += [f"- {n}" for n in tables.notes(everything)] + [""]
  if figures["aggregates"]:
    md += ["![aggregate scores](aggregates.png)", ""]
  md += ["## Per game", "", "Mean raw episode return and human-normalized score (HNS) per game.",
         "", tables.comparison_table(everything, "markdown"), ""]
  if figures["per_game"]:
    md += ["![per-game normalized scores](per_game_normalized.png)", ""]
  md += ["## Learning curves", ""]
  if figures["curves"]:
    periodic_runs = [f"{r.name}: {r.evals[-1].get('episodes_per_game')} episode(s) per game"
                     + (f", cut at {r.evals[-1]['max_steps_per_episode']} steps"
                        if r.evals[-1].get("max_steps_per_episode") else "")
                     for r in runs if r.evals]
    md += ["Training losses from each run's metrics.jsonl"
           + (f"; evaluation IQM during pre-training from eval.jsonl ({'; '.join(periodic_runs)})."
              if periodic_runs else "; no run logged periodic evaluations (eval.jsonl)."),
           "", "![learning curves](learning_curves.png)", ""]
  else:
    md += ["No run has training logs (metrics.jsonl) next to its results.", ""]
  paths["markdown"] = os.path.join(out_dir, "report.md")
  paths["per_game_csv"] = os.path.join(out_dir, "per_game.csv")
  paths["aggregates_csv"] = os.path.join(out_dir, "aggregates.csv")
  results.atomic_write(paths["per_game_csv"], results.to_csv(results.game_rows(everything)))
  results.atomic_write(paths["aggregates_csv"],
                        results.to_csv(results.aggregate_rows(everything)))
  results.atomic_write(paths["markdown"], "\n".join(md))
  return paths
