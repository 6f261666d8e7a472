"""Devices: multi-host start-up, the mesh, shardings, and global batch assembly.

The mesh has two axes:
- `data`: the batch is split over it (data parallelism across every device of every host);
- `model`: large parameters (and their optimizer state) are split over it along one dimension,
  FSDP-style, so an 80M-parameter model's Adam state need not sit whole on every device.
With `model` of size 1 (the default) every parameter is replicated.

Each host (process) samples its own share of every batch; `global_batch` turns the host-local
NumPy arrays into one global jax.Array sharded over `data`, without any host seeing the rest.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scaled_ql.data.batch import split_batch

DATA, MODEL = "data", "model"

# XLA:CPU's classic runtime (jaxlib 0.4.34 still has it beside the default "thunk" runtime)
# runs the update step faster on CPU (Nature-CNN b256 ~12%, IMPALA b64 ~28%), but aborts the
# whole process (a failed Check in convolution_thunk_internal.h) on input-dilated
# convolutions: the input gradient of any strided convolution written with lax/flax
# convolutions, as in the ResNets. Only encoders without one take it: Nature-CNN's strided
# layers run through `networks.conv`, whose input gradients are plain convolutions; IMPALA's
# convolutions all have stride 1 (it downsamples by max-pooling).
CLASSIC_CPU_RUNTIME_ENCODERS = ("nature", "impala")
_THUNK_RUNTIME = "--xla_cpu_use_thunk_runtime"


def classic_cpu_runtime_available() -> bool:
  """Whether this jaxlib's XLA:CPU still has the classic runtime. Newer XLA dropped it: the
  flag is first ignored with a warning ("no longer supported"), later unknown, and XLA aborts
  the process on an unknown flag, so it is never set where it is not known to work. jaxlib
  0.4.x has it; newer builds are asked by looking for the flag and its retirement message
  in their shared libraries (no process start needed)."""
  return _classic_cpu_runtime_available()


@functools.lru_cache(maxsize=1)
def _classic_cpu_runtime_available() -> bool:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import mmap  # pylint: disable=g-import-not-at-top

  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if version.startswith("0.4."):
    return True
  import jaxlib  # pylint: disable=g-import-not-at-top

  flag = _THUNK_RUNTIME[2:].encode()
  for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      if m.find(flag) >= 0:
        return m.find(b'"' + flag + b'" is no longer supported') < 0
  return False


def xla_flags_for(encoder: str, xla_flags: str = "") -> str:
  """`xla_flags` (an XLA_FLAGS value) with XLA:CPU's runtime for `encoder` added, unless it
  names a runtime already or this XLA has no classic runtime. Accelerators ignore the flag."""
  if (_THUNK_RUNTIME in xla_flags or encoder not in CLASSIC_CPU_RUNTIME_ENCODERS
      or not classic_cpu_runtime_available()):
    return xla_flags
  return f"{xla_flags} {_THUNK_RUNTIME}=false".strip()


def select_cpu_runtime(encoder: str) -> str:
  """Sets XLA_FLAGS to `xla_flags_for(encoder, ...)` before JAX starts; says which runtime.

  Must run before the first JAX computation: the flags are read once, when the CPU backend
  starts (if it has, nothing is changed and the answer says so).
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  xla_flags = os.environ.get("XLA_FLAGS", "")
  if _THUNK_RUNTIME in xla_flags:
    return "as set in XLA_FLAGS"
  if not classic_cpu_runtime_available():
    return "JAX's default (this XLA has no classic runtime)"
  wanted = xla_flags_for(encoder, xla_flags)
  if wanted == xla_flags:
    return "thunk (JAX's default)"
  if xla_bridge.backends_are_initialized():
    return "thunk (JAX had started before the runtime could be chosen)"
  os.environ["XLA_FLAGS"] = wanted
  return f"classic (faster for the {encoder} encoder; {_THUNK_RUNTIME}=false)"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> None:
  """Starts multi-host JAX (`jax.distributed.initialize`) when the job has several processes.

  - explicit: the arguments (launch flags) or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID environment variables (GPU clusters, N local processes);
  - auto=True: JAX's own cluster detection (Cloud TPU pods, SLURM, Open MPI);
  - neither: a single process, nothing to start.
  CPU devices talk across processes through gloo (harmless where accelerators do the work).
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not auto:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if not explicit:
    jax.distributed.initialize()
    return
  if coordinator_address is None or num_processes is None or process_id is None:
    raise ValueError("multi-host start-up needs all of coordinator_address, num_processes and "
                     f"process_id; got {coordinator_address!r}, {num_processes!r}, "
                     f"{process_id!r}.")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must lie in [0, num_processes={num_processes}).")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(model_axis_size: int = 1) -> Mesh:
  """A (data, model) mesh over all devices of all processes.

  The `model` axis stays inside a host (it must divide the host's device count) and the `data`
  axis spans hosts in process order, so each host's devices hold whole rows of the batch:
  exactly the rows that host samples (see `global_batch`).
  """
  n, local, hosts = jax.device_count(), jax.local_device_count(), jax.process_count()
  if model_axis_size < 1 or local % model_axis_size:
    raise ValueError(f"parallel.model_axis_size={model_axis_size} must divide the number of "
                     f"devices of each host ({local}).")
  if hosts == 1:
    try:
      grid = mesh_utils.create_device_mesh((n // model_axis_size, model_axis_size))
    except (AssertionError, ValueError, NotImplementedError):
      grid = np.asarray(jax.devices()).reshape(n // model_axis_size, model_axis_size)
  else:
    try:
      grid = mesh_utils.create_hybrid_device_mesh(
          (local // model_axis_size, model_axis_size), (hosts, 1), process_is_granule=True)
    except (AssertionError, ValueError, NotImplementedError):
      ordered = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
      grid = np.asarray(ordered).reshape(n // model_axis_size, model_axis_size)
  return Mesh(grid, (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, everything else whole."""
  return NamedSharding(mesh, P(DATA))


def param_sharding(mesh: Mesh, shape, min_size: int = 2**18) -> NamedSharding:
  """Shards the largest dimension divisible by the model axis; small arrays stay replicated."""
  m = mesh.shape[MODEL]
  if m == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return replicated(mesh)
  dims = [d for d in np.argsort(shape)[::-1] if shape[d] % m == 0]
  if not dims:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[dims[0]] = MODEL
  return NamedSharding(mesh, P(*spec))


def state_shardings(mesh: Mesh, abstract_state: Any, min_size: int = 2**18) -> Any:
  """Sharding of every leaf of a (train-state) pytree, by its shape alone.

  Shape-based, so Adam's moments get exactly the sharding of their parameters. Arrays with
  fewer than `min_size` elements stay replicated (splitting them costs more than it saves).
  """
  return jax.tree_util.tree_map(lambda x: param_sharding(mesh, x.shape, min_size), abstract_state)


def check_batch_divides(global_batch_size: int, mesh: Mesh, num_processes: int,
                        num_games: int) -> None:
  """Raises a ValueError unless the batch splits evenly over devices and hosts, with at least
  one sample of every game on every host."""
  data = mesh.shape[DATA]
  if global_batch_size % data:
    raise ValueError(f"batch_size={global_batch_size} does not divide over the {data} devices "
                     f"of the mesh's data axis.")
  if global_batch_size % num_processes:
    raise ValueError(f"batch_size={global_batch_size} does not divide over {num_processes} "
                     f"hosts.")
  if global_batch_size // num_processes < num_games:
    raise ValueError(f"batch_size={global_batch_size} gives each of {num_processes} hosts "
                     f"{global_batch_size // num_processes} samples, fewer than the "
                     f"{num_games} games.")


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Host-local NumPy arrays (this host's rows) -> global jax.Arrays sharded over `data`.

  Hosts' rows are laid out in process order: host 0's rows first.
  """
  sharding = batch_sharding(mesh)
  n = jax.process_count()

  def to_global(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * n, *x.shape[1:]))

  return jax.tree_util.tree_map(to_global, local_batch)


def allgather_json(obj: Any) -> list:
  """Every process's JSON-serialisable `obj`, in process order (a list on every process)."""
  import json

  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:data.size] = data
  everything = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode())
          for row, n in zip(np.asarray(everything), np.ravel(sizes))]


def split_counts(batch_size: int, num_games: int, weights=None) -> tuple[int, ...]:
  """Samples per game in a host's batch: proportional to `weights` (default equal), the
  remainder given one each to the first games, so counts are fixed for the whole run.

  `scaled_ql.data.split_batch` with its largest-remainder rule (the one place counts are made).
  """
  return split_batch(batch_size, weights, num_games, uneven="largest_remainder")
