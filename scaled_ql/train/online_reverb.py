"""The Reverb backend of online fine-tuning: a replay server, actor processes, the learner's
batches from the server (`config.online.replay = "reverb"`), for many actors and remote
servers (`online.replay_address`).

`ReverbOnline` (the loop's batch stream, the runtime of `scaled_ql.train.online`): the server
in its own process (`replay.start_server` on WORKDIR/replay) or the one at
online.replay_address; offline seeding into the "offline" table (keep_offline) or the "online"
one; `num_actors` actor processes (`python -m scaled_ql.actors`, `actor_pool.Actors`), each
with its share of the env steps; batches through `replay.ReplayBatches`; the rate limiter is
the server's (`online.samples_per_insert`). With every learner checkpoint the server writes a
checkpoint of its tables (Reverb's own, in WORKDIR/replay) and the env-step count goes into
the learner's checkpoint; see `scaled_ql.train.online` for resume.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from scaled_ql import replay
from scaled_ql.train.actor_pool import Actors, OnlineError

_POLL_S = 2.0  # ReplayBatches' wait per try; between tries actors and server are checked.
REPLAY_DIR = "replay"


def replay_tables(config) -> "replay.ReplayTables":
  o = config.online
  offline = o.offline_transitions if (o.keep_offline and o.offline_transitions) else 0
  return replay.ReplayTables(max_size=o.replay_size, min_size_to_sample=o.min_replay_size,
                             samples_per_insert=o.samples_per_insert or None,
                             offline_size=offline)


def replay_sizes(address: str) -> dict:
  """{table: items} of the transition tables at `address`."""
  info = replay.server_info(address)
  return {t: int(info[t].current_size) for t in (replay.ONLINE, replay.OFFLINE) if t in info}


class ReverbOnline:
  """The learner's batches from the replay, watching the actors and the server while waiting.

  next() -> Batch; StopIteration once the actors are done and no batch comes (the budget is
  spent); OnlineError when the server is gone or no data comes within timeout_s.
  state_dict() = {"env_steps": ...}, after the server (when it is ours) has written a
  checkpoint of its tables: what a resume needs.
  """

  backend = "reverb"

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    o = config.online
    self.server: Optional[replay.ServerProcess] = None
    if o.replay_address:
      self.address = o.replay_address
    else:
      self.server = replay.start_server(
          tables=replay_tables(config), checkpoint_dir=os.path.join(workdir, REPLAY_DIR))
      self.address = self.server.address
    print(f"replay server at {self.address}" + (
        f" (pid {self.server.pid}, log {self.server.log_path})" if self.server else ""),
          flush=True)
    self.env_steps_done = 0
    self.actors: Optional[Actors] = None
    self.batches: Optional[replay.ReplayBatches] = None
    self._said_counts = False

  def describe(self) -> str:
    return f"Reverb replay at {self.address}; actor logs in {self.actors.dir}"

  def sizes(self) -> dict:
    return replay_sizes(self.address)

  def seed(self, episodes) -> int:
    table = replay.OFFLINE if self.config.online.keep_offline else replay.ONLINE
    return replay.insert_episodes(self.address, table, episodes, 0,
                                  n_step=self.config.loss.n_step, gamma=self.config.loss.gamma)

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

  def env_steps(self) -> int:
    return self.actors.env_steps() if self.actors else self.env_steps_done

  def new_returns(self) -> list[tuple[int, float]]:
    return self.actors.new_returns() if self.actors else []

  def check_server(self) -> None:
    if self.server is not None and not self.server.alive():
      raise OnlineError(
          f"the Reverb server at {self.address} (pid {self.server.pid}) died; stopping. The "
          f"newest checkpoint is kept: rerun the same command to resume with the replay of "
          f"that checkpoint (env steps so far: {self.env_steps():,}). Server "
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

  def _say_counts(self) -> None:
    """E.g. "replay: 1,650 transitions inserted into 'online', 11,904 sampled (7.2 per
    insert; limit 8)": what bounds the learner's steps (best effort: a dead server says nothing)."""
    try:
      limiter = replay.server_info(self.address, 2.0)[replay.ONLINE].rate_limiter_info
    except (replay.ReplayError, KeyError):
      return
    inserted, sampled = limiter.insert_stats.completed, limiter.sample_stats.completed
    spi = self.config.online.samples_per_insert
    print(f"replay: {inserted:,} transitions inserted into {replay.ONLINE!r}, {sampled:,} "
          f"sampled ({sampled / max(inserted, 1):.1f} per insert" +
          (f"; limit {spi:g})" if spi else ")"), flush=True)

  def state_dict(self) -> dict:
    if self.server is not None:
      try:
        replay.checkpoint(self.address)
      except replay.ReplayError:
        self.check_server()
        raise
    return dict(backend=self.backend, env_steps=self.env_steps())

  def load_state_dict(self, state: dict) -> None:
    if state.get("backend", self.backend) != self.backend:
      raise ValueError(f"the newest checkpoint in {self.workdir} was written by the "
                       f"{state['backend']!r} replay backend; this run uses 'reverb'. Set "
                       f"config.online.replay to what the run used, or use another --workdir.")
    self.env_steps_done = int(state.get("env_steps", 0))

  def close(self) -> None:
    """Stops the actors, the sampling stream and our server (idempotent); says how many
    transitions the online table took in and gave out (its rate limiter's counts)."""
    try:
      if self.batches is not None:
        self.batches.close()
        self.batches = None
      if self.actors is not None:
        self.actors.stop()
        if not self._said_counts:
          self._said_counts = True
          self._say_counts()
    finally:
      if self.server is not None:
        self.server.stop()
