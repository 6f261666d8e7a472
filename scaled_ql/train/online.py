"""Online fine-tuning on a game variant: one job, two replay backends.

`train_online` (called by `scaled_ql.train.finetune` for the online presets) runs the training
loop (`loop.train`) with `OnlineHooks`, over a runtime chosen by `config.online.replay`:
- "local" (the default; every stack): emulators and learner in one process, the replay in
  `data.FramePool`s, the samples-per-insert ratio by interleaving env steps and updates
  (`scaled_ql.train.online_local`);
- "reverb" (the pinned stack, which has dm-reverb): a Reverb server, actor processes, the
  server's rate limiter; for many actors and remote servers (`online.replay_address`)
  (`scaled_ql.train.online_reverb`).
The rule is the config's, never the environment's: the same command makes the same kind of
run on every stack; "reverb" where Reverb is missing is refused before anything starts. The
backend is recorded in the run's metadata (config.json, every checkpoint's meta).

Both backends: the same transitions and n-step targets (`data.sampler.n_step_targets`), the
same exploration (`actors.epsilon_greedy` with `actors.epsilon_at`: online.epsilon_start down
to online.epsilon over online.epsilon_decay_steps env steps), offline seeding (fresh runs:
online.offline_transitions of config.data, in their own table with keep_offline and a share
offline_fraction of every batch, else evicted FIFO as online data arrives), parameters
published every publish_every learner steps, every finished episode's return with the env step
at which it ended in WORKDIR/online_returns.jsonl (`online_log.read_online_returns`), progress
in WORKDIR/online.jsonl, and the final env-step count in the Result's last_metrics.

The run ends when the env-step budget is spent and the samples-per-insert ratio allows no more
batches (or at config.num_steps). Steps:
  1. checks: the backend, the variant exists in the ROM, the replay address answers (when one
     is given), the sizes make sense, no replay of the other backend in the workdir; all before
     anything starts;
  2. the runtime (server and actors, or emulators), seeding on a fresh run;
  3. the learner, whose batches come from the runtime.

Resume. With every learner checkpoint the replay is checkpointed too (Reverb: the server's own
checkpoint in WORKDIR/replay; local: WORKDIR/replay_local), and the env-step count goes into
the learner's checkpoint. Rerunning the command after a kill resumes with that replay: the
learner goes on with the transitions it had, not an empty replay, and the actors play the
budget left by the checkpoint's count; the returns of episodes that ended after that count are
dropped from online_returns.jsonl (they are played again). With an external server
(replay_address) its contents are the server's business and nothing is checkpointed.
Nothing waits forever: every wait for the Reverb server or for data ends after
config.online.timeout_s with an error.
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import Optional

import jax
import numpy as np

from scaled_ql import data, envs, errors, games
from scaled_ql.train import loop, online_log, periodic
from scaled_ql.train import metrics as metrics_lib
from scaled_ql.train.actor_pool import MAX_RESTARTS, OnlineError

__all__ = ["BACKENDS", "MAX_RESTARTS", "OnlineError", "OnlineHooks", "train_online"]

BACKENDS = ("local", "reverb")
ONLINE_LOG = "online.jsonl"
# Where each backend keeps its replay checkpoints in the workdir.
REPLAY_DIRS = {"reverb": "replay", "local": "replay_local"}


def reverb_installed() -> bool:
  return importlib.util.find_spec("reverb") is not None


def check_backend(config, workdir: Optional[str] = None) -> str:
  """The replay backend of config.online.replay, or ValueError: unknown, Reverb missing, an
  address without Reverb, or a workdir holding the other backend's replay."""
  o = config.online
  backend = o.replay
  if backend not in BACKENDS:
    raise ValueError(f"config.online.replay={backend!r}: choose one of {BACKENDS} (local: one "
                     f"process, no Reverb; reverb: a Reverb server and actor processes).")
  if backend == "reverb" and not reverb_installed():
    raise ValueError("config.online.replay='reverb' needs dm-reverb, which is not installed here "
                     "(it has no build for Python 3.12+: use the pinned stack, "
                     "`pip install -c constraints/pinned.txt -e '.[online]'` on Python 3.11), "
                     "or set config.online.replay=local.")
  if backend == "local" and o.replay_address:
    raise ValueError(f"config.online.replay_address={o.replay_address!r} is a Reverb server's; "
                     f"set config.online.replay=reverb to use it.")
  if workdir:
    for other, folder in REPLAY_DIRS.items():
      path = os.path.join(workdir, folder)
      if other != backend and os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"{path} holds a replay checkpoint of the {other!r} backend, but "
                         f"config.online.replay={backend!r}: resume with "
                         f"--config.online.replay={other}, or use another --workdir.")
  return backend


def check_online_started(config) -> None:
  """The checks that need JAX started: one host, and the Reverb address (when one is given)
  answering. The others, `check_online_settings`, ran before JAX started (`finetuning.check`,
  which every online run passes through)."""
  if jax.process_count() > 1:
    raise ValueError("online fine-tuning runs on one host (its devices may be many).")
  o = config.online
  if o.replay_address:
    from scaled_ql import replay  # pylint: disable=g-import-not-at-top  (Reverb on use)
    replay.check_address(o.replay_address, min(o.timeout_s, 10.0))


def check_online_settings(config, workdir: Optional[str] = None) -> None:
  """The checks that need neither JAX started nor a server: the backend, the variant, the
  sizes, the seeding data (`finetuning.check` runs them before JAX starts, so bad input fails
  in about a second; `check_online_started` the rest)."""
  o = config.online
  backend = check_backend(config, workdir)
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
  if not 0.0 <= o.epsilon <= o.epsilon_start <= 1.0:
    raise ValueError(f"config.online: need 0 <= epsilon ({o.epsilon}) <= epsilon_start "
                     f"({o.epsilon_start}) <= 1.")
  if o.min_replay_size > o.replay_size:
    raise ValueError(f"config.online.min_replay_size ({o.min_replay_size}) exceeds replay_size "
                     f"({o.replay_size}): sampling would never start.")
  if o.min_replay_size > o.env_steps:
    raise ValueError(f"config.online.min_replay_size ({o.min_replay_size}) exceeds the env-step "
                     f"budget ({o.env_steps}): sampling would never start.")
  if backend == "local" and o.replay_size < 2 * o.num_actors * o.envs_per_actor:
    raise ValueError(f"config.online.replay_size ({o.replay_size}) must hold 2 frames per "
                     f"emulator (num_actors x envs_per_actor).")
  if o.offline_transitions and not config.data.data_dir:
    raise ValueError(f"config.online.offline_transitions={o.offline_transitions} needs "
                     f"config.data.data_dir (the dataset to seed the replay from).")
  if o.offline_transitions:  # The seeding data must be there before anything starts.
    data.find_sources(config.data.data_dir, o.game, runs=list(config.data.runs) or None)
  if o.keep_offline and o.offline_transitions and not 0.0 < o.offline_fraction < 1.0:
    raise ValueError(f"config.online.offline_fraction must lie in (0, 1) with keep_offline, got "
                     f"{o.offline_fraction}.")
  if o.keep_offline and o.offline_transitions:
    data.split_fractions(config.batch_size, {"offline": o.offline_fraction,
                                             "online": 1.0 - o.offline_fraction})


def offline_episodes(config):
  """The episodes that seed the replay: config.online.offline_transitions transitions of
  config.data, from its uniform stream (every prefix is about uniform over the selection, all
  runs and checkpoints), the last episode cut to the budget (a cut, not a terminal: it
  bootstraps)."""
  o = config.online
  episodes = data.uniform_episodes(config.data.data_dir, o.game,
                                   runs=list(config.data.runs) or None, seed=config.seed)
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
      episode["is_last"][-1] = True
      episode["is_terminal"] = np.asarray(episode["is_terminal"]).copy()
      episode["is_terminal"][-1] = False
    total += len(episode["action"]) - 1
    yield episode


def make_runtime(config, workdir: str):
  """The backend's runtime: the loop's batch stream, acting, the replay (see module docs)."""
  if config.online.replay == "reverb":
    from scaled_ql.train.online_reverb import ReverbOnline  # pylint: disable=g-import-not-at-top
    return ReverbOnline(config, workdir)
  from scaled_ql.train.online_local import LocalOnline  # pylint: disable=g-import-not-at-top
  return LocalOnline(config, workdir)


class OnlineHooks:
  """The training loop's hooks for online fine-tuning, over either backend's runtime."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.runtime = None
    self._last_log = 0
    self._step: Optional[int] = None
    self._closed = False

  def check(self, config, names) -> None:
    errors_ = (OnlineError,)
    if config.online.replay == "reverb" and reverb_installed():
      from scaled_ql import replay  # pylint: disable=g-import-not-at-top
      errors_ += (replay.ReplayError,)
    with errors.input_checks(*errors_):
      check_online_started(config)
    self.config = config

  def batches(self, config, names, host, hosts, counts):
    self.runtime = make_runtime(config, self.workdir)
    return self, config.batch_size

  def on_start(self, step: int, state) -> None:
    config, runtime, o = self.config, self.runtime, self.config.online
    self._last_log = step
    runtime.publish(state.params, step)
    sizes = runtime.sizes()
    if any(sizes.values()):
      print("replay restored: " + ", ".join(f"{n:,} {t} transitions" for t, n in sizes.items()),
            flush=True)
    elif o.offline_transitions:
      inserted = runtime.seed(offline_episodes(config))
      table = "offline" if o.keep_offline else "online"
      print(f"seeded the {table!r} table with {inserted:,} transitions of "
            f"{config.data.data_dir}", flush=True)
    online_log.truncate_returns(self.workdir, runtime.env_steps())
    runtime.start()
    variant = {k: "default" if v is None else v for k, v in periodic.game_variant(config).items()}
    print(f"online ({runtime.backend} replay) on {o.game} (mode {variant['mode']}, difficulty "
          f"{variant['difficulty']}), {o.num_actors} actors x {o.envs_per_actor} emulators; env "
          f"steps {runtime.env_steps():,} -> {o.env_steps:,}; {runtime.describe()}", flush=True)

  def log_returns(self, step: Optional[int] = None) -> list:
    returns = self.runtime.new_returns()
    online_log.append_returns(self.workdir, returns)
    if step is not None:
      recent = [r for _, r in online_log.read_online_returns(self.workdir)[-20:]]
      metrics_lib.append_jsonl(os.path.join(self.workdir, ONLINE_LOG), dict(
          step=step, time=time.time(), env_steps=self.runtime.env_steps(),
          episodes=len(returns), mean_return_last_20=float(np.mean(recent)) if recent else None,
          returns=[r for _, r in returns]))
    return returns

  def on_step(self, step: int, state) -> None:
    o = self.config.online
    self._step = step
    if step % o.publish_every == 0:
      self.runtime.publish(state.params, step)
    if step - self._last_log >= self.config.log_every:
      self._last_log = step
      self.log_returns(step)

  # The batch stream of the loop: the runtime's.
  def __iter__(self):
    return self

  def __next__(self):
    return next(self.runtime)

  def state_dict(self) -> dict:
    self.log_returns()  # Every return up to the checkpoint is in the file before it.
    return self.runtime.state_dict()

  def load_state_dict(self, state: dict) -> None:
    self.runtime.load_state_dict(state)

  def close(self) -> None:
    """Stops the runtime (actors, sampling, server; or emulators) (idempotent)."""
    if self.runtime is not None and not self._closed:
      self._closed = True
      try:
        self.log_returns(self._step)  # The last online.jsonl line: the final env-step count.
      finally:
        self.runtime.close()


def train_online(config, workdir: str, *, initial_params=None, meta_extra=None):
  """Online fine-tuning of `config` in `workdir` (see the module docstring). Returns the
  loop's Result, with last_metrics["env_steps"] the run's final env-step count."""
  hooks = OnlineHooks(workdir)
  meta_extra = dict(meta_extra or {}, online_replay=config.online.replay)
  try:
    result = loop.train(config, workdir, what="online fine-tuning", hooks=hooks,
                        initial_params=initial_params,
                        heads_only=config.finetune.freeze_backbone, meta_extra=meta_extra)
  finally:
    hooks.close()  # Also when the loop never started (a server is up from `batches`).
  env_steps = hooks.runtime.env_steps() if hooks.runtime is not None else 0
  returns = [r for _, r in online_log.read_online_returns(workdir)]
  tail = (f"mean return of the last {min(20, len(returns))}: {np.mean(returns[-20:]):.2f}"
          if returns else "no episode ended yet")
  print(f"online: {env_steps:,} env steps, {len(returns)} episodes, {tail}", flush=True)
  return result._replace(last_metrics=dict(result.last_metrics, env_steps=env_steps))
