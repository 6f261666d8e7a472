r"""Accelerator check: the paper's models on one accelerator, in one run of a few minutes.

  python -m benchmarks.accelerator            # on the GPU / TPU host
  python -m benchmarks.accelerator --smoke    # the same code at tiny shapes (a CPU dry run)
  python -m benchmarks --what=accelerator

For each of paper_resnet34/50/101 (the configs/pretrain.py presets: 40 games, C51 + CQL, Adam)
at batch 512 in bfloat16 on one device, each model in its own process (a clean peak-memory
figure; an out-of-memory stays one row):
- compile time of the jitted, donated update step;
- steps/s and transitions/s with the batch already on the device ("device batch"), and with a
  new host batch put on the device before every step ("host batch": what the input path costs
  when nothing overlaps it);
- MFU: the architecture's FLOPs per second (`benchmarks.flops`: forward, backward, target
  forward) over a bf16 matmul peak measured in the same process;
- peak device memory (the allocator's peak; on CPU, which keeps none, XLA's estimate);
- the greedy policy's observations/s on the device (`scaled_ql.evaluation.policy`: uint8
  frames in, actions out), for evaluation.
Then, in this process, the transition sampler (`scaled_ql.data.sampler`, in-memory synthetic
episodes of the same games, no TensorFlow): transitions/s per host core, beside the rate each
model's learner consumes, i.e. how many host cores keep one device fed.

Needs only JAX, flax, optax, Orbax, chex, numpy and absl: no TensorFlow, TFDS, Reverb or
ale-py; without ml_collections the presets are built with a stand-in ConfigDict.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
import numpy as np

from benchmarks import common

PRESETS = ("paper_resnet34", "paper_resnet50", "paper_resnet101")
SMOKE_GAMES = ("pong", "breakout", "freeway", "qbert")

_MODELS = flags.DEFINE_list("accel_models", list(PRESETS), "Presets of configs/pretrain.py.")
_BATCH = flags.DEFINE_integer("accel_batch", 512, "Update batch size ([SQL]: 512).")
_DTYPE = flags.DEFINE_string("accel_dtype", "bfloat16", "Compute dtype of the models.")
_STEPS = flags.DEFINE_integer("accel_steps", 20, "Update steps timed per model and input mode.")
_POLICY_BATCHES = flags.DEFINE_list("accel_policy_batches", ["64", "1024"],
                                    "Observations per greedy-policy call.")
_SAMPLER_BATCHES = flags.DEFINE_integer("accel_sampler_batches", 30,
                                        "Sampler batches timed (after the pools' fill).")
_POOL_FRAMES = flags.DEFINE_integer("accel_pool_frames", 5000,
                                    "Sampler pool capacity per game, in frames.")
_MATMUL = flags.DEFINE_integer("accel_matmul_size", 8192, "Side of the peak-rate matmul.")
_CHILD_TIMEOUT = flags.DEFINE_integer("accel_child_timeout", 300,
                                      "Seconds one model's process may take.")
_JSON = flags.DEFINE_string("accel_json", "", "Also write the figures to this JSON file.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny shapes for a CPU dry run: 4 games, batch 10, every preset as a "
    "ResNet-18 at 1/16 width, small matmul, pools and step counts. The same code paths (the "
    "any-mix head of batch 512 over 40 games, bf16, one process per model).")
_CHILD = flags.DEFINE_string("accel_child", "", "Internal: one model's measurement (JSON spec); "
                             "prints one JSON line.")


def _settings() -> dict:
  """The run's sizes: the flags, or their --smoke reductions."""
  s = dict(batch=_BATCH.value, dtype=_DTYPE.value, steps=_STEPS.value,
           policy_batches=[int(b) for b in _POLICY_BATCHES.value], matmul=_MATMUL.value,
           matmul_repeats=8, sampler_batches=_SAMPLER_BATCHES.value,
           pool_frames=_POOL_FRAMES.value, frame_block=2000, smoke=_SMOKE.value)
  if _SMOKE.value:
    s.update(batch=10, steps=2, policy_batches=[8], matmul=256, matmul_repeats=2,
             sampler_batches=3, pool_frames=600, frame_block=500)
  return s


def _config(preset: str, settings: dict):
  """The preset's config with the benchmark's dtype (and the smoke reductions)."""
  config = common.load_config("pretrain", preset)
  config.model.dtype = settings["dtype"]
  if settings["smoke"]:
    config.games = SMOKE_GAMES
    config.model.depth = 18
    config.model.width = 1 / 16
    config.model.spatial_features = 4
    config.model.feature_dim = 16
  return config


# -- one model, in its own process. ---------------------------------------------------------

def _time_steps(update, state, batches, steps: int):
  """(state, seconds per step) over `steps` steps; `batches()` gives each step's batch."""
  import jax  # pylint: disable=g-import-not-at-top

  for _ in range(2):  # Warm-up.
    state, _ = update(state, batches())
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = update(state, batches())
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / steps


def _measure(spec: dict) -> dict:
  """Compile time, step rates, MFU, memory and policy rate of one preset (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from benchmarks import flops  # pylint: disable=g-import-not-at-top
  from benchmarks import update as update_lib  # pylint: disable=g-import-not-at-top
  from scaled_ql import networks, parallel  # pylint: disable=g-import-not-at-top
  from scaled_ql.evaluation import policy as policy_lib  # pylint: disable=g-import-not-at-top

  settings = spec["settings"]
  config = _config(spec["preset"], settings)
  device = jax.local_devices()[0]
  mesh = update_lib.one_device_mesh(device)
  dtype = jnp.bfloat16 if settings["dtype"] == "bfloat16" else jnp.float32
  peak = flops.matmul_rate(settings["matmul"], dtype, settings["matmul_repeats"])

  case = update_lib.build(config, settings["batch"], mesh)
  update, state = case["update"], case["state"]
  state, device_step = _time_steps(update, state, lambda: case["batch"], settings["steps"])
  # A new host batch each step (two alternating NumPy batches, so nothing is cached).
  hosts = [case["host_batch"], update_lib.host_batch(tuple(config.games), settings["batch"], 1)]
  turn = iter(range(10**9))
  state, host_step = _time_steps(
      update, state, lambda: parallel.global_batch(hosts[next(turn) % 2], mesh),
      settings["steps"])
  # The peak again, after the steps (clocks and load then); the faster of the two counts.
  peak = max(peak, flops.matmul_rate(settings["matmul"], dtype, settings["matmul_repeats"]))

  stats = device.memory_stats() or {}
  peak_bytes = stats.get("peak_bytes_in_use")

  # The greedy policy on the device (parameters as trained: float32 storage, `dtype` compute).
  games = tuple(config.games)
  greedy = policy_lib.make_greedy_policy(case["model"], state.params,
                                         loss_kind=config.loss.kind, head_games=games,
                                         games=games)
  rng = np.random.default_rng(0)
  policy = {}
  for b in settings["policy_batches"]:
    obs = rng.integers(0, 256, (b, 84, 84, 4), dtype=np.uint8)
    gid = (np.arange(b) % len(games)).astype(np.int32)
    greedy(obs, gid)  # Compiles.
    calls = max(3, settings["steps"])
    start = time.perf_counter()
    for _ in range(calls):
      greedy(obs, gid)
    policy[b] = b * calls / (time.perf_counter() - start)

  batch = settings["batch"]
  params = networks.count_params(state.params)
  return dict(
      preset=spec["preset"], device=f"{device.platform}:{device.device_kind}",
      params=params, batch=batch, block=case["block"], dtype=settings["dtype"],
      compile_s=case["compile_seconds"], step_s=device_step, host_step_s=host_step,
      steps_per_s=1 / device_step, transitions_per_s=batch / device_step,
      host_transitions_per_s=batch / host_step, update_flops=case["analytic_flops"],
      xla_flops=case["xla_flops"], matmul_peak=peak,
      mfu=case["analytic_flops"] / device_step / peak,
      peak_bytes=peak_bytes, memory_limit=stats.get("bytes_limit"),
      xla_memory_estimate=case["memory"], policy_obs_per_s=policy,
      config_source=common.config_source())


def _run_child(preset: str, settings: dict) -> dict:
  """`_measure` of `preset` in a new process; {'preset', 'error'} when it fails."""
  spec = json.dumps(dict(preset=preset, settings=settings))
  try:
    out = common.run_python(["benchmarks.accelerator", f"--accel_child={spec}"],
                            dict(os.environ), f"{preset}", timeout=_CHILD_TIMEOUT.value)
  except Exception as e:  # pylint: disable=broad-except  (one failed model is one row)
    return dict(preset=preset, error=str(e)[-1500:])
  return json.loads(out.strip().splitlines()[-1])


# -- the sampler, in this process. ----------------------------------------------------------

def _sampler_rate(games: tuple[str, ...], settings: dict) -> dict:
  """Transitions/s per host core (CPU time of this process) of the MultiGameSampler at the
  run's batch, from in-memory synthetic episodes (n = 3, 4-frame stacks)."""
  from scaled_ql import parallel  # pylint: disable=g-import-not-at-top
  from scaled_ql.data import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  capacity = settings["pool_frames"]
  streams = {g: common.synthetic_stream(g, capacity + capacity // 2, rng,
                                        frame_block=settings["frame_block"]) for g in games}
  # Fixed per-game counts (13 x 32 + 12 x 8 games at batch 512), as pre-training lays them out.
  counts = parallel.split_counts(settings["batch"], len(games))
  # The streams hold more than the pools, as a real selection does; a refresh every 1,000 steps
  # (none falls inside the timed batches) is what makes such a sampler valid.
  sampler = sampler_lib.MultiGameSampler(streams, games, settings["batch"], capacity, n_step=3,
                                         gamma=0.99, game_weights=counts, refresh_every=1000)
  with common.timed() as fill:
    next(sampler)
  next(sampler)
  with common.timed() as t:
    for _ in range(settings["sampler_batches"]):
      next(sampler)
  n = settings["sampler_batches"] * settings["batch"]
  return dict(per_core=n / t["cpu"], wall=n / t["wall"], fill_s=fill["wall"],
              pool_bytes=sum(p.nbytes for p in sampler.pools))


def _gib(x) -> str:
  return "n/a" if x is None else f"{x / 2**30:.2f}"


def run() -> None:
  settings = _settings()
  started = time.perf_counter()
  presets = list(_MODELS.value)
  unknown = [p for p in presets if p not in PRESETS]
  if unknown:
    raise ValueError(f"--accel_models: unknown {unknown}; choose from {PRESETS}.")
  print(f"== accelerator: {', '.join(presets)} at batch {settings['batch']} in "
        f"{settings['dtype']} on one device, one process per model"
        + (" (--smoke: tiny shapes, a dry run)" if settings["smoke"] else ""), flush=True)
  rows = [_run_child(p, settings) for p in presets]
  ok = [r for r in rows if "error" not in r]
  if ok:
    r0 = ok[0]
    print(f"  device {r0['device']}; {settings['dtype']} matmul peak measured in each process "
          f"({settings['matmul']}^2 x {settings['matmul_repeats']} chained): "
          + ", ".join(f"{r['matmul_peak'] / 1e12:.1f}" for r in ok) + " TFLOP/s; configs from "
          f"{r0['config_source']}", flush=True)
  print(f"  {'model':<16} {'params':>7} {'compile s':>9} {'steps/s':>8} {'trans/s':>9} "
        f"{'host-batch trans/s':>18} {'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'peak GiB':>8} {'XLA est GiB':>11} policy obs/s", flush=True)
  for r in rows:
    if "error" in r:
      print(f"  {r['preset']:<16} FAILED: {r['error']}", flush=True)
      continue
    policy = ", ".join(f"{v:,.0f} at {b}" for b, v in r["policy_obs_per_s"].items())
    print(f"  {r['preset']:<16} {r['params'] / 1e6:>6.1f}M {r['compile_s']:>9.1f} "
          f"{r['steps_per_s']:>8.2f} {r['transitions_per_s']:>9,.0f} "
          f"{r['host_transitions_per_s']:>18,.0f} {r['update_flops'] / 1e9:>10.1f} "
          f"{r['update_flops'] * r['steps_per_s'] / 1e12:>8.2f} {r['mfu']:>6.3f} "
          f"{_gib(r['peak_bytes']):>8} {_gib(r['xla_memory_estimate']):>11} {policy}",
          flush=True)
  games = tuple(_config(PRESETS[0], settings).games)
  sampler = _sampler_rate(games, settings)
  print(f"  sampler ({len(games)} games, batch {settings['batch']}, n = 3, in-memory episodes, "
        f"pools of {settings['pool_frames']:,} frames per game, "
        f"{sampler['pool_bytes'] / 2**30:.2f} GiB): {sampler['per_core']:,.0f} transitions/s "
        f"per host core (wall {sampler['wall']:,.0f}/s)", flush=True)
  for r in ok:
    cores = r["transitions_per_s"] / sampler["per_core"]
    print(f"  {r['preset']:<16} consumes {r['transitions_per_s']:>9,.0f} transitions/s: "
          f"{cores:.2f} host cores of sampling keep it fed", flush=True)
  if settings["smoke"]:
    print("  (smoke run: every preset as a 1/16-width ResNet-18 at batch 10 on this machine; "
          "the figures check the code, not the hardware)", flush=True)
  print(f"  accelerator check took {time.perf_counter() - started:.0f}s", flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(settings=settings, models=rows, sampler=sampler), f, indent=1)
  if not ok:
    raise RuntimeError("no model could be measured (rows above).")


def main(argv):
  del argv
  if _CHILD.value:
    spec = json.loads(_CHILD.value)
    print(json.dumps(_measure(spec)), flush=True)
    return
  run()


if __name__ == "__main__":
  common.run(main)
