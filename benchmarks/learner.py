"""Learner: the C51 + CQL update step's steps/s and MFU on CPU (its FLOPs per second over a
float32 matmul rate timed beside it) for Nature-CNN at batch 32 and 256 and ResNet-18/34 at
batch 64, each in its own process with the XLA:CPU runtime a training run of it gets; the
data-wait fraction of a real `demo` pre-training run (`launch.pretrain` in a subprocess);
Nature-CNN throughput on 1, 2 and 4 forced host devices.

  python -m benchmarks.learner
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, flops
from benchmarks import update as update_lib
from scaled_ql import parallel
from scaled_ql.networks import qnetwork

_LEARNER_ROUNDS = flags.DEFINE_integer(
    "learner_rounds", 5, "Timing rounds per learner configuration (matmul, update steps, "
    "matmul); medians over rounds are printed.")
_LEARNER_DEMO_STEPS = flags.DEFINE_integer(
    "learner_demo_steps", 300, "Steps of the real `demo` pre-training run timed for data wait.")
_LEARNER_CHILD = flags.DEFINE_string(
    "learner_child", "", "Internal: one update-step measurement (JSON: model overrides, batch, "
    "flax_conv, devices); prints one JSON line. The learner benchmark runs each in a subprocess "
    "because XLA:CPU's runtime and the host device count are set before JAX starts.")

LEARNER_GAMES = ("pong", "breakout", "freeway")
# (label, config.model overrides of the paper_resnet34 preset, batch): issue 4's configurations.
LEARNER_CASES = (("Nature-CNN", dict(encoder="nature"), 32),
                 ("Nature-CNN", dict(encoder="nature"), 256),
                 ("ResNet-18", dict(encoder="resnet", depth=18), 64),
                 ("ResNet-34", dict(encoder="resnet", depth=34), 64))
MFU_GOAL = 0.35  # Nature-CNN, C51 + CQL, batch 256 (issue 4).
BEFORE = "Nature-CNN on flax.linen.Conv (before conv.py)"
DATA_WAIT_GOAL = 0.05
DEVICE_COUNTS = (1, 2, 4)
# Our goal for forced host devices (the issue sets none): they share this machine's cores, so
# splitting the batch over them should keep at least this share of the 1-device rate.
DEVICE_SCALING_GOAL = 0.9
_MATMUL_SIZE = 1024


class _FlaxConvNatureCNN(nn.Module):
  """NatureCNN as written on flax.linen.Conv before `networks.conv`: the "before" row."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, (c, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(nn.Conv(c, (k, k), (s, s), padding="VALID", dtype=self.dtype,
                          name=f"conv{i + 1}")(x))
    return x


@contextlib.contextmanager
def _flax_conv_nature_cnn():
  """Q-networks built inside this block get the flax.linen.Conv NatureCNN (same parameters)."""
  make_encoder = qnetwork.make_encoder
  qnetwork.make_encoder = lambda name, depth, width, dtype: (
      _FlaxConvNatureCNN(dtype=dtype) if name == "nature" else
      make_encoder(name, depth, width, dtype))
  try:
    yield
  finally:
    qnetwork.make_encoder = make_encoder


def _learner_config(model_overrides: dict):
  """The paper_resnet34 preset (C51 + CQL, Adam, paper head sizes) on LEARNER_GAMES."""
  config = common.load_config("pretrain", "paper_resnet34")
  config.games = LEARNER_GAMES
  config.model.update(model_overrides)
  return config


def _update_case(config, batch_size: int, mesh) -> dict:
  """`update.build`: the compiled update of `config`, its state and a game-blocked batch."""
  return update_lib.build(config, batch_size, mesh)


def _time_update(case: dict, rounds: int) -> dict:
  """Median over rounds of (MFU, step seconds); a round = matmul, the best of a few update
  steps (about a second's worth), matmul, against the faster of the two matmuls."""
  update, state, batch = case["update"], case["state"], case["batch"]

  def step(state):
    start = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start

  state, _ = step(state)
  state, first = step(state)
  reps = int(np.clip(round(1.0 / first), 2, 10))
  mfus, seconds = [], []
  for _ in range(rounds):
    before = flops.matmul_seconds(_MATMUL_SIZE)
    times = []
    for _ in range(reps):
      state, t = step(state)
      times.append(t)
    rate = 2 * _MATMUL_SIZE**3 / min(before, flops.matmul_seconds(_MATMUL_SIZE))
    mfus.append(case["analytic_flops"] / min(times) / rate)
    seconds.append(min(times))
  case["state"] = state  # The old one was donated.
  return dict(mfu=float(np.median(mfus)), seconds=float(np.median(seconds)),
              matmul_rate=2 * _MATMUL_SIZE**3 / flops.matmul_seconds(_MATMUL_SIZE))


def _measure_update(overrides: dict, batch: int, rounds: int, flax_conv: bool = False,
                    devices: int = 1) -> dict:
  """`_time_update` of one configuration in its own process (`--learner_child`), on
  `devices` forced host devices and XLA:CPU's runtime for the encoder
  (`parallel.xla_flags_for`: classic for Nature-CNN and IMPALA). The flax.linen.Conv "before"
  network runs on JAX's default runtime: the classic one aborts on its strided input
  gradients."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if not flax_conv:
    xla_flags = parallel.xla_flags_for(overrides["encoder"], xla_flags)
  if devices > 1:
    xla_flags = f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  spec = dict(model=overrides, batch=batch, rounds=rounds, flax_conv=flax_conv, devices=devices)
  out = common.run_python(["benchmarks.learner", f"--learner_child={json.dumps(spec)}"], env,
                          f"the learner measurement {spec}")
  result = json.loads(out.strip().splitlines()[-1])
  result["runtime"] = "classic" if "use_thunk_runtime=false" in xla_flags else "thunk"
  return result


def _learner_child(spec: dict) -> None:
  """Inside a `_measure_update` process: one JSON line of figures."""
  if jax.device_count() != spec["devices"]:
    raise RuntimeError(f"expected {spec['devices']} host devices, JAX sees "
                       f"{jax.device_count()}.")
  with _flax_conv_nature_cnn() if spec["flax_conv"] else contextlib.nullcontext():
    case = _update_case(_learner_config(spec["model"]), spec["batch"], parallel.make_mesh(1))
  timing = _time_update(case, spec["rounds"])
  print(json.dumps(dict(timing, analytic_flops=case["analytic_flops"],
                        xla_flops=case["xla_flops"])))


def run() -> None:
  """Issue 4's learner figures: update-step MFU, the data wait of a real run, forced devices.

  MFU = the update's model FLOPs (2 x the multiply-adds of every matmul and convolution of
  the architecture, from the layer shapes: forward, backward, target forward;
  `flops.update_flops`) per second, over the float32 matmul rate measured beside each
  timing in the same process. "XLA count" is XLA's cost analysis of the compiled step relative
  to that (what the machine executes: padding taps, the folded embedding, ...). Each row runs
  in its own process with the XLA:CPU runtime a training run of that encoder gets.
  """
  rounds = _LEARNER_ROUNDS.value
  print(f"== learner: C51 + CQL update step (learner.jit_update, 1-device mesh, Adam; paper "
        f"head sizes), games {'/'.join(LEARNER_GAMES)}, game-blocked batches; MFU = model "
        f"FLOPs / s over a {_MATMUL_SIZE}^2 float32 matmul timed beside every measurement; "
        f"medians of {rounds} rounds; one process per row", flush=True)
  print(f"  {'model':<46} {'batch':>5} {'runtime':>7} {'steps/s':>8} {'trans/s':>8} "
        f"{'GFLOP/step':>10} {'XLA count':>10} {'GFLOP/s':>8} {'MFU':>6}", flush=True)
  rows = [(label, overrides, batch, False) for label, overrides, batch in LEARNER_CASES]
  # The "before" row right after its "after" row, so that both see the same machine load.
  rows.insert(2, (BEFORE, dict(encoder="nature"), 256, True))
  results, rates = {}, []
  for label, overrides, batch, flax_conv in rows:
    timing = _measure_update(overrides, batch, rounds, flax_conv)
    results[label, batch] = timing
    rates.append(timing["matmul_rate"])
    model_flops = timing["analytic_flops"]
    counted = timing["xla_flops"] / model_flops
    print(f"  {label:<46} {batch:>5} {timing['runtime']:>7} {1 / timing['seconds']:>8.2f} "
          f"{batch / timing['seconds']:>8,.0f} {model_flops / 1e9:>10.2f} "
          f"{f'{counted:.3f}x' if counted > 0.5 else 'n/a':>10} "
          f"{model_flops / timing['seconds'] / 1e9:>8.1f} {timing['mfu']:>6.3f}", flush=True)
  print(f"  (float32 matmul rate in this run: {np.median(rates) / 1e9:,.0f} GFLOP/s, median; "
        f"XLA count n/a: the classic runtime emits convolutions as runtime calls, which XLA's "
        f"cost analysis does not count)")
  after, before = results["Nature-CNN", 256], results[BEFORE, 256]
  # MFU ratios: steps per second relative to each measurement's own matmul rate, so machine
  # load (and the runtimes' own matmul speeds) divide out.
  common.report("MFU, Nature-CNN C51 + CQL, batch 256", 100 * after["mfu"], 100 * MFU_GOAL,
                "% of matmul",
                note=f"(the update is {after['mfu'] / before['mfu']:.2f}x as fast as on "
                     f"flax.linen.Conv and JAX's default runtime, whose MFU is "
                     f"{100 * before['mfu']:.1f}%)")
  _demo_data_wait()
  _device_scaling(rounds)


def _demo_data_wait() -> None:
  """The data-wait fraction of a real `demo` pre-training run on a fresh emulator dataset."""
  steps = _LEARNER_DEMO_STEPS.value
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  with tempfile.TemporaryDirectory(prefix="scaled_ql_bench_demo_") as tmp:
    data_dir, workdir = os.path.join(tmp, "data"), os.path.join(tmp, "run")
    with common.timed() as made:
      common.run_python(["launch.make_dataset", "--source=ale",
                         f"--games={','.join(LEARNER_GAMES)}", "--runs=1",
                         "--checkpoints_per_run=1", "--steps_per_checkpoint=2000",
                         f"--data_dir={data_dir}"], env, "make_dataset")
    with common.timed() as trained:
      common.run_python(["launch.pretrain", "--config=configs/pretrain.py:demo",
                         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                         f"--config.num_steps={steps}", "--config.eval_every=0"], env, "pretrain")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      windows = [json.loads(line) for line in f]
  # Each window is log_every steps; weight its fraction by its duration. The first window holds
  # compilation and the pools' first fill, so the steady state is the rest.
  seconds = np.asarray([1 / w["steps_per_second"] for w in windows])
  waits = np.asarray([w["data_wait_fraction"] for w in windows])
  steady = float(np.sum(waits[1:] * seconds[1:]) / np.sum(seconds[1:]))
  print(f"== learner: data wait of `launch.pretrain --config=configs/pretrain.py:demo` for "
        f"{steps} steps on a fresh 3-game emulator dataset (made in {made['wall']:.0f}s; "
        f"run took {trained['wall']:.0f}s)", flush=True)
  common.report("data-wait fraction, steady state", 100 * steady, 100 * DATA_WAIT_GOAL,
                "% of time", higher_is_better=False,
                note=f"(windows of {windows[0]['step']} steps after the first; first window "
                     f"{waits[0]:.1%} with compilation and the pools' fill; "
                     f"{np.median([w['steps_per_second'] for w in windows[1:]]):.1f} steps/s)")


def _device_scaling(rounds: int) -> None:
  """Nature-CNN batch-256 update throughput on 1, 2 and 4 forced host devices (one process
  each: the device count must be set before JAX starts)."""
  print(f"== learner: Nature-CNN batch-256 update over a data-parallel mesh of N forced host "
        f"devices (--xla_force_host_platform_device_count=N, one process each)", flush=True)
  results = {n: _measure_update(dict(encoder="nature"), 256, rounds, devices=n)
             for n in DEVICE_COUNTS}
  one = results[DEVICE_COUNTS[0]]
  for n, r in results.items():
    # Ratios of MFU (each process's own matmul rate), so load differences between the
    # processes cancel; transitions/s are wall-clock.
    common.report(f"{n} device{'s' if n > 1 else ''}: throughput vs 1 device",
                  100 * r["mfu"] / one["mfu"], 100 * DEVICE_SCALING_GOAL, "% of 1 device",
                  note=f"({256 / r['seconds']:,.0f} transitions/s, MFU {r['mfu']:.3f})")


def main(argv):
  del argv
  if _LEARNER_CHILD.value:
    _learner_child(json.loads(_LEARNER_CHILD.value))
    return
  run()


if __name__ == "__main__":
  common.run(main)
