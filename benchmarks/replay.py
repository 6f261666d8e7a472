"""Replay: online fine-tuning's Reverb layer (`scaled_ql.replay`, server in its own process):
inserts/s of 84x84x4 transitions from one TransitionWriter and sampled transitions/s through
ReplayBatches; then the whole online loop (`launch.finetune` in a subprocess). Needs the
pinned stack's Reverb.

  python -m benchmarks.replay
"""
from __future__ import annotations

import glob
import json
import os
import tempfile

from absl import flags
import jax
import numpy as np

from benchmarks import common
from scaled_ql import networks

_REPLAY_INSERTS = flags.DEFINE_integer("replay_inserts", 3000,
                                       "Transitions written per insert measurement (replay).")
_REPLAY_BATCHES = flags.DEFINE_integer("replay_batches", 20,
                                       "Batches of 256 timed through ReplayBatches (replay).")


def _replay_stacks(frames: np.ndarray, count: int):
  """`count` consecutive 4-frame stacks (envs.FrameStacker) cycling through `frames`."""
  from scaled_ql import envs  # pylint: disable=g-import-not-at-top

  stacker = envs.FrameStacker()
  yield stacker.reset(frames[0])
  for t in range(1, count):
    yield stacker.push(frames[t % len(frames)])


def run() -> None:
  """Online fine-tuning's Reverb layer (scaled_ql.replay), server in its own process.

  Inserts/s: one TransitionWriter (1 env, n = 3) writing transitions of 84x84x4 stacks, timed
  to the server's confirmation (flush), with real Pong frames from the emulator (what Reverb's
  chunk compression sees in practice) and with random frames (incompressible: the worst
  case). Sampled transitions/s: ReplayBatches at batch 256 from a table of the Pong
  transitions, after warm-up. Wall-clock rates: the server's CPU is another process's, so the
  per-core figures of the other sections would flatter it. Goals (ours; the issue sets none):
  inserts >= 2,000/s, an emulator's single-core step rate with the policy, so that writing
  never paces an actor; samples >= 10,000/s, 40 learner updates/s at batch 256.
  """
  from scaled_ql import envs, replay  # pylint: disable=g-import-not-at-top

  count = _REPLAY_INSERTS.value
  rng = np.random.default_rng(0)
  env = envs.AtariEnv("pong", 0)
  frames = [env.reset()]
  while len(frames) < 1000:
    frame, _, terminated, truncated = env.step(int(rng.integers(env.num_actions)))
    frames.append(env.reset() if terminated or truncated else frame)
  sources = {"Pong frames": np.stack(frames),
             "random frames": rng.integers(0, 256, (1000, 84, 84), dtype=np.uint8)}
  tables = replay.ReplayTables(max_size=2 * count + 1000, min_size_to_sample=1)
  print(f"== replay: Reverb {tables.max_size:,}-transition table in a server process, one "
        f"TransitionWriter (n = 3), ReplayBatches at batch 256 (prefetch 2); wall-clock rates",
        flush=True)
  with replay.start_server(tables=tables) as server:
    for i, (name, source) in enumerate(sources.items()):
      with replay.TransitionWriter(server.address, n_step=3, gamma=0.99, num_envs=1) as writer:
        stacks = _replay_stacks(source, count + 1)
        current = next(stacks)
        actions, rewards = rng.integers(0, 6, count), rng.choice([0.0, 1.0], count)
        with common.timed() as t:
          for step, following in enumerate(stacks):
            writer.add(0, current, int(actions[step]), float(rewards[step]), False,
                       step % 500 == 499, following, 0)
            current = following
          writer.flush()
      common.report(f"inserts / s, {name}", count / t["wall"], 2_000, "transitions/s",
                    note=f"({count:,} transitions of {84 * 84 * 4:,}-byte stacks; episodes of 500 "
                         f"steps; {t['cpu'] / t['wall']:.0%} of a core in this process)")
      if i == 0:  # Sample only Pong transitions.
        with replay.ReplayBatches(server.address, 256, timeout_s=60) as batches:
          for _ in range(3):
            next(batches)
          with common.timed() as t:
            for _ in range(_REPLAY_BATCHES.value):
              next(batches)
        n = 256 * _REPLAY_BATCHES.value
        common.report("sampled transitions / s, ReplayBatches", n / t["wall"], 10_000,
                      "transitions/s",
                      note=f"(batch 256 of {count:,} Pong transitions; "
                           f"{t['cpu'] / t['wall']:.0%} of a core in this process, the "
                           f"server's not counted)")
  _online_loop_rates()


_ONLINE_ENV_STEPS = flags.DEFINE_integer("online_env_steps", 6000,
                                         "Env-step budget of each timed online loop (replay).")


def _online_run(backbone: str, workdir: str, samples_per_insert: float,
                *extra: str) -> dict:
  """Runs `launch.finetune` (online_cpu) and reads its rates from its own logs: env steps/s
  from the actors' progress lines (first to last line of any actor: they start once the first
  parameters are published), learner updates/s from its log (first to last line)."""
  out = common.run_python(["launch.finetune", "--config=configs/finetune.py:online_cpu",
              f"--backbone={backbone}", f"--workdir={workdir}",
              f"--config.online.env_steps={_ONLINE_ENV_STEPS.value}", "--config.log_every=25",
              f"--config.online.samples_per_insert={samples_per_insert}", *extra],
             dict(os.environ, JAX_PLATFORMS="cpu"), "the online loop")
  with open(os.path.join(workdir, "online.jsonl")) as f:
    log = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    wait = float(np.median([json.loads(line)["data_wait_fraction"] for line in f]))
  actors = []
  for path in sorted(glob.glob(os.path.join(workdir, "online", "launch_0", "actor_*.jsonl"))):
    with open(path) as f:
      actors.append([json.loads(line) for line in f if line.strip()])
  if len(log) < 2 or not actors or min(len(a) for a in actors) < 2:
    raise RuntimeError(f"the online loop logged too little:\n{out[-2000:]}")
  start = min(a[0]["time"] for a in actors)
  seconds = max(a[-1]["time"] for a in actors) - start
  steps = sum(a[-1]["env_steps"] for a in actors)
  return dict(env=steps / seconds,
              updates=(log[-1]["step"] - log[0]["step"]) / (log[-1]["time"] - log[0]["time"]),
              wait=wait)


def _online_loop_rates() -> None:
  """The whole online loop (`launch.finetune` with configs/finetune.py:online_cpu: a server
  process, 2 actor processes x 2 Freeway mode-1 emulators, the learner at batch 32), from a
  freshly initialised demo-sized backbone; start-up not counted. Twice: with the preset's
  rate limiter (8 samples per inserted transition: env steps are then paced by the learner,
  env steps/s = updates/s x 32 / 8) and without one (the actors' own pace beside a learner
  that trains on the same cores). Goals (ours): the limiter holds its ratio within 10%; the
  unpaced actors keep >= 1,000 env steps/s on this 2-core machine, half of its cores'
  emulation rate, with the learner running."""
  from scaled_ql import export  # pylint: disable=g-import-not-at-top

  demo = common.load_config("pretrain", "demo")
  with tempfile.TemporaryDirectory() as tmp:
    model = networks.build_q_network(demo.model, len(demo.games))
    backbone = os.path.join(tmp, "backbone")
    export.write_artifact(backbone, model_config=demo.model.to_dict(),
                          params=networks.init_params(model, jax.random.PRNGKey(0)),
                          games=demo.games, loss_kind="c51", step=0)
    paced = _online_run(backbone, os.path.join(tmp, "paced"), 8.0)
    # Without a limiter the learner does not wait for the actors: stop it after 400 updates.
    free = _online_run(backbone, os.path.join(tmp, "free"), 0.0, "--config.num_steps=400")
  print(f"  online loop, {_ONLINE_ENV_STEPS.value:,} env steps per run, Freeway mode 1, "
        f"learner batch 32:")
  ratio = paced["updates"] * 32 / paced["env"]
  common.report("  limiter 8: samples per env step", ratio, 8 * 0.9, "samples",
                note=f"({paced['env']:,.0f} env steps/s beside {paced['updates']:.1f} updates/s; "
                     f"learner data wait {paced['wait']:.0%})")
  common.report("  no limiter: env steps / s", free["env"], 1_000, "steps/s",
                note=f"(beside {free['updates']:.1f} learner updates/s = "
                     f"{free['updates'] * 32:,.0f} sampled transitions/s; learner data wait "
                     f"{free['wait']:.0%})")


def main(argv):
  del argv
  run()


if __name__ == "__main__":
  common.run(main)
