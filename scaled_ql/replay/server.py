"""The Reverb server of online fine-tuning: its tables, its own process, and address checks."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence, Union

import reverb
import tensorflow as tf

from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE

ONLINE, OFFLINE, VARIABLES = "online", "offline", "variables"
TRANSITION_FIELDS = ("observation", "action", "reward", "discount", "next_observation", "game_id")


class ReplayError(RuntimeError):
  """The Reverb server is unreachable or gone, a table is unknown, or no data came in time."""


def transition_signature(stack_size: int = STACK_SIZE) -> dict:
  """The signature of one transition item (squeezed columns: no time dimension)."""
  frames = tf.TensorSpec((*FRAME_SHAPE, stack_size), tf.uint8)
  return dict(observation=frames, action=tf.TensorSpec((), tf.int32),
              reward=tf.TensorSpec((), tf.float32), discount=tf.TensorSpec((), tf.float32),
              next_observation=frames, game_id=tf.TensorSpec((), tf.int32))


@dataclasses.dataclass(frozen=True)
class ReplayTables:
  """The server's tables.

  - "online" (`max_size` transitions, uniform sampling, FIFO eviction): what the actors write.
    Sampling waits for `min_size_to_sample` transitions. With `samples_per_insert` > 0 a
    `SampleToInsertRatio` limiter keeps samples ~ samples_per_insert x inserts: `error_buffer`
    is a number b (allowed range spi x min_size -/+ b; default max(2 spi, 2, 1% of spi x
    min_size)) or a (min_diff, max_diff) pair used as is. Note that the upper end also blocks
    *inserts* (actors) that run ahead of sampling; (0, 1e12) makes only sampling wait: the
    learner never samples more than spi x inserted transitions after the first min_size.
    0 or None: no ratio, only `MinSize(min_size_to_sample)`.
  - "offline" (only when `offline_size` > 0): a separate uniform FIFO table of that capacity,
    e.g. seeded from a dataset with `insert_episodes`; online data never evicts it. MinSize(1).
  - "variables": the learner's newest parameters (max_size 1, FIFO, MinSize(1)).
  """
  max_size: int = 100_000
  min_size_to_sample: int = 1_000
  samples_per_insert: Optional[float] = None
  error_buffer: Union[None, float, tuple[float, float]] = None
  offline_size: int = 0
  stack_size: int = STACK_SIZE

  def __post_init__(self):
    for name in ("max_size", "min_size_to_sample", "offline_size", "stack_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value or value < (0 if name == "offline_size"
                                                                    else 1):
        raise ValueError(f"ReplayTables.{name} must be an integer >= "
                         f"{0 if name == 'offline_size' else 1}, got {value!r}.")
    if self.min_size_to_sample > self.max_size:
      raise ValueError(f"ReplayTables.min_size_to_sample ({self.min_size_to_sample}) exceeds "
                       f"max_size ({self.max_size}): sampling would never start.")
    if self.samples_per_insert is not None and self.samples_per_insert < 0:
      raise ValueError(f"ReplayTables.samples_per_insert must be >= 0 (0 or None: no rate "
                       f"limit), got {self.samples_per_insert}.")
    if self.error_buffer is not None and not self.samples_per_insert:
      raise ValueError("ReplayTables.error_buffer is set but samples_per_insert is not: the "
                       "error buffer belongs to the samples-per-insert rate limiter.")
    self.rate_limiter()  # Reverb's own checks, at construction.

  @property
  def table_names(self) -> tuple[str, ...]:
    return (ONLINE, *((OFFLINE,) if self.offline_size else ()), VARIABLES)

  def rate_limiter(self) -> reverb.rate_limiters.RateLimiter:
    """The online table's rate limiter."""
    spi = self.samples_per_insert
    if not spi:
      return reverb.rate_limiters.MinSize(self.min_size_to_sample)
    buffer = self.error_buffer
    if buffer is None:
      buffer = max(2.0 * spi, 2.0, 0.01 * spi * self.min_size_to_sample)
    elif not isinstance(buffer, (int, float)):
      buffer = tuple(float(b) for b in buffer)
    return reverb.rate_limiters.SampleToInsertRatio(spi, self.min_size_to_sample, buffer)

  def build(self) -> list[reverb.Table]:
    """The `reverb.Table`s (in the server's process)."""
    signature = transition_signature(self.stack_size)
    tables = [reverb.Table(ONLINE, reverb.selectors.Uniform(), reverb.selectors.Fifo(),
                           self.max_size, self.rate_limiter(), signature=signature)]
    if self.offline_size:
      tables.append(reverb.Table(OFFLINE, reverb.selectors.Uniform(), reverb.selectors.Fifo(),
                                 self.offline_size, reverb.rate_limiters.MinSize(1),
                                 signature=signature))
    tables.append(reverb.Table(VARIABLES, reverb.selectors.Fifo(), reverb.selectors.Fifo(), 1,
                               reverb.rate_limiters.MinSize(1)))
    return tables

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "ReplayTables":
    fields = json.loads(text)
    if isinstance(fields.get("error_buffer"), list):
      fields["error_buffer"] = tuple(fields["error_buffer"])
    return cls(**fields)


# -- Addresses. -----------------------------------------------------------------------------
def _split(address: str) -> tuple[str, int]:
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ReplayError(f"a Reverb address is 'host:port', got {address!r}.")
  return host.strip("[]"), int(port)


def port_open(address: str, timeout_s: float = 1.0) -> bool:
  """Whether something accepts TCP connections at `address` (a refused port answers at once)."""
  host, port = _split(address)
  try:
    with socket.create_connection((host, port), timeout=max(timeout_s, 0.05)):
      return True
  except OSError:
    return False


def server_info(address: str, timeout_s: float = 5.0) -> dict:
  """{table name: reverb TableInfo} of the server at `address`; ReplayError if there is none.

  A closed port is reported at once; a port that does not answer Reverb within `timeout_s`
  (rounded up to whole seconds, Reverb's unit) is reported then.
  """
  if not port_open(address, min(timeout_s, 2.0)):
    raise ReplayError(f"no Reverb server at {address}: nothing accepts connections on that "
                      f"port (not started yet, or it died).")
  try:
    return reverb.Client(address).server_info(max(1, math.ceil(timeout_s)))
  except Exception as e:  # pylint: disable=broad-except
    raise ReplayError(f"no Reverb server at {address}: the port is open but no Reverb answer "
                      f"came within {timeout_s:g}s ({type(e).__name__}: {e}).") from None


def check_address(address: str, timeout_s: float = 5.0,
                  tables: Sequence[str] = ()) -> dict:
  """Raises ReplayError unless a Reverb server at `address` answers and has `tables`.

  Returns its `server_info()`.
  """
  info = server_info(address, timeout_s)
  missing = [t for t in tables if t not in info]
  if missing:
    raise ReplayError(f"the Reverb server at {address} has no table(s) {missing}; its tables "
                      f"are {sorted(info)}.")
  return info


def check_table(address: str, table: str, timeout_s: float = 5.0):
  """The TableInfo of `table` at `address` (ReplayError: no server, or no such table)."""
  return check_address(address, timeout_s, (table,))[table]


# -- The server process. --------------------------------------------------------------------
class ServerProcess:
  """A Reverb server running in a child process (`python -m scaled_ql.replay`).

  `.address` is "localhost:PORT"; `.pid`, `.alive()`, `.stop()` (also on leaving a `with`).
  The child's stdout and stderr go to `.log_path` (in a temporary run directory, removed by
  `stop()`); it exits by itself when this process dies.
  """

  def __init__(self, process: subprocess.Popen, port: int, tables: ReplayTables, run_dir: str):
    self._process, self.port, self.tables, self._run_dir = process, port, tables, run_dir
    self.address = f"localhost:{port}"

  @property
  def pid(self) -> int:
    return self._process.pid

  @property
  def log_path(self) -> str:
    return os.path.join(self._run_dir, "server.log")

  def alive(self) -> bool:
    return self._process.poll() is None

  def log_tail(self, chars: int = 3000) -> str:
    try:
      with open(self.log_path, errors="replace") as f:
        return f.read()[-chars:]
    except OSError:
      return ""

  def stop(self, timeout_s: float = 10.0) -> None:
    """Stops the server (SIGTERM, then SIGKILL) and removes its run directory. Idempotent."""
    if self.alive():
      self._process.terminate()
      try:
        self._process.wait(timeout_s)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait(timeout_s)
    shutil.rmtree(self._run_dir, ignore_errors=True)

  def __enter__(self) -> "ServerProcess":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def __repr__(self) -> str:
    return f"ServerProcess(address={self.address!r}, pid={self.pid}, alive={self.alive()})"


def start_server(port: int = 0, *, tables: ReplayTables, start_timeout_s: float = 120.0,
                 checkpoint_dir: Optional[str] = None) -> ServerProcess:
  """Starts a Reverb server with `tables` in its own process; returns once it answers.

  port 0 picks a free port. checkpoint_dir: where `checkpoint()` writes the tables' contents;
  a server started on a directory that holds a checkpoint starts from the newest one (Reverb's
  own checkpointing: items, priorities and rate-limiter counts). None: a temporary directory,
  removed by `stop()`. Raises ReplayError with the server's output if it dies on start, or
  does not answer within `start_timeout_s` (it imports TensorFlow: seconds).
  """
  if not isinstance(tables, ReplayTables):
    raise TypeError(f"tables must be a ReplayTables, got {type(tables).__name__}.")
  run_dir = tempfile.mkdtemp(prefix="scaled_ql_replay_")
  ready = os.path.join(run_dir, "port")
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["CUDA_VISIBLE_DEVICES"] = ""  # The server never needs an accelerator.
  command = [sys.executable, "-m", "scaled_ql.replay", f"--port={int(port)}",
             f"--tables={tables.to_json()}", f"--ready_file={ready}",
             f"--checkpoint_dir={checkpoint_dir or os.path.join(run_dir, 'checkpoints')}",
             f"--parent_pid={os.getpid()}"]
  with open(os.path.join(run_dir, "server.log"), "wb") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               stdin=subprocess.DEVNULL)
  server = ServerProcess(process, int(port), tables, run_dir)
  deadline = time.monotonic() + start_timeout_s
  try:
    while True:
      if not server.alive():
        raise ReplayError(f"the Reverb server process (pid {server.pid}) exited with code "
                          f"{process.returncode} on start; its output:\n{server.log_tail()}")
      if os.path.exists(ready):
        with open(ready) as f:
          text = f.read().strip()
        if text.isdigit():
          server.port, server.address = int(text), f"localhost:{text}"
          try:
            check_address(server.address, 2.0, tables.table_names)
            return server
          except ReplayError:
            pass
      if time.monotonic() > deadline:
        raise ReplayError(f"the Reverb server process (pid {server.pid}) did not answer within "
                          f"{start_timeout_s:g}s; its output:\n{server.log_tail()}")
      time.sleep(0.05)
  except BaseException:
    server.stop()
    raise


def checkpoint(address: str) -> str:
  """Has the server at `address` write a checkpoint of its tables (it blocks while it writes)
  and removes the older ones beside it. Returns the new checkpoint's path."""
  try:
    path = reverb.Client(address).checkpoint()
  except Exception as e:  # pylint: disable=broad-except
    raise ReplayError(f"the Reverb server at {address} could not write a checkpoint "
                      f"({type(e).__name__}: {e}).") from None
  root, newest = os.path.split(os.path.normpath(path))
  for name in os.listdir(root):
    if name != newest and os.path.isdir(os.path.join(root, name)):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  return path


def serve(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m scaled_ql.replay --port=P --tables='{json}'`: runs a server until killed."""
  parser = argparse.ArgumentParser(prog="python -m scaled_ql.replay", description=serve.__doc__)
  parser.add_argument("--port", type=int, default=0, help="0: pick a free port.")
  parser.add_argument("--tables", default="{}", help="ReplayTables fields as JSON.")
  parser.add_argument("--ready_file", default="", help="Written with the port once serving.")
  parser.add_argument("--checkpoint_dir", default="",
                      help="Reverb checkpoint directory (default: a temporary one).")
  parser.add_argument("--parent_pid", type=int, default=0,
                      help="Exit when this process is gone (0: run until killed).")
  args = parser.parse_args(argv)
  tables = ReplayTables.from_json(args.tables)
  checkpointer = None
  if args.checkpoint_dir:
    checkpointer = reverb.checkpointers.DefaultCheckpointer(args.checkpoint_dir)
  server = reverb.Server(tables.build(), port=args.port or None, checkpointer=checkpointer)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  print(f"Reverb server on port {server.port}, tables {tables}", flush=True)
  if args.ready_file:
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
      f.write(str(server.port))
    os.replace(tmp, args.ready_file)
  try:
    while not args.parent_pid or _pid_alive(args.parent_pid):
      time.sleep(0.5)
  finally:
    server.stop()


def _pid_alive(pid: int) -> bool:
  if os.getppid() != pid:  # Re-parented: the parent is gone.
    return False
  try:
    os.kill(pid, 0)
    return True
  except OSError:
    return False
