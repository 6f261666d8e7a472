"""The local backend of online fine-tuning: emulators and learner in one process, no Reverb.

`LocalOnline` is the learner's batch stream (`loop.BatchStream`) of `config.online.replay =
"local"`. It owns num_actors x envs_per_actor emulators (`envs.VectorAtariEnv`, the variant's
mode and difficulty, the evaluation protocol's sticky actions and frame skip: as many
emulators as the Reverb backend's actors have together) and a `replay.LocalReplay` (FramePools:
the offline sampler's n-step targets). Acting is `actors.epsilon_greedy` with the schedule
`actors.epsilon_at` over the run's env steps, with the parameters last published
(`publish`, every online.publish_every learner steps, as the Reverb actors poll them).

The samples-per-insert ratio is Reverb's rate limiter, enforced by interleaving: before each
batch, the emulators step (all together, one env step each) until the limiter allows the
batch: online.min_replay_size online transitions, and then sampled <= samples_per_insert x
(inserted - min_replay_size) + buffer, with Reverb's default buffer (`replay.ReplayTables`);
so the learner neither outruns nor starves the actors. Without a ratio (samples_per_insert =
0) the emulators take one step per batch. Once the env-step budget is spent, batches come
while the limiter allows, then the stream ends (as the Reverb run ends).

Resume. `state_dict()` (with every checkpoint) writes the whole replay to WORKDIR/replay_local/
(`LocalReplay.save`, the newest two kept, so the one the newest finished checkpoint names
exists); `load_state_dict` reads it back with the env-step count and the limiter's counts. The
emulators start new episodes after a resume (an emulator cannot be saved); the episodes that
were running are kept up to their transitions final at the checkpoint.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

import jax
import numpy as np

from scaled_ql import actors, envs, games, networks
from scaled_ql.data.batch import split_fractions
from scaled_ql.evaluation import policy as policy_lib
from scaled_ql.replay.local import LocalReplay
from scaled_ql.train import periodic

REPLAY_DIR = "replay_local"


def rate_buffer(spi: float, min_size: int) -> float:
  """Reverb's default error buffer of the samples-per-insert limiter (replay.ReplayTables)."""
  return max(2.0 * spi, 2.0, 0.01 * spi * min_size)


def offline_rows(config) -> int:
  """Rows of every batch from the kept offline data (0 without one)."""
  o = config.online
  if not (o.keep_offline and o.offline_transitions):
    return 0
  return split_fractions(config.batch_size, {"offline": o.offline_fraction,
                                             "online": 1.0 - o.offline_fraction})["offline"]


class LocalOnline:
  """The local backend's batch stream (see the module docstring)."""

  backend = "local"

  def __init__(self, config, workdir: str):
    o = config.online
    self.config, self.workdir = config, workdir
    self.dir = os.path.join(workdir, REPLAY_DIR)
    self.game = games.get_game(o.game)
    self.num_envs = o.num_actors * o.envs_per_actor
    self.rows_offline = offline_rows(config)
    self.rows_online = config.batch_size - self.rows_offline
    self.replay = LocalReplay(self.game, self.num_envs, o.replay_size,
                              batch_size=config.batch_size, n_step=config.loss.n_step,
                              gamma=config.loss.gamma, offline_size=o.offline_transitions,
                              keep_offline=o.keep_offline, offline_rows=self.rows_offline)
    self.model = networks.build_q_network(config.model, 1)
    self.env_steps_done, self.sampled, self.batches = 0, 0, 0
    self._returns: list[tuple[int, float]] = []
    self.vec: Optional[envs.VectorAtariEnv] = None
    self.greedy = None
    self.spi = float(o.samples_per_insert or 0.0)
    self.buffer = rate_buffer(self.spi, o.min_replay_size) if self.spi else 0.0

  # -- The runtime's interface (shared with the Reverb backend). ------------------------------
  def describe(self) -> str:
    return (f"local replay: {self.num_envs} emulators beside the learner in this process; "
            f"replay checkpoints in {self.dir}")

  def sizes(self) -> dict:
    return self.replay.sizes()

  def seed(self, episodes) -> int:
    """Inserts offline episodes (already cut to the budget); returns their transitions."""
    total = 0
    for episode in episodes:
      total += self.replay.add_offline(episode)
    if not self.config.online.keep_offline:
      self.replay.inserted += total  # As into Reverb's online table: the limiter counts them.
    return total

  def publish(self, params, step: int) -> None:
    """The learner's parameters to the acting loop (a host copy: the train state is donated)."""
    del step
    c = self.config
    self.greedy = policy_lib.make_greedy_policy(
        self.model, jax.device_get(params), loss_kind=c.loss.kind, head_games=(self.game.name,),
        games=(self.game.name,), v_min=c.loss.v_min, v_max=c.loss.v_max)

  def start(self) -> None:
    """The emulators, seeded by (seed, env steps so far): a resume plays new episodes."""
    n = self.num_envs
    variant = periodic.game_variant(self.config)
    states = np.random.SeedSequence([self.config.seed, self.env_steps_done]).generate_state(n + 1)
    self.rng = np.random.default_rng(states[-1])
    specs = [envs.EnvSpec(self.game.name, int(s) % 2**31, variant["mode"], variant["difficulty"])
             for s in states[:n]]
    self.vec = envs.VectorAtariEnv(specs)
    self.observation = self.vec.reset()
    for i in range(n):
      self.replay.begin(i, self.observation[i, ..., -1])

  def env_steps(self) -> int:
    return self.env_steps_done

  def new_returns(self) -> list[tuple[int, float]]:
    out, self._returns = self._returns, []
    return out

  # -- Acting and the rate limiter. -------------------------------------------------------------
  def _act(self) -> None:
    """One env step of every emulator into the replay."""
    o = self.config.online
    actions = actors.epsilon_greedy(self.greedy, self.observation,
                                    actors.epsilon_at(self.env_steps_done, o), self.rng,
                                    self.game.num_actions)
    observation, reward, terminated, _, info = self.vec.step(actions)
    self.env_steps_done += self.num_envs
    done = info["episode_done"]
    for i in range(self.num_envs):
      self.replay.append(i, int(actions[i]), float(reward[i]),
                         info["next_observation"][i, ..., -1], done=bool(done[i]),
                         terminal=bool(terminated[i]))
      if done[i]:
        self._returns.append((self.env_steps_done, float(info["episode_return"][i])))
        self.replay.begin(i, observation[i, ..., -1])
    self.observation = observation

  def _can_sample(self) -> bool:
    o = self.config.online
    size = self.replay.online_transitions + (
        0 if o.keep_offline else self.replay.offline_transitions)
    if size < o.min_replay_size or not self.replay.ready(0):
      return False
    if not self.spi:
      return True
    return (self.replay.inserted * self.spi - self.sampled - self.rows_online
            >= self.spi * o.min_replay_size - self.buffer)

  def __iter__(self):
    return self

  def __next__(self):
    budget = self.config.online.env_steps
    if not self.spi and self.env_steps_done < budget:
      self._act()
    while not self._can_sample():
      if self.env_steps_done >= budget:
        raise StopIteration
      self._act()
    batch = self.replay.sample(np.random.default_rng([self.config.seed, 11, self.batches]))
    self.sampled += self.rows_online
    self.batches += 1
    return batch

  # -- State. ---------------------------------------------------------------------------------
  def state_dict(self) -> dict:
    """Writes the replay (WORKDIR/replay_local/replay_<batches>.npz); the state names it."""
    os.makedirs(self.dir, exist_ok=True)
    name = f"replay_{self.batches:09d}.npz"
    self.replay.save(os.path.join(self.dir, name))
    for old in sorted(glob.glob(os.path.join(self.dir, "replay_*.npz")))[:-2]:
      os.remove(old)
    return dict(backend=self.backend, env_steps=self.env_steps_done, sampled=self.sampled,
                batches=self.batches, replay_file=name, sizes=self.replay.sizes())

  def load_state_dict(self, state: dict) -> None:
    if state.get("backend") != self.backend:
      raise ValueError(f"the newest checkpoint in {self.workdir} was written by the "
                       f"{state.get('backend', 'reverb')!r} replay backend; this run uses "
                       f"{self.backend!r}. Set config.online.replay to what the run used, or "
                       f"use another --workdir.")
    path = os.path.join(self.dir, state["replay_file"])
    if not os.path.exists(path):
      raise FileNotFoundError(f"the checkpoint names the replay {path}, which is missing: the "
                              f"run cannot resume with its replay. Use another --workdir.")
    self.replay.load(path)
    for other in glob.glob(os.path.join(self.dir, "replay_*.npz")):
      if os.path.basename(other) != state["replay_file"]:
        os.remove(other)  # Written after that checkpoint by the run that was killed.
    self.env_steps_done = int(state["env_steps"])
    self.sampled, self.batches = int(state["sampled"]), int(state["batches"])

  def close(self) -> None:
    if self.vec is not None:
      self.vec.close()
      self.vec = None
