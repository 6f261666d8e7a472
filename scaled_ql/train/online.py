"""Online fine-tuning: a Reverb replay server, actor processes on a game variant, the learner.

`train_online` (called by `scaled_ql.train.finetune` for the online presets) runs the training
loop (`loop.train`) with `OnlineHooks`:
  1. checks: the variant exists in the ROM, the replay address answers (when one is given),
     the sizes make sense; all before anything starts;
  2. the replay server: its own process (scaled_ql.replay.start_server) on WORKDIR/replay, or
     the one at config.online.replay_address;
  3. offline seeding (fresh runs): config.online.offline_transitions transitions of config.data
     inserted before acting, into their own "offline" table (keep_offline: never evicted, a
     fixed share offline_fraction of every batch) or into the "online" table (evicted FIFO as
     online data arrives);
  4. the learner, whose batches come from the replay (`OnlineBatches`), with the first
     parameters published before the actors start and then every `publish_every` steps;
  5. `num_actors` actor processes (`python -m scaled_ql.actors`), each with its share of
     `env_steps`.

The run ends when the actors have spent the env-step budget and the rate limiter allows no
more samples (or at config.num_steps). Without a limiter (online.samples_per_insert=0) the
learner never waits for the actors, so it trains to config.num_steps however fast they act.
An actor that dies is restarted (restart_actors, at most MAX_RESTARTS times each) or left
dead while the others go on; either is printed.

Resume. With every learner checkpoint the server writes a checkpoint of its tables (Reverb's
own, in WORKDIR/replay, the older one removed), and the env-step count goes into the learner's
checkpoint. Rerunning the command after a kill starts the server from that replay checkpoint:
the learner goes on with the transitions it had (and the rate limiter's counts), not an empty
replay. The replay may hold the transitions of a few more env steps than the learner's
checkpoint counts (those acted between the two writes); the actors play the budget left by the
checkpoint's count. With an external server (replay_address) its contents are the server's
business and nothing is checkpointed. Nothing waits forever: every wait for the server or for
data ends after config.online.timeout_s with an error.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import jax
import numpy as np

from scaled_ql import data, envs, errors, games, replay
from scaled_ql.train import loop, periodic
from scaled_ql.train import metrics as metrics_lib
from scaled_ql.train.actor_pool import MAX_RESTARTS, Actors, OnlineError

__all__ = ["MAX_RESTARTS", "OnlineError", "OnlineBatches", "OnlineHooks", "train_online"]

_POLL_S = 2.0  # ReplayBatches' wait per try; between tries actors and server are checked.
ONLINE_LOG = "online.jsonl"
REPLAY_DIR = "replay"


def check_online_config(config) -> None:
  """Every check that can fail before the server, the actors or the learner start."""
  o = config.online
  game = games.get_game(o.game)
  with config.unlocked():
    config.games = games.canonical_names(config.games)
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
  # The uniform stream: every prefix is about uniform over the selection (all runs and
  # checkpoints), so the budget takes transitions of the whole data, not its first ones.
  episodes = data.uniform_episodes(config.data.data_dir, o.game,
                                   runs=list(config.data.runs) or None, seed=config.seed)

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


class OnlineBatches:
  """The learner's batches from the replay, watching the actors and the server while waiting.

  next() -> Batch; StopIteration once the actors are done and no batch comes (the budget is
  spent); OnlineError when the server is gone or no data comes within timeout_s.
  state_dict() = {"env_steps": ...}, after the server (when it is ours) has written a
  checkpoint of its tables: what a resume needs.
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
          f"newest checkpoint is kept: rerun the same command to resume with the replay of "
          f"that checkpoint (env steps so far: "
          f"{self.actors.env_steps() if self.actors else 0:,}). Server "
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
    if self.server is not None:
      try:
        replay.checkpoint(self.address)
      except replay.ReplayError:
        self.check_server()
        raise
    return dict(env_steps=self.actors.env_steps() if self.actors else self.env_steps_done)

  def load_state_dict(self, state: dict) -> None:
    self.env_steps_done = int(state.get("env_steps", 0))

  def close(self) -> None:
    if self.batches is not None:
      self.batches.close()
    if self.actors is not None:
      self.actors.stop()


def replay_sizes(address: str) -> dict:
  """{table: items} of the transition tables at `address`."""
  info = replay.server_info(address)
  return {t: int(info[t].current_size) for t in (replay.ONLINE, replay.OFFLINE) if t in info}


class OnlineHooks:
  """The training loop's hooks for online fine-tuning (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.server: Optional[replay.ServerProcess] = None
    self.online: Optional[OnlineBatches] = None
    self._last_log = 0
    self._closed = False

  def check(self, config, names) -> None:
    with errors.input_checks(replay.ReplayError):
      check_online_config(config)
    self.config = config

  def batches(self, config, names, host, hosts, counts):
    o = config.online
    if o.replay_address:
      address = o.replay_address
    else:
      self.server = replay.start_server(
          tables=replay_tables(config), checkpoint_dir=os.path.join(self.workdir, REPLAY_DIR))
      address = self.server.address
    print(f"replay server at {address}" + (f" (pid {self.server.pid}, log "
                                           f"{self.server.log_path})" if self.server else ""),
          flush=True)
    self.online = OnlineBatches(config, self.workdir, self.server, address)
    return self, config.batch_size

  def on_start(self, step: int, state) -> None:
    config, online, o = self.config, self.online, self.config.online
    self._last_log = step
    online.publish(state.params, step)
    sizes = replay_sizes(online.address)
    if any(sizes.values()):
      print("replay restored: " + ", ".join(f"{n:,} {t} transitions" for t, n in sizes.items()),
            flush=True)
    else:
      seed_offline(config, online.address)
    online.start()
    variant = {k: "default" if v is None else v for k, v in periodic.game_variant(config).items()}
    print(f"{o.num_actors} actors on {o.game} (mode {variant['mode']}, "
          f"difficulty {variant['difficulty']}), "
          f"{o.envs_per_actor} emulators each; env steps {online.env_steps_done:,} -> "
          f"{o.env_steps:,}; logs in {online.actors.dir}", flush=True)

  def on_step(self, step: int, state) -> None:
    online, o = self.online, self.config.online
    if step % o.publish_every == 0:
      online.publish(state.params, step)
    if step - self._last_log >= self.config.log_every:
      self._last_log = step
      returns = online.actors.new_returns()
      recent = online.actors.returns[-20:]
      metrics_lib.append_jsonl(os.path.join(self.workdir, ONLINE_LOG), dict(
          step=step, time=time.time(), env_steps=online.actors.env_steps(),
          episodes=len(returns), mean_return_last_20=float(np.mean(recent)) if recent else None,
          returns=returns))

  # The batch stream of the loop: the replay's, with the server stopped on close.
  def __iter__(self):
    return self

  def __next__(self):
    return next(self.online)

  def state_dict(self) -> dict:
    return self.online.state_dict()

  def load_state_dict(self, state: dict) -> None:
    self.online.load_state_dict(state)

  def close(self) -> None:
    """Stops the actors, the sampling stream and our server (idempotent)."""
    online = self.online
    try:
      if online is not None and not self._closed:
        online.close()
    finally:
      self._closed = True
      if self.server is not None:
        self.server.stop()


def train_online(config, workdir: str, *, initial_params=None, meta_extra=None):
  """Online fine-tuning of `config` in `workdir` (see the module docstring). Returns the
  loop's Result."""
  hooks = OnlineHooks(workdir)
  try:
    result = loop.train(config, workdir, what="online fine-tuning", hooks=hooks,
                        initial_params=initial_params,
                        heads_only=config.finetune.freeze_backbone, meta_extra=meta_extra)
  finally:
    hooks.close()  # Also when the loop never started (the server is up from `batches`).
  actors = hooks.online.actors if hooks.online is not None else None
  if actors is not None:
    actors.new_returns()
    returns = actors.returns
    print(f"online: {actors.env_steps():,} env steps, {len(returns)} episodes, mean "
          f"return of the last 20: {np.mean(returns[-20:]) if returns else float('nan'):.2f}",
          flush=True)
  return result
