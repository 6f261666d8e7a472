"""The reproduction's report: every group of networks pooled over its training seeds, the
baselines, the claims table judged over seeds, sizes, transfer, and the online curves.

Verdicts. A claim "holds" only where the CIs are apart and at least one side is a group of
networks trained from several seeds, its CI from rliable's stratified bootstrap of runs
(training-seed variance); a baseline's CI (random, best constant action, behaviour data) is over
its episodes. A comparison of two single networks claims nothing ("one network each: not
tested"), since runs of the same settings differ by more than one network's episode CI.

Files in report/: report.md, claims.csv, per_game.csv, aggregates.csv, seeds.csv,
aggregates.png, per_game_normalized.png, online_curves.png (where online fine-tuning ran), and
pooled/ (each group's pooled evaluation).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np

from scaled_ql.evaluation import plots, results, tables
from scaled_ql.reproduce import plans as plan_lib
from scaled_ql.reproduce.plans import METHODS, Plan
from scaled_ql.train.online_log import read_online_returns

_PAPER = {
    "data": "yes: Scaled QL beats the low-quality data it is trained on",
    "bc": "yes: well above BC on low-quality data",
    "constant": "- (the floor in Atari: several games reward holding one button)",
    "mse": "yes: MSE scales worse (Fig. 6)",
    "cql": "yes: CQL is needed offline",
    "hl_gauss": "yes (Farebrother et al. 2024, same setting)",
    "offline": "yes (Sec. 5.2)",
    "online": "yes (Sec. 5.3)",
}


@dataclasses.dataclass
class Entry:
  """One row of the report: a pooled group of networks or a baseline."""
  evaluation: results.Evaluation
  networks: list  # each trained network's own evaluation ([]: a baseline)

  @property
  def runs(self) -> int:
    return len(self.networks)


def write(stages, p: Plan, evaluated: dict, base: dict, transfer: dict) -> dict:
  """report/ (module docstring) from the stages' results; returns {kind: path}."""
  out = stages.path("report")
  os.makedirs(os.path.join(out, "pooled"), exist_ok=True)
  entries, seed_rows = {}, []
  for group in p.groups:
    method, split = group
    names = plan_lib.group_stages(p, group)
    entries[group] = _pool(f"{METHODS[method][0]}, {split}", [evaluated[n] for n in names],
                           os.path.join(out, "pooled", f"{method}_{split}"), p.seed)
    seed_rows += _seed_rows(p, names, entries[group])
  sizes, own_sizes = {}, []
  for size, overrides in p.sizes:
    names = plan_lib.size_stages(p, size, overrides)
    sizes[size] = _pool(f"Scaled QL, low, size {size}", [evaluated[n] for n in names],
                        os.path.join(out, "pooled", f"size_{size}"), p.seed)
    if not plan_lib.size_is_main_group(p, overrides):
      own_sizes.append(sizes[size])
      seed_rows += _seed_rows(p, names, sizes[size])
  baselines = {name: _baseline(path, name) for name, path in base.items()}
  arms = {name: _pool(f"{name.replace('_', ' ')}", paths,
                      os.path.join(out, "pooled", name), p.seed)
          for name, paths in transfer.items()}

  main = list(entries.values()) + own_sizes
  train_baselines = [baselines[k] for k in ("random", "constant", "behaviour_low",
                                            "behaviour_all") if k in baselines]
  shown = [e.evaluation for e in main] + [b.evaluation for b in train_baselines]
  paths = dict(markdown=os.path.join(out, "report.md"),
               claims_csv=os.path.join(out, "claims.csv"),
               per_game_csv=os.path.join(out, "per_game.csv"),
               aggregates_csv=os.path.join(out, "aggregates.csv"),
               seeds_csv=os.path.join(out, "seeds.csv"))
  figures = dict(aggregates=plots.aggregates_figure(shown, os.path.join(out, "aggregates.png")),
                 per_game=plots.per_game_figure(shown,
                                                os.path.join(out, "per_game_normalized.png")))
  curves = online_curves(stages, p, os.path.join(out, "online_curves.png"))
  if curves:
    figures["online_curves"] = curves
  paths.update({k: v for k, v in figures.items() if v})

  claims = claims_table(p, entries, baselines, arms)
  seed_header = ["network", "training seed", "IQM [95% CI over episodes]"] + list(p.train_games)
  prov = stages.provenance
  md = ["# Scaled QL at laptop scale", "",
        f"Made with JAX {prov['jax']} (jaxlib {prov['jaxlib']}), XLA:CPU runtime "
        f"{prov['xla_cpu_runtime']}, {prov['cpu_cores']} CPU core(s) per job, scaled_ql code "
        f"{prov['code']}. Every stage of this report was made under these (stage.json).", "",
        f"Training games {', '.join(p.train_games)}; held-out {p.heldout_game}; variant "
        f"{p.variant[0]} mode {p.variant[1]} difficulty {p.variant[2]}. Data: a logged agent, "
        f"{p.agent_checkpoints} checkpoints x {p.agent_steps_per_checkpoint:,} env steps per "
        f"game (low split: checkpoints {p.low_range[0]}-{p.low_range[1]}). Networks: the "
        f"`{p.pretrain_preset}` preset, {p.steps('low'):,} updates each on the low split and "
        f"{p.steps('all'):,} on all data; the main claim's "
        f"groups from {p.claim_seeds} training seeds, every other network from {p.seeds} (fixed "
        f"in the plan before the run). Evaluation: {p.eval_episodes} episodes per game and "
        f"network, every policy's episodes (the behaviour data's included) cut at "
        f"{p.eval_max_steps:,} agent steps, epsilon 0.001, sticky actions 0.25.", "",
        "## The paper's claims here", "",
        tables.render(["claim", "paper", "here", "holds at this scale?"], claims, "markdown"),
        "", "- " + __doc__.split("\n\n")[1].replace("\n", " "), "",
        "## Aggregate human-normalized scores", "",
        tables.aggregate_table(shown, "markdown"), ""]
  md += [f"- {n}" for n in tables.notes(shown)] + [""]
  if figures.get("aggregates"):
    md += ["![aggregate scores](aggregates.png)", ""]
  md += ["## Per game", "", "Mean raw return and HNS per game (a group: all its seeds' episodes).",
         "", tables.comparison_table(shown, "markdown"), "",
         "How often each greedy policy takes its most frequent action (the mean over a group's "
         "networks; 100% is a constant policy):", "",
         tables.render(["network group"] + list(p.train_games),
                       [[e.label] + [_share(e.game(g)) for g in p.train_games]
                        for e in [m.evaluation for m in main]], "markdown"), ""]
  if figures.get("per_game"):
    md += ["![per-game normalized scores](per_game_normalized.png)", ""]
  md += ["## Every network alone", "",
         "Each trained network's own evaluation (CIs over its episodes only).", "",
         tables.render(seed_header, seed_rows, "markdown"), ""]
  fit = size_fit(p, sizes)
  if fit:
    md += ["## Score against parameters", "", fit, ""]
  if arms:
    md += transfer_section(p, arms, baselines, curves)
  results.atomic_write(paths["markdown"], "\n".join(md))
  results.atomic_write(paths["claims_csv"], results.to_csv(
      [dict(zip(["claim", "paper", "here", "holds at this scale?"], r)) for r in claims]))
  everything = shown + [a.evaluation for a in arms.values()] + [
      b.evaluation for k, b in baselines.items() if b not in train_baselines]
  results.atomic_write(paths["per_game_csv"], results.to_csv(results.game_rows(everything)))
  results.atomic_write(paths["aggregates_csv"],
                       results.to_csv(results.aggregate_rows(everything)))
  results.atomic_write(paths["seeds_csv"], results.to_csv(
      [dict(zip(seed_header, r)) for r in seed_rows]))
  return paths


def _pool(label: str, paths: Sequence[str], out: str, seed: int) -> Entry:
  """A group's evaluations, pooled over its seeds where it has several (written to `out`)."""
  agents = [results.read(path)[0] for path in paths]
  if len(agents) == 1:
    e = dataclasses.replace(agents[0], label=f"{label}, 1 network")
  else:
    e = results.pooled(agents, f"{label}, {len(agents)} seeds", seed=seed)
  results.write(out, e)
  return Entry(e, agents)


def _baseline(path: str, name: str) -> Entry:
  e = results.read(path)[0]
  if name.startswith("behaviour_"):
    e = dataclasses.replace(e, label=f"behaviour data, {name.split('_', 1)[1]}")
  elif name.startswith(("heldout_", "variant_")):
    e = dataclasses.replace(e, label=f"{e.label} ({name.split('_')[0]})")
  return Entry(e, [])


def _seed_rows(p: Plan, names: Sequence[str], entry: Entry) -> list[list[str]]:
  """A row per network of a pooled entry: its stage, seed, IQM and per-game returns."""
  rows = []
  for k, (name, a) in enumerate(zip(names, entry.networks, strict=True)):
    rows.append([name, str(p.seed + k), _estimate(_iqm(a))]
                + [f"{a.game(g).mean_return:,.1f}" if a.game(g) else "-"
                   for g in p.train_games])
  return rows


def _iqm(e: results.Evaluation) -> Optional[list[float]]:
  a = e.aggregates
  return [a.iqm.value, a.iqm.low, a.iqm.high] if a else None


def _estimate(v) -> str:
  return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "-"


def _share(g) -> str:
  return tables.top_action(g) if g is not None else "-"


def compare(a: Optional[Entry], b: Optional[Entry]) -> tuple[str, str]:
  """('a [lo, hi] vs b [lo, hi]', verdict) of two entries' IQMs (module docstring)."""
  if a is None or b is None or not _iqm(a.evaluation) or not _iqm(b.evaluation):
    return "not run", "-"
  x, y = _iqm(a.evaluation), _iqm(b.evaluation)
  text = f"{_estimate(x)} vs {_estimate(y)}"
  runs = [e.runs for e in (a, b) if e.runs]
  if all(r == 1 for r in runs):
    return text, "one network each: not tested"
  seeds = f"{' vs '.join(str(r) for r in runs)} seeds"
  if x[1] > y[2]:
    return text, f"yes, CIs apart ({seeds})"
  if x[0] > y[0]:
    return text, f"only the point estimate, CIs overlap ({seeds})"
  return text, f"no ({seeds})"


def claims_table(p: Plan, entries: dict, baselines: dict, arms: dict) -> list[list[str]]:
  g, b = entries.get, baselines.get
  a = plan_lib.ABLATION_SPLIT
  split = "low-quality split" if a == "low" else "all data"
  rows = [
      ("Scaled QL > behaviour data (low-quality split)", g(("scaled_ql", "low")),
       b("behaviour_low"), "data"),
      ("Scaled QL > BC (low-quality split)", g(("scaled_ql", "low")), g(("bc", "low")), "bc"),
      ("Scaled QL > best constant action (low-quality split)", g(("scaled_ql", "low")),
       b("constant"), "constant"),
      ("Scaled QL > best constant action (all data)", g(("scaled_ql", "all")), b("constant"),
       "constant"),
      ("Scaled QL > behaviour data (all data)", g(("scaled_ql", "all")), b("behaviour_all"),
       "data"),
      (f"C51 + CQL > MSE + CQL ({split})", g(("scaled_ql", a)), g(("mse_cql", a)), "mse"),
      (f"CQL > offline C51, alpha 0 ({split})", g(("scaled_ql", a)), g(("c51", a)), "cql"),
      (f"HL-Gauss + CQL > C51 + CQL ({split})", g(("hl_gauss_cql", a)), g(("scaled_ql", a)),
       "hl_gauss"),
      ("pre-trained > scratch, offline fine-tuning on a held-out game",
       arms.get("offline_pretrained"), arms.get("offline_scratch"), "offline"),
      ("pre-trained > scratch, online fine-tuning on a variant (end)",
       arms.get("online_pretrained"), arms.get("online_scratch"), "online"),
      ("online fine-tuning improves the pre-trained network (end > zero-shot)",
       arms.get("online_pretrained"), arms.get("online_zero_shot"), "online"),
  ]
  out = []
  for claim, a, other, paper in rows:
    if a is None and other is None:
      continue
    here, holds = compare(a, other)
    out.append([claim, _PAPER[paper], here, holds])
  return out


def size_fit(p: Plan, sizes: dict) -> Optional[str]:
  """IQM against parameter count over the size groups: a power law where the scores allow."""
  from scaled_ql import networks  # pylint: disable=g-import-not-at-top
  from scaled_ql.reproduce import run  # pylint: disable=g-import-not-at-top
  points = []
  for size, overrides in p.sizes:
    iqm = _iqm(sizes[size].evaluation)
    if iqm is None:
      continue
    config = run._pretrain_config(p, "", "low", {}, dict(overrides))  # pylint: disable=protected-access
    model = networks.build_q_network(config.model, len(config.games))
    points.append((size, networks.count_params(networks.param_shapes(model)), iqm))
  if len(points) < 2:
    return None
  n = np.array([q[1] for q in points], float)
  y = np.array([q[2][0] for q in points], float)
  lines = [f"- {s}: {int(k):,} parameters, IQM {_estimate(v)} ({p.seeds} seeds)"
           for s, k, v in points]
  if np.all(y > 0):
    slope, log_a = np.polyfit(np.log(n), np.log(y), 1)
    text = f"power law IQM = {math.exp(log_a):.3g} x N^{slope:.3f} (point estimates)"
  else:
    slope, _ = np.polyfit(np.log10(n), y, 1)
    text = (f"no power law (an IQM <= 0 has no logarithm); IQM changes by {slope:+.3f} per "
            f"10x parameters (point estimates)")
  return "\n".join(lines + ["", text])


def transfer_section(p: Plan, arms: dict, baselines: dict, curves: Optional[str]) -> list[str]:
  rows = []
  for name, arm in arms.items():
    e = arm.evaluation
    game = e.games[0]
    rows.append([e.label, str(arm.runs), game.game, f"{game.mean_return:,.1f}",
                 _estimate(_iqm(e))])
  for key in ("heldout_random", "heldout_behaviour", "variant_random", "variant_constant"):
    if key in baselines:
      e = baselines[key].evaluation
      rows.append([e.label, "-", e.games[0].game, f"{e.games[0].mean_return:,.1f}",
                   _estimate(_iqm(e))])
  md = ["## Transfer", "",
        f"Offline: {p.finetune_offline_steps:,} updates on the held-out game's data. Online: "
        f"{p.finetune_online_env_steps:,} env steps on the variant; exploration per arm "
        + "; ".join(f"{arm} epsilon {start} falling to 0.01 over the first {share:.0%} of the "
                    f"budget" for arm, start, share in p.online_schedule)
        + ". Zero-shot: the pre-trained network on the variant before fine-tuning.", "",
        tables.render(["policy", "networks", "game", "mean return", "HNS [95% CI]"], rows,
                      "markdown"), ""]
  if curves:
    md += ["Online fine-tuning's episode returns over env steps (the mean over each arm's "
           "seeds of the episodes ended in each tenth of the budget):", "",
           "![online curves](online_curves.png)", ""]
  return md


def online_curves(stages, p: Plan, path: str) -> Optional[str]:
  """Plots `online_curve_values` at `path` (None: no online stage, or no episode ended)."""
  curves = online_curve_values(stages, p) if p.finetune_online_env_steps else {}
  if not curves:
    return None
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.5, 3.8), dpi=110, layout="constrained")
  ax = fig.add_subplot()
  edges = np.linspace(0, p.finetune_online_env_steps, 11)
  centres = (edges[:-1] + edges[1:]) / 2
  for init, ys in curves.items():
    ax.plot(centres, ys, marker="o", label=f"{init} ({p.seeds} seeds)")
  ax.set_xlabel("env steps")
  ax.set_ylabel("episode return")
  ax.set_title(f"Online fine-tuning on {p.variant[0]} mode {p.variant[1]} difficulty "
               f"{p.variant[2]}")
  ax.legend()
  fig.savefig(path)
  return path


def online_curve_values(stages, p: Plan) -> dict:
  """{arm: its mean episode return in each tenth of the env-step budget}: each seed's mean
  over the episodes that ended in that tenth, averaged over the seeds that have one (NaN where
  none has)."""
  edges = np.linspace(0, p.finetune_online_env_steps, 11)
  curves = {}
  for init in ("pretrained", "scratch"):
    per_seed = []
    for k in range(p.seeds):
      points = read_online_returns(
          stages.path(plan_lib.seed_stage(f"transfer/online_{init}", k)))
      if not points:
        continue
      steps, rets = np.array(points, float).T
      bins = np.clip(np.digitize(steps, edges[1:-1]), 0, 9)
      per_seed.append([rets[bins == i].mean() if np.any(bins == i) else np.nan
                       for i in range(10)])
    if per_seed:  # np.nanmean's sums and counts, without its warning for an empty tenth.
      values = np.array(per_seed, float)
      have = ~np.isnan(values)
      count = have.sum(axis=0)
      curves[init] = np.where(count > 0, np.where(have, values, 0.0).sum(axis=0)
                              / np.maximum(count, 1), np.nan)
  return curves
