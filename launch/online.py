"""Online fine-tuning: a Reverb replay server, actor processes on a game variant, the learner.

`train_online` (called by `launch.finetune` for the online presets) runs, in this order:
  1. checks: the variant exists in the ROM, the replay address answers (when one is given),
     the sizes make sense; all before anything starts;
  2. the replay server: its own process (scaled_ql.replay.start_server), or the one at
     config.online.replay_address;
  3. offline seeding: config.online.offline_transitions transitions of config.data inserted
     before acting, into their own "offline" table (keep_offline: never evicted, a fixed share
     offline_fraction of every batch) or into the "online" table (evicted FIFO as online data
     arrives);
  4. the learner (launch.training.train, the pre-training loop) whose batches come from the
     replay (`OnlineBatches`), with the first parameters published before the actors start and
     then every `publish_every` steps;
  5. `num_actors` actor processes (launch/actor.py), each with its share of `env_steps`.

The run ends when the actors have spent the env-step budget and the rate limiter allows no
more samples (or at config.num_steps). Without a limiter (online.samples_per_insert=0) the
learner never waits for the actors, so it trains to config.num_steps however fast they act.
An actor that dies is restarted (restart_actors, at most MAX_RESTARTS times each) or left
dead while the others go on; either is printed. When the
replay server dies the run stops with a message naming it; the newest checkpoint stays, and
rerunning the command resumes the learner with a new, empty replay (the env-step count is kept
in the checkpoint; replay contents are not). Nothing waits forever: every wait for the server or
for data ends after config.online.timeout_s with an error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

import jax
import numpy as np

from launch import actor as actor_lib
from launch import common, training
from scaled_ql import data, envs, games, replay

MAX_RESTARTS = 3
_POLL_S = 2.0  # ReplayBatches' wait per try; between tries actors and server are checked.


class OnlineError(RuntimeError):
  """The online loop cannot go on (server gone, every actor dead, no data in time)."""


def check_online_config(config) -> None:
  """Every check that can fail before the server, the actors or the learner start."""
  o = config.online
  game = games.get_game(o.game)
  if tuple(config.games) != (game.name,):
    raise ValueError(f"config.games must be (config.online.game,) = ({game.name!r},) for online "
                     f"fine-tuning, got {tuple(config.games)}.")
  modes, difficulties = envs.available_variants(game)
  if o.mode != -1 and o.mode not in modes:
    raise ValueError(f"config.online.mode={o.mode}: {game.name} has no mode {o.mode}; its ROM "
                     f"offers modes {list(modes)}.")
  if o.difficulty != -1 and o.difficulty not in difficulties:
    raise ValueError(f"config.online.difficulty={o.difficulty}: {game.name} has no difficulty "
                     f"{o.difficulty}; its ROM offers difficulties {list(difficulties)}.")
  for field in ("env_steps", "num_actors", "envs_per_actor", "publish_every", "replay_size",
                "min_replay_size"):
    if getattr(o, field) < 1:
      raise ValueError(f"config.online.{field} must be >= 1, got {getattr(o, field)}.")
  if o.min_replay_size > o.replay_size:
    raise ValueError(f"config.online.min_replay_size ({o.min_replay_size}) exceeds replay_size "
                     f"({o.replay_size}): sampling would never start.")
  if o.min_replay_size > o.env_steps:
    raise ValueError(f"config.online.min_replay_size ({o.min_replay_size}) exceeds the env-step "
                     f"budget ({o.env_steps}): sampling would never start.")
  if o.offline_transitions and not config.data.data_dir:
    raise ValueError(f"config.online.offline_transitions={o.offline_transitions} needs "
                     f"config.data.data_dir (the dataset to seed the replay from).")
  if o.offline_transitions:  # The seeding data must be there before anything starts.
    data.find_sources(config.data.data_dir, o.game, runs=list(config.data.runs) or None)
  if o.keep_offline and o.offline_transitions and not 0.0 < o.offline_fraction < 1.0:
    raise ValueError(f"config.online.offline_fraction must lie in (0, 1) with keep_offline, got "
                     f"{o.offline_fraction}.")
  if jax.process_count() > 1:
    raise ValueError("online fine-tuning runs on one host (its devices may be many).")
  if o.replay_address:
    replay.check_address(o.replay_address, min(o.timeout_s, 10.0))


def replay_tables(config) -> replay.ReplayTables:
  o = config.online
  offline = o.offline_transitions if (o.keep_offline and o.offline_transitions) else 0
  return replay.ReplayTables(max_size=o.replay_size, min_size_to_sample=o.min_replay_size,
                             samples_per_insert=o.samples_per_insert or None,
                             offline_size=offline)


def seed_offline(config, address: str) -> int:
  """Inserts config.online.offline_transitions transitions of config.data; returns how many."""
  o = config.online
  if not o.offline_transitions:
    return 0
  table = replay.OFFLINE if o.keep_offline else replay.ONLINE
  episodes = data.read_episodes(config.data.data_dir, o.game, runs=list(config.data.runs) or None)

  def budgeted():
    total = 0  # Transitions: an RLDS episode of T steps holds T - 1 (its last step is final).
    for episode in episodes:
      if total >= o.offline_transitions:
        return
      steps = len(episode["action"])
      if total + steps - 1 > o.offline_transitions:  # The last episode, cut to the budget.
        keep = o.offline_transitions - total + 1
        episode = {k: (v[:keep] if hasattr(v, "__len__") and len(v) == steps else v)
                   for k, v in episode.items()}
        episode["is_last"] = np.asarray(episode["is_last"]).copy()
        episode["is_last"][-1] = True  # A cut, not a terminal: it bootstraps.
        episode["is_terminal"] = np.asarray(episode["is_terminal"]).copy()
        episode["is_terminal"][-1] = False
      total += len(episode["action"]) - 1
      yield episode

  inserted = replay.insert_episodes(address, table, budgeted(), 0, n_step=config.loss.n_step,
                                    gamma=config.loss.gamma)
  print(f"seeded the {table!r} table with {inserted:,} transitions of {config.data.data_dir}",
        flush=True)
  return inserted


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
    spec = dict(address=address, game=o.game, **training.game_variant(config),
                model=config.model.to_dict(), loss_kind=config.loss.kind,
                v_min=config.loss.v_min, v_max=config.loss.v_max,
                n_step=config.loss.n_step, gamma=config.loss.gamma, epsilon=o.epsilon,
                epsilon_decay_steps=o.epsilon_decay_steps, envs_per_actor=o.envs_per_actor,
                budgets=budgets, env_steps_base=env_steps_done, seed=config.seed + launch,
                poll_every=max(o.envs_per_actor, 50), timeout_s=o.timeout_s)
    with open(self.spec_path, "w") as f:
      json.dump(spec, f, indent=1)
    self.base, self.budgets, self.restart = env_steps_done, budgets, o.restart_actors
    self.processes: list[Optional[subprocess.Popen]] = [None] * o.num_actors
    self.restarts = [0] * o.num_actors
    self.dead: set[int] = set()
    self.returns: list[float] = []  # Every episode return reported, in order of reading.
    # What has been read of each actor's progress log: the bytes, the newest line, and the
    # episode returns not yet handed out by new_returns().
    self._offsets = [0] * o.num_actors
    self._last: list[dict] = [{} for _ in range(o.num_actors)]
    self._unreported: list[float] = []

  def _start(self, i: int) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    log = open(os.path.join(self.dir, f"actor_{i}.log"), "ab")  # pylint: disable=consider-using-with
    self.processes[i] = subprocess.Popen(
        [sys.executable, "-m", "launch.actor", f"--spec={self.spec_path}", f"--actor_id={i}"],
        cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
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
      self._unreported += record.get("returns", [])
    self._offsets[i] += complete
    return self._last[i]

  def env_steps(self) -> int:
    """The run's env steps: before this launch plus this launch's actors'."""
    return self.base + sum(int(self.progress(i).get("env_steps", 0))
                           for i in range(len(self.processes)))

  def new_returns(self) -> list[float]:
    """Episode returns reported since the last call."""
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


class OnlineBatches:
  """The learner's batches from the replay, watching the actors and the server while waiting.

  next() -> Batch; StopIteration once the actors are done and no batch comes (the budget is
  spent); OnlineError when the server is gone or no data comes within timeout_s.
  state_dict() = {"env_steps": ...}: what a resume needs (replay contents are not kept).
  """

  def __init__(self, config, workdir: str, server: Optional[replay.ServerProcess],
               address: str):
    self.config, self.workdir, self.server, self.address = config, workdir, server, address
    self.env_steps_done = 0
    self.actors: Optional[Actors] = None
    self.batches: Optional[replay.ReplayBatches] = None

  def start(self) -> None:
    """Actors and the sampling stream; after the first parameters are published."""
    o = self.config.online
    mix = ({replay.OFFLINE: o.offline_fraction, replay.ONLINE: 1.0 - o.offline_fraction}
           if o.keep_offline and o.offline_transitions else {replay.ONLINE: 1.0})
    self.actors = Actors(self.config, self.workdir, self.address, self.env_steps_done)
    self.actors.start()
    self.batches = replay.ReplayBatches(self.address, self.config.batch_size,
                                        tables_and_fractions=mix, timeout_s=_POLL_S,
                                        rate_limiter_timeout_s=_POLL_S)

  def check_server(self) -> None:
    if self.server is not None and not self.server.alive():
      raise OnlineError(
          f"the Reverb server at {self.address} (pid {self.server.pid}) died; stopping. The "
          f"newest checkpoint is kept: rerun the same command to resume with a new, empty replay "
          f"(env steps so far: {self.actors.env_steps() if self.actors else 0:,}). Server "
          f"output:\n{self.server.log_tail()}")

  def publish(self, params, step: int) -> None:
    """The learner's parameters to the actors; a server that died on the way is said so."""
    try:
      replay.publish_params(self.address, params, step, timeout_s=self.config.online.timeout_s)
    except replay.ReplayError:
      self.check_server()
      raise

  def __iter__(self):
    return self

  def __next__(self):
    deadline = time.monotonic() + self.config.online.timeout_s
    while True:
      self.check_server()
      self.actors.check()
      try:
        return next(self.batches)
      except replay.ReplayError as e:
        self.check_server()
        if self.actors.finished():
          raise StopIteration from None
        if time.monotonic() > deadline:
          raise OnlineError(f"no batch from the replay at {self.address} within "
                            f"{self.config.online.timeout_s:g}s while actors ran ({e}). Actor "
                            f"logs: {self.actors.dir}.") from None

  def state_dict(self) -> dict:
    return dict(env_steps=self.actors.env_steps() if self.actors else self.env_steps_done)

  def load_state_dict(self, state: dict) -> None:
    self.env_steps_done = int(state.get("env_steps", 0))

  def close(self) -> None:
    if self.batches is not None:
      self.batches.close()
    if self.actors is not None:
      self.actors.stop()


def train_online(config, workdir: str, *, initial_params=None, meta_extra=None) -> None:
  """Online fine-tuning of `config` in `workdir` (see the module docstring)."""
  with common.input_errors(replay.ReplayError):
    check_online_config(config)
  o = config.online
  server = None
  if o.replay_address:
    address = o.replay_address
  else:
    server = replay.start_server(tables=replay_tables(config))
    address = server.address
  print(f"replay server at {address}" + (f" (pid {server.pid}, log {server.log_path})"
                                         if server else ""), flush=True)
  online = OnlineBatches(config, workdir, server, address)
  last_log = {"step": 0}

  def on_start(step, state):
    online.publish(state.params, step)
    seed_offline(config, address)
    online.start()
    variant = {k: "default" if v is None else v for k, v in training.game_variant(config).items()}
    print(f"{o.num_actors} actors on {o.game} (mode {variant['mode']}, "
          f"difficulty {variant['difficulty']}), "
          f"{o.envs_per_actor} emulators each; env steps {online.env_steps_done:,} -> "
          f"{o.env_steps:,}; logs in {online.actors.dir}", flush=True)

  def on_step(step, state):
    if step % o.publish_every == 0:
      online.publish(state.params, step)
    if step - last_log["step"] >= config.log_every:
      last_log["step"] = step
      returns = online.actors.new_returns()
      recent = online.actors.returns[-20:]
      line = dict(step=step, time=time.time(), env_steps=online.actors.env_steps(),
                  episodes=len(returns),
                  mean_return_last_20=float(np.mean(recent)) if recent else None)
      with open(os.path.join(workdir, "online.jsonl"), "a") as f:
        f.write(json.dumps(dict(line, returns=returns)) + "\n")

  try:
    training.train(config, workdir, what="online fine-tuning", initial_params=initial_params,
                   heads_only=config.finetune.freeze_backbone, meta_extra=meta_extra,
                   make_batches=lambda *_: (online, config.batch_size), on_start=on_start,
                   on_step=on_step)
    online.actors.new_returns()
    returns = online.actors.returns
    print(f"online: {online.actors.env_steps():,} env steps, {len(returns)} episodes, mean "
          f"return of the last 20: {np.mean(returns[-20:]) if returns else float('nan'):.2f}",
          flush=True)
  finally:
    online.close()
    if server is not None:
      server.stop()
