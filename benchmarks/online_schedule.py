r"""The pre-trained arm's exploration schedule of `launch.reproduce`'s online fine-tuning, chosen
on a variant of another game than the report's (the report's is Qbert difficulty 1).

A Scaled QL network of a `launch.reproduce` work directory (default: the low split's, seed 0)
is exported and fine-tuned online on the variant with each candidate schedule (epsilon at env
step 0, the share of the budget over which it falls to 0.01) from several seeds, at the
default plan's budget and settings (`reproduce.run`'s online fine-tuning config); each
fine-tuned network and the pre-trained one (zero-shot) are evaluated under the plan's protocol.
Prints, per schedule, the mean greedy return over seeds and episodes with a bootstrap 95% CI
over seeds, and the mean return of the actors' episodes in the last 30% of the budget. Jobs
run two at a time, one core each (`reproduce.workers`). Cached: a rerun keeps finished runs.

  python benchmarks/online_schedule.py --workdir=runs/reproduce_q --out=runs/schedule \
      --variant=ms_pacman:2:0 --seeds=0,1 --schedules=1.0:0.2,0.3:0.1,0.1:0.1,0.01:0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np


def _finetune_and_evaluate(p, backbone: str, folder: str, start: float, share: float,
                           seed: int) -> list:
  from scaled_ql.evaluation import results  # pylint: disable=g-import-not-at-top
  from scaled_ql.reproduce import run  # pylint: disable=g-import-not-at-top
  from scaled_ql.train import finetuning  # pylint: disable=g-import-not-at-top
  game, mode, difficulty = p.variant
  evaluation = os.path.join(folder, "eval")
  if not os.path.exists(os.path.join(evaluation, results.RESULTS_FILE)):
    c = run._finetune_config(p, "online", "pretrained", "", seed)  # pylint: disable=protected-access
    with c.unlocked():
      c.online.epsilon_start = start
      c.online.epsilon_decay_steps = int(share * p.finetune_online_env_steps)
    finetuning.finetune(c, folder, backbone)
    run._evaluate_agent(p, folder, evaluation, (game,), mode=mode, difficulty=difficulty)  # pylint: disable=protected-access
  e, _, _ = results.read(evaluation)
  online = finetuning.read_online_returns(folder)
  late = [r for s, r in online if s >= 0.7 * p.finetune_online_env_steps]
  return [[ep.episode_return for ep in e.episodes], late]


def _zero_shot(p, source: str, folder: str) -> list:
  from scaled_ql.evaluation import results  # pylint: disable=g-import-not-at-top
  from scaled_ql.reproduce import run  # pylint: disable=g-import-not-at-top
  game, mode, difficulty = p.variant
  if not os.path.exists(os.path.join(folder, results.RESULTS_FILE)):
    run._evaluate_agent(p, source, folder, (game,), mode=mode, difficulty=difficulty)  # pylint: disable=protected-access
  e, _, _ = results.read(folder)
  return [[ep.episode_return for ep in e.episodes], []]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="A launch.reproduce work directory.")
  parser.add_argument("--network", default="pretrain/scaled_ql_low", help="Its stage to start from.")
  parser.add_argument("--out", required=True)
  parser.add_argument("--variant", default="ms_pacman:2:0")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--schedules", default="1.0:0.2,0.3:0.1,0.1:0.1,0.01:0")
  parser.add_argument("--env_steps", type=int, default=0, help="0: the default plan's budget.")
  parser.add_argument("--workers", type=int, default=2)
  args = parser.parse_args()

  from scaled_ql import app  # pylint: disable=g-import-not-at-top
  app.start_jax(None, "nature")
  from scaled_ql import envs, export  # pylint: disable=g-import-not-at-top
  from scaled_ql.reproduce import plans, workers  # pylint: disable=g-import-not-at-top

  p = dataclasses.replace(plans.plan("default"), variant=plans.parse_variant(args.variant))
  if args.env_steps:
    p = dataclasses.replace(p, finetune_online_env_steps=args.env_steps)
  game, mode, difficulty = p.variant
  modes, difficulties = envs.available_variants(game)
  if mode not in modes or difficulty not in difficulties:
    raise SystemExit(f"{game} has no mode {mode}, difficulty {difficulty}: modes {modes}, "
                     f"difficulties {difficulties}.")
  source = os.path.join(args.workdir, args.network)
  backbone = os.path.join(args.out, "backbone")
  if not os.path.exists(backbone):
    export.export_checkpoint(source, backbone, formats=("orbax",))
  schedules = [tuple(float(x) for x in s.split(":")) for s in args.schedules.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  jobs = [workers.Job("zero_shot", _zero_shot, (p, source, os.path.join(args.out, "zero_shot")),
                      os.path.join(args.out, "logs", "zero_shot.log"))]
  for start, share in schedules:
    for seed in seeds:
      name = f"eps{start:g}_over{share:g}_seed{seed}"
      jobs.append(workers.Job(name, _finetune_and_evaluate,
                              (p, backbone, os.path.join(args.out, name), start, share, seed),
                              os.path.join(args.out, "logs", name + ".log")))
  out = workers.Workers(args.workers).map(jobs)
  rows = {"zero-shot (no fine-tuning)": [out[0]]}
  for i, (start, share) in enumerate(schedules):
    rows[f"epsilon {start:g} -> 0.01 over {share:.0%}"] = out[1 + i * len(seeds):
                                                            1 + (i + 1) * len(seeds)]
  rng = np.random.default_rng(0)
  summary = {}
  print(f"\n{p.variant[0]} mode {p.variant[1]} difficulty {p.variant[2]}, "
        f"{p.finetune_online_env_steps:,} env steps, seeds {seeds}, from {source}")
  print("| schedule | greedy return (mean over seeds, 95% CI over seeds) | actors' return, last 30% |")
  print("|---|---:|---:|")
  for label, per_seed in rows.items():
    means = np.array([np.mean(r) for r, _ in per_seed])
    boot = rng.choice(means, size=(10_000, len(means))).mean(axis=1)
    late = [x for _, l in per_seed for x in l]
    summary[label] = dict(per_seed=means.tolist(), late=float(np.mean(late)) if late else None)
    print(f"| {label} | {means.mean():.1f} [{np.percentile(boot, 2.5):.1f}, "
          f"{np.percentile(boot, 97.5):.1f}] | "
          f"{np.mean(late):.1f} ({len(late)} episodes) |" if late else
          f"| {label} | {means.mean():.1f} [{np.percentile(boot, 2.5):.1f}, "
          f"{np.percentile(boot, 97.5):.1f}] | - |")
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
