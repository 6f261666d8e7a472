"""Datasets made from the emulator: a behaviour policy plays, episodes are written as RLDS.

Each game-run is played by one `AtariEnv` (sticky actions, the DQN preprocessing) for
`num_checkpoints` chunks of `steps_per_checkpoint` environment steps. Chunk c is labelled
checkpoint_id c, like the checkpoints of the DQN Replay Dataset, so quality subsets are selected
the same way; with an epsilon-greedy policy epsilon falls from chunk to chunk, so later
checkpoints are better data, as in a real training run. An episode still running when its chunk's
step budget is spent is closed as truncated (is_terminal False), and the next chunk starts a new
episode. The policy sees 4 stacked frames from `FrameStacker` (zeros before the first frame),
exactly what the offline sampler and the evaluator feed the network.

Determinism: the episodes of (game, run) depend only on (seed, game, run) and the policy, not on
which other games or runs are generated alongside.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Optional, Union

import numpy as np

from scaled_ql.data import rlds
from scaled_ql.envs import (DEFAULT_MAX_EPISODE_FRAMES, DEFAULT_STICKY_ACTION_PROB, AtariEnv,
                            FrameStacker)
from scaled_ql.games import Game, get_game

# policy(stacked observations [N, 84, 84, 4] uint8, game_index) -> actions [N] (minimal-set
# indices). game_index is the game's head in the policy's network (see `generate_run`).
PolicyFn = Callable[[np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class BehaviourPolicy:
  """Who plays: uniform random, epsilon-greedy over `q_policy`, or a mixture of both.

  Attributes:
    q_policy: the greedy policy (e.g. argmax of a saved Q-network over legal actions); None
      plays uniformly at random, whatever the other fields say.
    epsilon_start: epsilon at the first checkpoint.
    epsilon_end: epsilon at the last checkpoint; in between it falls linearly, so later
      checkpoints hold better data.
    random_episode_prob: the mixture: each episode is played entirely at random with this
      probability, else epsilon-greedily.
  """
  q_policy: Optional[PolicyFn] = None
  epsilon_start: float = 1.0
  epsilon_end: float = 1.0
  random_episode_prob: float = 0.0

  def __post_init__(self):
    for name in ("epsilon_start", "epsilon_end", "random_episode_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    if self.q_policy is not None and not callable(self.q_policy):
      raise TypeError(f"q_policy must be callable, got {type(self.q_policy).__name__}.")

  @property
  def is_random(self) -> bool:
    return self.q_policy is None

  def epsilon(self, checkpoint: int, num_checkpoints: int) -> float:
    """Epsilon for checkpoint `checkpoint` of `num_checkpoints` (1.0 for a random policy)."""
    if self.is_random:
      return 1.0
    frac = checkpoint / (num_checkpoints - 1) if num_checkpoints > 1 else 1.0
    return self.epsilon_start + (self.epsilon_end - self.epsilon_start) * frac


def random_policy() -> BehaviourPolicy:
  return BehaviourPolicy()


def epsilon_greedy(q_policy: PolicyFn, epsilon_start: float = 1.0, epsilon_end: float = 0.01,
                   random_episode_prob: float = 0.0) -> BehaviourPolicy:
  """Epsilon-greedy over `q_policy`, epsilon falling from start to end over the checkpoints."""
  return BehaviourPolicy(q_policy, epsilon_start, epsilon_end, random_episode_prob)


def _seed_sequence(seed: int, game: Game, run: int) -> np.random.SeedSequence:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  # crc32 of the name, not the game's position in some list: a game-run's data must not change
  # when other games are generated alongside it.
  return np.random.SeedSequence([int(seed), zlib.crc32(game.name.encode()), int(run)])


def generate_run(data_dir: str, game: Union[str, Game], run: int, *, num_checkpoints: int,
                 steps_per_checkpoint: int, policy: BehaviourPolicy = BehaviourPolicy(),
                 seed: int = 0, game_index: int = 0,
                 dataset_name: str = rlds.DEFAULT_DATASET_NAME, overwrite: bool = False,
                 sticky_action_prob: float = DEFAULT_STICKY_ACTION_PROB,
                 max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
                 progress: Optional[Callable[[int], None]] = None) -> list[rlds.SplitSummary]:
  """Plays and writes one game-run; returns what each checkpoint split holds.

  The dataset lands in `{data_dir}/{dataset_name}/{AleName}_run_{run}/` atomically (see
  `rlds.EpisodeWriter`); an existing one is refused before any play unless `overwrite`.
  `game_index` is passed to `policy.q_policy` (the game's head in a multi-game network).
  `progress(n)` is called with the number of environment steps just taken.
  """
  game = game if isinstance(game, Game) else get_game(game)
  for name, value in (("num_checkpoints", num_checkpoints),
                      ("steps_per_checkpoint", steps_per_checkpoint)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  seeds = _seed_sequence(seed, game, run)
  env_seed = int(seeds.generate_state(1)[0]) >> 1
  rng = np.random.default_rng(seeds.spawn(1)[0])
  with rlds.EpisodeWriter(data_dir, game, run, dataset_name=dataset_name,
                          overwrite=overwrite) as writer:
    env = AtariEnv(game, env_seed, sticky_action_prob=sticky_action_prob,
                   max_episode_frames=max_episode_frames)
    stacker = FrameStacker()
    for checkpoint in range(num_checkpoints):
      epsilon = policy.epsilon(checkpoint, num_checkpoints)
      budget, episode_id = steps_per_checkpoint, 0
      while budget > 0:
        played = _play_episode(env, stacker, policy, epsilon, rng, budget, game_index, progress)
        frames, actions, rewards, terminated = played
        budget -= len(actions)
        writer.write(rlds.make_episode(
            frames, actions + [0], rewards + [0.0], terminated=terminated,
            checkpoint_id=checkpoint, episode_id=episode_id))
        episode_id += 1
    return writer.summary()


def _play_episode(env: AtariEnv, stacker: FrameStacker, policy: BehaviourPolicy, epsilon: float,
                  rng: np.random.Generator, budget: int, game_index: int, progress):
  """One episode of at most `budget` steps: (frames [T+1], actions, rewards, terminated)."""
  num_actions = env.num_actions
  frame = env.reset()
  stack = stacker.reset(frame)
  frames, actions, rewards = [frame], [], []
  play_random = policy.is_random or rng.random() < policy.random_episode_prob
  terminated = False
  while len(actions) < budget:
    if play_random or rng.random() < epsilon:
      action = int(rng.integers(num_actions))
    else:
      action = _greedy_action(policy.q_policy, stack, game_index, env.game)
    frame, reward, terminated, truncated = env.step(action)
    frames.append(frame)
    actions.append(action)
    rewards.append(reward)
    if progress is not None:
      progress(1)
    if terminated or truncated:
      break
    stack = stacker.push(frame)
  return np.stack(frames), actions, rewards, terminated


def _greedy_action(q_policy: PolicyFn, stack: np.ndarray, game_index: int, game: Game) -> int:
  actions = np.asarray(q_policy(stack[None], game_index))
  if actions.shape != (1,) or not np.issubdtype(actions.dtype, np.integer):
    raise ValueError(f"q_policy must return one integer action per observation; for a batch "
                     f"of 1 it returned {actions.dtype} {actions.shape}.")
  action = int(actions[0])
  if not 0 <= action < game.num_actions:
    raise ValueError(f"q_policy returned action {action} for {game.ale_name}, which has "
                     f"{game.num_actions} actions.")
  return action
