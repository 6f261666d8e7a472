"""Independent jobs of a reproduction side by side, each in its own process on one CPU core.

On the 2-core reference machine two training processes pinned to one core each make 1.38x the
updates per second of one process on both (BUILD_NOTES.md, "Results a referee can rerun").
A network's bits can depend on the cores its process may use (under XLA:CPU's thunk runtime,
and under the classic one for some shapes: offline fine-tuning's float sums came out different
on 1 core and on 2), so with workers every job runs on exactly one core, whichever core and
whatever ran beside it, and the stages record 1 core (`provenance`): a rerun with the same
number of workers gives the same bytes; one with another number is refused (`stages`).

`Workers(n, log).map(jobs)` runs `fn(*args)` for each `Job`: with n = 1, or where the job's
stages are done already (it only reads them), in this process, one after the other; else in
fresh processes, at most n at a time, each pinned to its own core, its output in its log file.
They are forked from a fork server that imported TensorFlow, TFDS and the library once, not
spawned (each spawn imported them again: ~6 s of a core per job; the `test` plan's 22 jobs took
168 s spawned and 115 s forked, with the same bytes). It returns the results in the jobs'
order (the order they finish in changes nothing). A job that fails stops the others and raises
with the tail of its log: an `errors.InputError` as such, anything else as `WorkerError`.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from typing import Any, Callable, NamedTuple, Sequence

from scaled_ql import errors


# Imported once in the fork server that every worker process is forked from (imports only: no
# JAX backend, TensorFlow runtime or emulator exists before a job starts).
PRELOAD = ["tensorflow", "tensorflow_datasets", "scaled_ql.reproduce.run"]


class Job(NamedTuple):
  label: str
  fn: Callable  # module-level (picklable), as are its args
  args: tuple
  log_path: str  # the worker process's output
  done: bool = False  # its stages are done: run here (it only reads them)


class WorkerError(RuntimeError):
  """A job in a worker process failed."""


def cores() -> list[int]:
  """The CPU cores this process may use."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
      else list(range(os.cpu_count() or 1))


def _child(conn, core: int, fn: Callable, args: Sequence, log_path: str) -> None:
  """A worker process: pinned to `core`, output to `log_path`, then fn(*args); sends
  ("ok", result) or ("error", is_input_error, text)."""
  os.sched_setaffinity(0, {core})  # Before JAX or TensorFlow size their thread pools.
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  try:
    from scaled_ql import app  # pylint: disable=g-import-not-at-top
    app.configure_jax()  # XLA_FLAGS (the runtime) came with the environment.
    conn.send(("ok", fn(*args)))
  except BaseException as e:  # pylint: disable=broad-except
    traceback.print_exc()
    conn.send(("error", isinstance(e, errors.InputError), f"{type(e).__name__}: {e}"))
  finally:
    conn.close()


class Workers:
  """Runs jobs (module docstring)."""

  def __init__(self, n: int, log: Callable[[str], None] = print):
    if isinstance(n, bool) or int(n) != n or n < 1:
      raise errors.InputError(f"--workers must be a whole number >= 1, got {n!r}.")
    self.log = log
    if n > 1 and not hasattr(os, "sched_setaffinity"):
      log("one job at a time: this OS cannot pin a process to a core")
      n = 1
    self.cores = cores()[:n]
    self.n = len(self.cores) if n > 1 else 1

  def provenance(self, made_under: dict) -> dict:
    """`run_meta.provenance()` of the jobs: with workers, each runs on one core."""
    return dict(made_under, cpu_cores=1) if self.n > 1 else made_under

  def map(self, jobs: Sequence[Job]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    pending = []
    for i, job in enumerate(jobs):
      if self.n == 1 or job.done:
        results[i] = job.fn(*job.args)
      else:
        pending.append(i)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    running = {}  # core -> (job index, process, connection, start)
    try:
      while pending or running:
        for core in [c for c in self.cores if c not in running]:
          if not pending:
            break
          i = pending.pop(0)
          label, fn, args, log_path, _ = jobs[i]
          parent_end, child_end = ctx.Pipe(duplex=False)
          process = ctx.Process(target=_child, args=(child_end, core, fn, args, log_path),
                                daemon=True)
          process.start()
          child_end.close()
          self.log(f"[{label}] running on core {core}; its output: {log_path}")
          running[core] = (i, process, parent_end, time.time())
        ready = multiprocessing.connection.wait(
            [conn for _, _, conn, _ in running.values()] +
            [p.sentinel for _, p, _, _ in running.values()], timeout=5.0)
        for core, (i, process, conn, start) in list(running.items()):
          if conn not in ready and process.sentinel not in ready:
            continue
          message = conn.recv() if conn.poll() else ("error", False, "the process died "
                                                     f"(exit code {process.exitcode})")
          process.join()
          del running[core]
          label, log_path = jobs[i].label, jobs[i].log_path
          if message[0] != "ok":
            raise self._failure(label, log_path, message[1], message[2])
          results[i] = message[1]
          self.log(f"[{label}] finished on core {core} in {time.time() - start:.0f}s")
    finally:
      for _, process, conn, _ in running.values():
        process.kill()
        process.join()
        conn.close()
    return results

  @staticmethod
  def _failure(label: str, log_path: str, input_error: bool, text: str) -> Exception:
    try:
      with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    except OSError:
      tail = ""
    if input_error:
      return errors.InputError(f"{label}: {text.split(': ', 1)[-1]}")
    return WorkerError(f"{label} failed ({text}); the end of its output ({log_path}):\n{tail}")
