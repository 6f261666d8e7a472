"""The actor processes of one online launch (`python -m scaled_ql.actors`): start them, read
their progress logs, restart the ones that die (or go on without them), stop them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

from scaled_ql import actors as actor_lib
from scaled_ql.train import periodic

MAX_RESTARTS = 3


class OnlineError(RuntimeError):
  """The online loop cannot go on (server gone, every actor dead, no data in time)."""


class Actors:
  """The actor processes of one launch: start, watch (restart or go on), stop."""

  def __init__(self, config, workdir: str, address: str, env_steps_done: int):
    o = config.online
    left = max(o.env_steps - env_steps_done, 0)
    budgets = [left // o.num_actors + int(i < left % o.num_actors) for i in range(o.num_actors)]
    launch = 0
    while os.path.exists(os.path.join(workdir, "online", f"launch_{launch}")):
      launch += 1
    self.dir = os.path.join(workdir, "online", f"launch_{launch}")
    os.makedirs(self.dir)
    self.spec_path = os.path.join(self.dir, "spec.json")
    spec = dict(address=address, game=o.game, **periodic.game_variant(config),
                model=config.model.to_dict(), loss_kind=config.loss.kind,
                v_min=config.loss.v_min, v_max=config.loss.v_max,
                n_step=config.loss.n_step, gamma=config.loss.gamma, epsilon=o.epsilon,
                epsilon_start=o.epsilon_start,
                epsilon_decay_steps=o.epsilon_decay_steps, envs_per_actor=o.envs_per_actor,
                budgets=budgets, env_steps_base=env_steps_done, seed=config.seed + launch,
                poll_every=max(o.envs_per_actor, 50), timeout_s=o.timeout_s)
    with open(self.spec_path, "w") as f:
      json.dump(spec, f, indent=1)
    self.base, self.budgets, self.restart = env_steps_done, budgets, o.restart_actors
    self.processes: list[Optional[subprocess.Popen]] = [None] * o.num_actors
    self.restarts = [0] * o.num_actors
    self.dead: set[int] = set()
    # Every (run env step, episode return) reported, in order of reading.
    self.returns: list[tuple[int, float]] = []
    # What has been read of each actor's progress log: the bytes, the newest line, and the
    # episode returns not yet handed out by new_returns().
    self._offsets = [0] * o.num_actors
    self._last: list[dict] = [{} for _ in range(o.num_actors)]
    self._unreported: list[tuple[int, float]] = []

  def _start(self, i: int) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    log = open(os.path.join(self.dir, f"actor_{i}.log"), "ab")  # pylint: disable=consider-using-with
    self.processes[i] = subprocess.Popen(
        [sys.executable, "-m", "scaled_ql.actors", f"--spec={self.spec_path}", f"--actor_id={i}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    with open(os.path.join(self.dir, f"actor_{i}.pid"), "w") as f:
      f.write(str(self.processes[i].pid))

  def start(self) -> None:
    for i in range(len(self.processes)):
      if self.budgets[i] > 0:
        self._start(i)

  def progress(self, i: int) -> dict:
    """Actor i's newest progress line ({} before its first), reading only what is new."""
    try:
      with open(actor_lib.progress_path(self.spec_path, i), "rb") as f:
        f.seek(self._offsets[i])
        chunk = f.read()
    except FileNotFoundError:
      return self._last[i]
    complete = chunk.rfind(b"\n") + 1  # A line still being written waits for the next read.
    for line in chunk[:complete].splitlines():
      try:
        record = json.loads(line)
      except ValueError:  # Empty, or cut by a kill (the restarted actor wrote on after it).
        continue
      self._last[i] = record
      returns = record.get("returns", [])
      at = record.get("returns_at") or [self.base] * len(returns)
      self._unreported += [(int(e), float(r)) for e, r in zip(at, returns)]
    self._offsets[i] += complete
    return self._last[i]

  def env_steps(self) -> int:
    """The run's env steps: before this launch plus this launch's actors'."""
    return self.base + sum(int(self.progress(i).get("env_steps", 0))
                           for i in range(len(self.processes)))

  def new_returns(self) -> list[tuple[int, float]]:
    """(env step, episode return) reported since the last call."""
    for i in range(len(self.processes)):
      self.progress(i)
    out, self._unreported = self._unreported, []
    self.returns += out
    return out

  def check(self) -> None:
    """Restarts (or gives up on) dead actors; raises OnlineError when none is left."""
    for i, process in enumerate(self.processes):
      if process is None or i in self.dead or process.poll() is None:
        continue
      if process.returncode == 0 and self.progress(i).get("finished"):
        continue
      tail = _tail(os.path.join(self.dir, f"actor_{i}.log"))
      if self.restart and self.restarts[i] < MAX_RESTARTS:
        self.restarts[i] += 1
        print(f"actor {i} died (exit code {process.returncode}); restarting it (restart "
              f"{self.restarts[i]} of {MAX_RESTARTS}). Its last output:\n{tail}", flush=True)
        self._start(i)
      else:
        self.dead.add(i)
        alive = len(self.processes) - len(self.dead)
        print(f"actor {i} died (exit code {process.returncode}) and is not restarted; going on "
              f"with {alive} actor{'s' if alive != 1 else ''}. Its last output:\n{tail}",
              flush=True)
    if len(self.dead) == len(self.processes):
      raise OnlineError(f"every actor died; their logs are in {self.dir}.")

  def finished(self) -> bool:
    """Every actor has spent its budget (or is dead and not coming back)."""
    return all(i in self.dead or self.budgets[i] == 0 or (
        p is not None and p.poll() == 0 and self.progress(i).get("finished"))
               for i, p in enumerate(self.processes))

  def stop(self) -> None:
    for process in self.processes:
      if process is not None and process.poll() is None:
        process.terminate()
    for process in self.processes:
      if process is not None:
        try:
          process.wait(10)
        except subprocess.TimeoutExpired:
          process.kill()
          process.wait()


def _tail(path: str, chars: int = 1500) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(max(os.path.getsize(path) - chars, 0))
      return f.read().decode(errors="replace")
  except OSError:
    return "(no log)"
