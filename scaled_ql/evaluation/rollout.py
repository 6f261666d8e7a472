"""Rollouts: many games played at once through one `VectorAtariEnv`, N episodes per game.

Protocol (Machado et al. 2018, as in the paper): sticky actions 0.25, frame skip 4, episodes
capped at 108,000 emulator frames, epsilon-greedy with epsilon = 0.001, the 4-frame stacks of
`envs.FrameStacker` (zero frames before an episode's first), which is how the offline sampler
stacks the data.

Each game gets `envs_per_game` envs and each env a fixed quota of the game's episodes (N split as
evenly as possible), so long episodes count as much as short ones: taking the first N episodes
to finish would favour short, often bad, episodes. An env that has met its quota keeps stepping
with the batch (one batch, one compilation) but its further episodes are not recorded.

Seeds: env k of game g gets its emulator seed and its exploration generator from
SeedSequence([seed, crc32(g), k]), recorded with every episode (with the episode's index within
its env). An env's episodes therefore depend only on (seed, game, k, the policy), not on which
other games share the batch, and the same seed gives identical episodes.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Callable, Optional, Sequence

import numpy as np

from scaled_ql import envs
from scaled_ql import games as games_lib
from scaled_ql.evaluation.policy import GreedyFn

DEFAULT_EPSILON = 0.001  # [SQL] / Machado et al. 2018 evaluation epsilon.
FRAMES_PER_STEP = envs.DEFAULT_FRAME_SKIP


@dataclasses.dataclass(frozen=True)
class Episode:
  """One finished evaluation episode."""
  game: str
  env: int  # The env's index among its game's envs.
  env_seed: int  # The env's emulator seed.
  index: int  # The episode's index within its env (0 = the first after reset).
  episode_return: float  # Undiscounted, unclipped game score.
  length: int  # Agent steps (4 emulator frames each).
  truncated: bool  # Ended by the frame cap, not by a game over.


@dataclasses.dataclass(frozen=True)
class Settings:
  """How episodes were played; stored with every result."""
  policy: str
  epsilon: float
  seed: int
  episodes_per_game: int
  envs_per_game: int
  sticky_action_prob: float = envs.DEFAULT_STICKY_ACTION_PROB
  frame_skip: int = envs.DEFAULT_FRAME_SKIP
  max_episode_frames: int = envs.DEFAULT_MAX_EPISODE_FRAMES
  # Set when a shorter cap than the protocol's 108,000 frames was asked for (a CPU budget):
  # episodes that reach it are cut short and their scores are not the protocol's.
  max_steps_per_episode: Optional[int] = None
  # A game variant (ALE mode / difficulty) instead of the ROM's defaults; None = default.
  mode: Optional[int] = None
  difficulty: Optional[int] = None

  @property
  def cut_short(self) -> bool:
    return self.max_episode_frames < envs.DEFAULT_MAX_EPISODE_FRAMES


@dataclasses.dataclass
class Rollouts:
  """The episodes of one evaluation, in game order, then env, then episode index."""
  games: tuple[str, ...]
  settings: Settings
  episodes: list[Episode]
  agent_steps: int  # Env steps taken, recorded or not.
  seconds: float  # Wall time of the stepping loop (after the envs are built and reset).
  policy_seconds: float  # Of which computing actions.
  cpu_seconds: float  # CPU time of this process (all threads) in the loop.
  setup_seconds: float  # Wall time building and resetting the envs.
  # Per game, how often the policy chose each action slot in the recorded episodes' steps
  # (before epsilon exploration); empty for the random policy, which has no choice of its own.
  action_counts: dict = dataclasses.field(default_factory=dict)

  def of(self, game: str) -> list[Episode]:
    return [e for e in self.episodes if e.game == game]


def env_seeds(seed: int, game: str, k: int) -> tuple[int, np.random.Generator]:
  """(emulator seed, exploration generator) of env k of `game`."""
  emulator, exploration = np.random.SeedSequence(
      [int(seed), zlib.crc32(game.encode()), int(k)]).spawn(2)
  return int(emulator.generate_state(1)[0]), np.random.default_rng(exploration)


def check_budget(episodes_per_game: int, envs_per_game: int, epsilon: float,
                 max_steps_per_episode: Optional[int]) -> None:
  """Raises a ValueError naming the argument for an empty or impossible budget."""
  for name, value in (("episodes per game", episodes_per_game),
                      ("envs per game", envs_per_game)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"the number of {name} must be a positive integer, got {value!r}.")
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}.")
  if max_steps_per_episode is not None and (
      not isinstance(max_steps_per_episode, (int, np.integer)) or max_steps_per_episode < 1):
    raise ValueError(f"max_steps_per_episode must be a positive integer or None, got "
                     f"{max_steps_per_episode!r}.")


def run_episodes(greedy: Optional[GreedyFn], games: Sequence[str], episodes_per_game: int, *,
                 epsilon: float = DEFAULT_EPSILON, envs_per_game: int = 4, seed: int = 0,
                 max_steps_per_episode: Optional[int] = None, num_workers: int = 0,
                 policy_name: str = "greedy",
                 on_episodes: Optional[Callable[[int], None]] = None,
                 mode: Optional[int] = None, difficulty: Optional[int] = None) -> Rollouts:
  """Plays `episodes_per_game` episodes of every game; see the module docstring.

  Args:
    greedy: the greedy policy (`policy.make_greedy_policy`), called with game indices into
      `games`; None plays uniformly at random over each game's legal actions (the random
      baseline: the same envs, seeds and protocol).
    games: the games, each played by `envs_per_game` envs (at most episodes_per_game).
    episodes_per_game: N, the episodes recorded per game.
    epsilon: the probability of a uniformly random legal action at each step.
    envs_per_game: envs per game stepped together (a batch of len(games) x this).
    seed: the evaluation seed (see the module docstring).
    max_steps_per_episode: a shorter episode cap (agent steps) for CPU budgets; None = the
      protocol's 108,000 frames (27,000 steps). Cut episodes are marked truncated.
    num_workers: env worker processes (0 = step in this process).
    policy_name: recorded in the settings ("greedy", "random", ...).
    on_episodes: called with the number of newly recorded episodes (progress bars).
    mode, difficulty: play this ALE game variant (every game must have it; see
      `envs.available_variants`); None = the ROM's default.
  """
  games = tuple(games_lib.get_game(g).name for g in games)
  if len(set(games)) != len(games) or not games:
    raise ValueError(f"the game list must be non-empty without repeats, got {list(games)}.")
  check_budget(episodes_per_game, envs_per_game, epsilon, max_steps_per_episode)
  if greedy is None:
    epsilon = 1.0
  k = min(int(envs_per_game), int(episodes_per_game))
  max_frames = envs.DEFAULT_MAX_EPISODE_FRAMES
  if max_steps_per_episode is not None:
    max_frames = min(max_frames, int(max_steps_per_episode) * FRAMES_PER_STEP)
  settings = Settings(policy=policy_name, epsilon=float(epsilon), seed=int(seed),
                      episodes_per_game=int(episodes_per_game), envs_per_game=k,
                      max_episode_frames=max_frames,
                      max_steps_per_episode=(None if max_steps_per_episode is None
                                             else int(max_steps_per_episode)),
                      mode=mode, difficulty=difficulty)

  specs, rngs, game_index, quota, env_of_game = [], [], [], [], []
  for g, game in enumerate(games):
    for j in range(k):
      emulator_seed, rng = env_seeds(seed, game, j)
      specs.append(envs.EnvSpec(game, emulator_seed, mode, difficulty))
      rngs.append(rng)
      game_index.append(g)
      env_of_game.append(j)
      quota.append(episodes_per_game // k + int(j < episodes_per_game % k))
  game_index = np.array(game_index, np.int32)
  quota = np.array(quota)
  done = np.zeros(len(specs), np.int64)
  num_actions = np.array([games_lib.get_game(games[g]).num_actions for g in game_index])
  episodes: list[Episode] = []
  counts = np.zeros((len(games), games_lib.MAX_ACTIONS), np.int64)
  steps, policy_seconds = 0, 0.0
  setup = time.perf_counter()
  with envs.VectorAtariEnv(specs, max_episode_frames=max_frames,
                           num_workers=num_workers) as vec:
    observation = vec.reset()
    start, cpu = time.perf_counter(), time.process_time()
    setup = start - setup
    while np.any(done < quota):
      t = time.perf_counter()
      actions = (greedy(observation, game_index) if epsilon < 1.0
                 else np.zeros(len(specs), np.int64))
      actions = np.asarray(actions, np.int64)
      if epsilon < 1.0:  # The policy's own choices, in the steps of episodes that are recorded.
        live = done < quota
        np.add.at(counts, (game_index[live], actions[live]), 1)
      for i, rng in enumerate(rngs):  # Per env, so its stream is its own (module docstring).
        if epsilon > 0.0 and (epsilon >= 1.0 or rng.random() < epsilon):
          actions[i] = rng.integers(num_actions[i])
      policy_seconds += time.perf_counter() - t
      observation, _, _, truncated, info = vec.step(actions)
      steps += len(specs)
      recorded = 0
      for i in np.flatnonzero(info["episode_done"]):
        if done[i] < quota[i]:
          episodes.append(Episode(
              game=games[game_index[i]], env=env_of_game[i], env_seed=specs[i].seed,
              index=int(done[i]), episode_return=float(info["episode_return"][i]),
              length=int(info["episode_length"][i]), truncated=bool(truncated[i])))
          recorded += 1
        done[i] += 1
      if recorded and on_episodes is not None:
        on_episodes(recorded)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  order = {g: i for i, g in enumerate(games)}
  episodes.sort(key=lambda e: (order[e.game], e.env, e.index))
  action_counts = ({} if epsilon >= 1.0 else
                   {g: counts[i, :games_lib.get_game(g).num_actions].tolist()
                    for i, g in enumerate(games)})
  return Rollouts(games, settings, episodes, steps, seconds, policy_seconds, cpu, setup,
                  action_counts)
