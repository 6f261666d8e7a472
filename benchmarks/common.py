"""What every benchmark shares: timing, the goal-ratio report line, configs, synthetic data."""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import subprocess
import sys
import time
import types
from typing import Any, Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def timed():
  """Yields a dict that receives 'wall' and 'cpu' (this process, all threads) seconds."""
  out = {}
  wall, cpu = time.perf_counter(), time.process_time()
  yield out
  out["wall"], out["cpu"] = time.perf_counter() - wall, time.process_time() - cpu


def report(name: str, value: float, goal: float, unit: str, higher_is_better: bool = True,
           note: str = "") -> None:
  ratio = value / goal if higher_is_better else goal / value
  verdict = "ok" if ratio >= 1 else "BELOW GOAL"
  print(f"  {name:<44} {value:>12,.1f} {unit:<14} goal {'>=' if higher_is_better else '<='} "
        f"{goal:,.1f}: {ratio:.2f}x {verdict}{('  ' + note) if note else ''}", flush=True)


def cpu_us(fn: Callable[[], Any], repeats: int) -> float:
  """CPU microseconds (this process, all threads) per call of `fn`, best of 3 rounds."""
  fn()
  best = math.inf
  for _ in range(3):
    start = time.process_time()
    for _ in range(repeats):
      fn()
    best = min(best, (time.process_time() - start) / repeats)
  return best * 1e6


def synthetic_stream(game: str, frames: int, rng: np.random.Generator,
                     frame_block: int = 4000) -> list[dict]:
  """In-memory episodes of 400-2,000 steps (views into one block of random frames) for
  `frames` frames of `game`: what the sampler sees from a dataset, without TensorFlow."""
  from scaled_ql import games as games_lib  # pylint: disable=g-import-not-at-top

  base = rng.integers(0, 256, (frame_block, 84, 84), dtype=np.uint8)
  num_actions = games_lib.get_game(game).num_actions
  episodes, total = [], 0
  while total < frames:
    length = int(rng.integers(min(400, frame_block // 2), min(2001, frame_block)))
    start = int(rng.integers(0, len(base) - length + 1))
    marks = np.zeros((3, length), bool)
    marks[0, 0] = marks[1, -1] = True
    marks[2, -1] = bool(rng.integers(2))
    episodes.append(dict(
        observation=base[start:start + length],
        action=rng.integers(0, num_actions, length).astype(np.int32),
        reward=rng.choice(np.array([0.0, 0.0, 0.0, 1.0, -1.0, 5.0], np.float32), length),
        discount=np.ones(length, np.float32), is_first=marks[0], is_last=marks[1],
        is_terminal=marks[2], game=game, checkpoint_id=0, episode_id=len(episodes)))
    total += length
  return episodes


class _ConfigDict(dict):
  """The part of ml_collections.ConfigDict the config files use (attribute access, update,
  to_dict), for images without ml_collections."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e

  def __setattr__(self, name, value):
    self[name] = value

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _ConfigDict) else v for k, v in self.items()}


def _ml_collections_or_stand_in() -> str:
  """'ml_collections', or installs the stand-in module under that name and says so."""
  try:
    importlib.import_module("ml_collections")
    return "ml_collections"
  except ImportError:
    sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_ConfigDict)
    return "a stand-in ConfigDict (ml_collections is not installed)"


def load_config(name: str, preset: str | None = None):
  """`get_config(preset)` of the packaged config `scaled_ql.configs.<name>` ("pretrain",
  "finetune"). Works without ml_collections (a stand-in ConfigDict; `config_source()` says
  which)."""
  global _CONFIG_SOURCE
  _CONFIG_SOURCE = _ml_collections_or_stand_in()
  return importlib.import_module(f"scaled_ql.configs.{name}").get_config(preset)


_CONFIG_SOURCE = "ml_collections"


def config_source() -> str:
  return _CONFIG_SOURCE


def run_python(args: list[str], env: dict, what: str, timeout: float | None = None) -> str:
  """Runs `python -m ...` in the repository; a failure raises with the output's tail."""
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                        timeout=timeout)
  if done.returncode:
    raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
  return done.stdout


def run(main) -> None:
  """`absl.app.run(main)`; library INFO logs (TFDS, Orbax) are hidden unless --verbosity is
  given, so the tables stay readable."""
  from absl import app  # pylint: disable=g-import-not-at-top

  if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in sys.argv):
    sys.argv.insert(1, "--verbosity=-1")  # absl: -1 = WARNING.
  app.run(main)
