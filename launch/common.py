"""Pieces every launch script shares: config files, metric writers, progress bars."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any, Mapping

import jax
import ml_collections
import tqdm
from clu import metric_writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, preset: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(preset)` of a config file (path relative to the repository or absolute)."""
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(full))[0], full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def metric_writer(logdir: str) -> metric_writers.MetricWriter:
  """TensorBoard scalars from process 0 (asynchronous); other processes write nothing."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))


def progress(total: int, initial: int = 0, desc: str = "train", unit: str = "step"):
  """A console progress bar with rate and ETA, on process 0 only."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stdout, mininterval=1.0,
                   smoothing=0.05)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'model.depth': 34, ...}: a config as flat key/values, for logs and comparisons."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def check_config_overrides(argv: list[str], flag: str = "config") -> None:
  """Exits with a clear message for an unknown preset or `--config.a.b=` field, before absl
  parses the flags (whose own error for these is a bare KeyError)."""
  specs = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")]
  if not specs:
    return
  spec = specs[-1]  # absl: the last one given wins.
  path, _, preset = spec.partition(":")
  try:
    config = load_config(path, preset or None)
  except (OSError, ValueError) as e:
    sys.exit(f"error: --{flag}={spec}: {e}")
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    key = arg[len(flag) + 3:].split("=", 1)[0]
    node = config
    for i, part in enumerate(key.split(".")):
      if not hasattr(node, "keys") or part not in node.keys():
        where = ".".join(key.split(".")[:i]) or flag
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        sys.exit(f"error: unknown config field {key!r} in {arg!r}; {where} has: {known}.")
      node = node[part]


@contextlib.contextmanager
def input_errors(*kinds: type):
  """Bad input found at start-up (ValueError, FileNotFoundError, and `kinds`) ends the
  program with one "error: ..." line instead of a traceback. Wrap checks only: a ValueError
  from a bug deep in training should keep its traceback."""
  try:
    yield
  except (ValueError, FileNotFoundError, *kinds) as e:
    sys.exit(f"error: {e}")


def define_distributed_flags() -> dict:
  """The multi-host flags of a training launch (call once, at module level)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  return dict(
      coordinator=flags.DEFINE_string("coordinator_address", None, "host:port of process 0."),
      num_processes=flags.DEFINE_integer("num_processes", None, "Processes in the job."),
      process_id=flags.DEFINE_integer("process_id", None, "This process's index."),
      auto=flags.DEFINE_bool("distributed_auto", False,
                             "Let JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI)."))


def start_jax(distributed_flags: dict, encoder: str) -> None:
  """Starts JAX for a training run of `encoder`: XLA:CPU's runtime for it
  (`parallel.select_cpu_runtime`, said on CPU), then multi-host start-up
  (`parallel.initialize`) from the flags of `define_distributed_flags` or the environment."""
  from scaled_ql import parallel  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  runtime = parallel.select_cpu_runtime(encoder)
  f = distributed_flags
  parallel.initialize(f["coordinator"].value, f["num_processes"].value, f["process_id"].value,
                      f["auto"].value)
  if jax.default_backend() == "cpu" and jax.process_index() == 0:
    print(f"XLA:CPU runtime: {runtime}", flush=True)


def run(main) -> None:
  """`absl.app.run(main)` after checking the config flags; library INFO logs (TFDS, Orbax)
  are hidden unless --verbosity is given, so the progress bar and results stay readable."""
  from absl import app

  check_config_overrides(sys.argv)
  if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in sys.argv):
    sys.argv.insert(1, "--verbosity=-1")  # absl: -1 = WARNING.
  app.run(main)
