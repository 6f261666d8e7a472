"""What every `launch/` app shares: config flags, JAX start-up, and how errors are shown.

A launch app is flags, a config and one library call:

    _CONFIG = app.config_flag()
    def main(argv):
      app.start_jax(_DISTRIBUTED, config.model.encoder)
      train.pretrain(_CONFIG.value, _WORKDIR.value)
    if __name__ == "__main__":
      app.run(main)

`run` resolves `--config=FILE:PRESET` to a config file (`scaled_ql.configs.resolve`: your file,
or one shipped in the package, so `configs/pretrain.py:demo` works from any directory and from
an installed wheel), refuses an unknown preset or `--config.a.b` field with one line before
absl's bare KeyError, hides library INFO logs unless --verbosity is given, and prints
`errors.InputError` (bad input, named) as one `error: ...` line with exit status 1. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from absl import app as absl_app
from absl import flags
from ml_collections import config_flags

from scaled_ql import configs, errors


def config_flag(name: str = "config", help_text: str = "Config file and preset, e.g. "
                "configs/pretrain.py:demo."):
  """The --config flag (ml_collections: `--config.a.b=value` overrides any field)."""
  return config_flags.DEFINE_config_file(name, None, help_text, lock_config=True)


def _resolve_config_args(argv: list[str], flag: str = "config") -> list[str]:
  """argv with each `--config=FILE:PRESET` made an absolute path (see the module docstring);
  exits with one line for an unknown file, preset or field."""
  out, spec = [], None
  for arg in argv:
    if arg.startswith(f"--{flag}="):
      spec = arg.split("=", 1)[1]
      path, preset = configs.split_spec(spec)
      try:
        arg = f"--{flag}={configs.resolve(path)}" + (f":{preset}" if preset else "")
      except FileNotFoundError as e:
        sys.exit(f"error: --{flag}={spec}: {e}")
    out.append(arg)
  if spec is None:  # absl: the last --config= given wins.
    return out
  try:
    config = configs.load(spec)
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
  return out


def distributed_flags() -> dict:
  """The multi-host flags of a training app (call once, at module level)."""
  return dict(
      coordinator=flags.DEFINE_string("coordinator_address", None, "host:port of process 0."),
      num_processes=flags.DEFINE_integer("num_processes", None, "Processes in the job."),
      process_id=flags.DEFINE_integer("process_id", None, "This process's index."),
      auto=flags.DEFINE_bool("distributed_auto", False,
                             "Let JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI)."))


def configure_jax() -> None:
  """The global JAX settings of every scaled-ql job (importing the library sets none):
  random numbers that do not depend on how an array is sharded, so a model initialised on 1
  device and on a (data, model) mesh of 8 gets the same parameters (JAX's default from 0.5)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_threefry_partitionable", True)
  if tuple(int(x) for x in jax.__version__.split(".")[:2]) < (0, 5):
    # JAX 0.4.34 on CPU (the pinned stack): an update read back from the persistent cache
    # wrote into donated buffers that an asynchronous checkpoint still shared, so checkpoint
    # 10 held step 11's parameters, or NaN (tests/test_checkpoints.py; fine with JAX 0.12).
    _compilation_cache_off(
        jax, f"(JAX_COMPILATION_CACHE_DIR is set): with JAX {jax.__version__} on CPU its "
        "executables corrupt checkpoints taken while training goes on")


def _compilation_cache_off(jax, why: str, say: bool = True) -> None:
  """Turns JAX's persistent compilation cache off where it is on, with a `note:` line (`say`)
  giving `why`."""
  if not (jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache):
    return
  jax.config.update("jax_enable_compilation_cache", False)
  if say:
    print(f"note: JAX's persistent compilation cache is off {why}. BUILD_NOTES.md, Known "
          "limits.", file=sys.stderr, flush=True)


def start_jax(distributed: Optional[dict], encoder: str) -> None:
  """Starts JAX for a training run of `encoder`: XLA:CPU's runtime for it
  (`parallel.select_cpu_runtime`, said on CPU), the global settings (`configure_jax`), then
  multi-host start-up (`parallel.initialize`) from the flags of `distributed_flags` (None: a
  single-process job)."""
  from scaled_ql import parallel  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  runtime = parallel.select_cpu_runtime(encoder)
  configure_jax()
  if distributed is not None:
    f = distributed
    parallel.initialize(f["coordinator"].value, f["num_processes"].value,
                        f["process_id"].value, f["auto"].value)
  if jax.default_backend() == "cpu" and jax.process_count() > 1:
    # Several CPU processes (gloo) resuming with executables from the persistent cache: JAX
    # 0.12.1 hung before the first update, 0.4.34 aborted on heap corruption
    # (tests/test_pretrain.py's two-process resume; BUILD_NOTES.md, Known limits).
    _compilation_cache_off(jax, "in multi-process CPU runs (they hang or crash with it)",
                           say=jax.process_index() == 0)
  if jax.default_backend() == "cpu" and jax.process_index() == 0:
    print(f"XLA:CPU runtime: {runtime}", flush=True)


def run(main) -> None:
  """`absl.app.run(main)` with the config and error handling of the module docstring."""
  sys.argv = _resolve_config_args(sys.argv)
  if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in sys.argv):
    sys.argv.insert(1, "--verbosity=-1")  # absl: -1 = WARNING.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

  def guarded(argv):
    try:
      return main(argv)
    except errors.InputError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  absl_app.run(guarded)
