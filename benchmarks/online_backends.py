r"""Online fine-tuning's two replay backends side by side: the same variant, budget and seeds
through `launch.finetune` with config.online.replay=local and =reverb (each run a subprocess,
one at a time), then per backend and seed the mean return of the episodes that ended in the
second half of the budget (`finetuning.read_online_returns`), the mean over seeds with a
bootstrap 95% CI, and the throughput (env steps/s and updates/s between the first and last
lines of online.jsonl, so start-up is not counted). Needs the pinned stack (Reverb) for the
reverb arm; without it only the local arm runs.

  python -m benchmarks.online_backends --online_backbone=ARTIFACT --online_seeds=0,1,2 \
      --online_variant=breakout:12:1 --online_env_steps=2500 [--online_epsilon=1.0]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

from scaled_ql.train import finetuning
from scaled_ql.train.online import reverb_installed

_BACKBONE = flags.DEFINE_string("online_backbone", None, "Backbone artifact (launch.export).")
_SEEDS = flags.DEFINE_list("online_seeds", ["0", "1", "2"], "Training seeds per backend.")
_VARIANT = flags.DEFINE_string("online_variant", "breakout:12:1", "GAME:MODE:DIFFICULTY.")
_ENV_STEPS = flags.DEFINE_integer("online_env_steps", 2500, "Env-step budget per run.")
_EPSILON = flags.DEFINE_float("online_epsilon", 0.05, "Final epsilon (1.0: the random policy "
                              "throughout, a control of the acting and recording paths).")
_BACKENDS = flags.DEFINE_list("online_backends", ["local", "reverb"], "Backends to compare.")
_OUT = flags.DEFINE_string("online_out", "", "Where to write the runs and results.json.")


def _bootstrap_ci(values, reps: int = 10_000, seed: int = 0):
  rng = np.random.default_rng(seed)
  values = np.asarray(values, float)
  means = rng.choice(values, size=(reps, len(values))).mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _throughput(workdir: str) -> tuple[float, float]:
  with open(os.path.join(workdir, "online.jsonl")) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  first, last = lines[0], lines[-1]
  dt = max(last["time"] - first["time"], 1e-9)
  return (last["env_steps"] - first["env_steps"]) / dt, (last["step"] - first["step"]) / dt


def one_run(backend: str, seed: int, workdir: str) -> dict:
  game, mode, difficulty = _VARIANT.value.split(":")
  steps = _ENV_STEPS.value
  args = ["--config=configs/finetune.py:online_cpu", f"--backbone={_BACKBONE.value}",
          f"--workdir={workdir}", f"--config.online.replay={backend}", f"--config.seed={seed}",
          f"--config.online.game={game}", f"--config.games={game}",
          f"--config.online.mode={mode}", f"--config.online.difficulty={difficulty}",
          f"--config.online.env_steps={steps}", "--config.online.min_replay_size=200",
          f"--config.online.epsilon={_EPSILON.value}", "--config.online.epsilon_start=1.0",
          f"--config.online.epsilon_decay_steps={steps // 2}", "--config.batch_size=32",
          "--config.log_every=10", "--config.checkpoint_every=100000", "--config.num_steps=100000"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  t = time.time()
  out = subprocess.run([sys.executable, "-m", "launch.finetune", *args], env=env,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{backend} seed {seed} failed:\n{out.stderr[-3000:]}")
  returns = finetuning.read_online_returns(workdir)
  late = [r for s, r in returns if s > steps // 2]
  env_rate, update_rate = _throughput(workdir)
  return dict(backend=backend, seed=seed, episodes=len(returns), late_episodes=len(late),
              mean_return_late=float(np.mean(late)) if late else float("nan"),
              mean_return_all=float(np.mean([r for _, r in returns])) if returns else float("nan"),
              env_steps_per_s=env_rate, updates_per_s=update_rate, wall_s=time.time() - t)


def run() -> None:
  if not _BACKBONE.value:
    raise SystemExit("--online_backbone=ARTIFACT is required (python -m launch.export).")
  out = _OUT.value or tempfile.mkdtemp(prefix="online_backends_")
  backends = [b for b in _BACKENDS.value if b == "local" or reverb_installed()]
  rows = []
  for backend in backends:
    for seed in map(int, _SEEDS.value):
      row = one_run(backend, seed, os.path.join(out, f"{backend}_{seed}"))
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(f"\n{_VARIANT.value}, {_ENV_STEPS.value} env steps, epsilon 1.0 -> {_EPSILON.value}; "
        f"mean return of episodes ending in the second half")
  print(f"{'backend':<8}{'per seed':<32}{'mean':>8}  {'95% CI':<18}{'env st/s':>9}{'upd/s':>8}")
  summary = {}
  for backend in backends:
    mine = [r for r in rows if r["backend"] == backend]
    values = [r["mean_return_late"] for r in mine]
    lo, hi = _bootstrap_ci(values)
    summary[backend] = dict(mean=float(np.mean(values)), ci=[lo, hi],
                            env_steps_per_s=float(np.mean([r["env_steps_per_s"] for r in mine])),
                            updates_per_s=float(np.mean([r["updates_per_s"] for r in mine])))
    print(f"{backend:<8}{', '.join(f'{v:.2f}' for v in values):<32}{np.mean(values):>8.2f}  "
          f"[{lo:.2f}, {hi:.2f}]{'':<4}{summary[backend]['env_steps_per_s']:>9.1f}"
          f"{summary[backend]['updates_per_s']:>8.1f}")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(dict(variant=_VARIANT.value, env_steps=_ENV_STEPS.value, epsilon=_EPSILON.value,
                   runs=rows, summary=summary), f, indent=1)
  print(f"results in {os.path.join(out, 'results.json')}")


if __name__ == "__main__":
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  common.run(lambda _: run())
