"""One Atari game in the ALE v5 with the DQN preprocessing, and its variants (ROM modes and
difficulties).

`AtariEnv` drives `ale_py.ALEInterface` directly (no gymnasium wrappers) with the settings of
gymnasium's `ALE/{Game}-v5` and the preprocessing of DQN / Dopamine, the pipeline that made the
DQN Replay Dataset:
- actions are indices into the game's minimal action set (as in the datasets, see
  `scaled_ql.games`), mapped to ALE action ids;
- sticky actions: the ALE repeats the previous action with probability 0.25 on every frame;
- frame skip 4: each agent step repeats the action 4 emulator frames and sums their rewards;
- the observation is the pixel-wise max over the last two emulator frames of the step, in ALE's
  grayscale palette, resized 210x160 -> 84x84 by area averaging (what `cv2.INTER_AREA` does),
  uint8;
- episodes are truncated after 108,000 emulator frames (27,000 agent steps); no terminal on life
  loss, no no-op starts.
Seeds are turned into ALE seeds the way gymnasium's `AtariEnv.seed_game` does, so
`AtariEnv("pong", s)` runs the same emulator as `ALE/Pong-v5` reset with `seed=s`.

Observations are single frames; `FrameStacker` stacks 4 of them with zero frames before an
episode's first frame, exactly as the offline sampler stacks the DQN Replay data.
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import ale_py
import numpy as np
from ale_py import roms

from scaled_ql.envs.resize import resize_area
from scaled_ql.games import Game, get_game

DEFAULT_STICKY_ACTION_PROB = 0.25
DEFAULT_FRAME_SKIP = 4
DEFAULT_MAX_EPISODE_FRAMES = 108_000

GameLike = Union[str, Game]


def _as_game(game: GameLike) -> Game:
  return game if isinstance(game, Game) else get_game(game)


def _ale_seed(seed: int) -> int:
  """The ALE's int32 seed for `seed`, derived as gymnasium's `AtariEnv.seed_game` derives it."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  _, ale_seed = np.random.SeedSequence(int(seed)).generate_state(n_words=2)
  return int(np.array(ale_seed, np.uint32).view(np.int32))


def _new_ale() -> ale_py.ALEInterface:
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  return ale


@functools.lru_cache(maxsize=None)
def available_variants(game: GameLike) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(modes, difficulties) that `game`'s ROM offers, read from the ROM itself."""
  game = _as_game(game)
  ale = _new_ale()
  ale.loadROM(roms.get_rom_path(game.name))
  return tuple(ale.getAvailableModes()), tuple(ale.getAvailableDifficulties())


class AtariEnv:
  """One ALE v5 game with the DQN preprocessing; observations are single [84, 84] uint8 frames.

  `reset()` starts an episode and returns its first frame; `step(action)` takes a minimal-set
  action index and returns (frame, reward, terminated, truncated). The observation of a step is
  the max over its last two emulator frames; a step that the episode's end cuts short (no frames
  are played past a game over or the frame limit) shows its final frame alone. `mode` /
  `difficulty` select a game variant (None: the ROM's default); `available_variants(game)` lists
  them. `reset_screen` / `step_screen` are the same steps writing the raw screen (before the
  resize) into a caller's buffer, so that `VectorAtariEnv` resizes all its envs' screens at once.
  """

  def __init__(self, game: GameLike, seed: int, *,
               sticky_action_prob: float = DEFAULT_STICKY_ACTION_PROB,
               frame_skip: int = DEFAULT_FRAME_SKIP,
               max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
               mode: Optional[int] = None, difficulty: Optional[int] = None):
    self._game = _as_game(game)
    if not 0.0 <= sticky_action_prob <= 1.0:
      raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}.")
    if int(frame_skip) != frame_skip or frame_skip < 1:
      raise ValueError(f"frame_skip must be a positive integer, got {frame_skip!r}.")
    if int(max_episode_frames) != max_episode_frames or max_episode_frames < 1:
      raise ValueError(f"max_episode_frames must be a positive integer, got "
                       f"{max_episode_frames!r}.")
    self._frame_skip = int(frame_skip)
    self._max_episode_frames = int(max_episode_frames)
    self._seed = seed

    ale = self._ale = _new_ale()
    ale.setInt("random_seed", _ale_seed(seed))
    ale.setFloat("repeat_action_probability", float(sticky_action_prob))
    ale.loadROM(roms.get_rom_path(self._game.name))
    if mode is not None:
      modes = tuple(ale.getAvailableModes())
      if mode not in modes:
        raise ValueError(f"{self._game.ale_name} has no mode {mode!r}; its ROM offers modes "
                         f"{list(modes)}.")
      ale.setMode(int(mode))
    if difficulty is not None:
      difficulties = tuple(ale.getAvailableDifficulties())
      if difficulty not in difficulties:
        raise ValueError(f"{self._game.ale_name} has no difficulty {difficulty!r}; its ROM offers "
                         f"difficulties {list(difficulties)}.")
      ale.setDifficulty(int(difficulty))
    self._mode, self._difficulty = mode, difficulty

    self._actions = tuple(ale_py.Action(a) for a in self._game.minimal_actions)
    height, width = ale.getScreenDims()
    self._previous = np.zeros((height, width), np.uint8)  # A step's next-to-last frame.
    self._last = np.zeros((height, width), np.uint8)  # A step's last frame.
    self._screen = np.zeros((height, width), np.uint8)  # A step's observation, before resizing.
    self._episode_over = True

  @property
  def game(self) -> Game:
    return self._game

  @property
  def num_actions(self) -> int:
    return self._game.num_actions

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def mode(self) -> Optional[int]:
    return self._mode

  @property
  def difficulty(self) -> Optional[int]:
    return self._difficulty

  @property
  def lives(self) -> int:
    return self._ale.lives()

  @property
  def episode_frame_number(self) -> int:
    """Emulator frames since the episode's start (what truncation counts)."""
    return self._ale.getEpisodeFrameNumber()

  @property
  def screen_shape(self) -> tuple[int, int]:
    """The emulator's screen, (height, width): what `resize_area` shrinks."""
    return self._screen.shape

  def reset(self) -> np.ndarray:
    """Starts a new episode; returns its first frame, [84, 84] uint8."""
    self.reset_screen(self._screen)
    return resize_area(self._screen)

  def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
    """Repeats minimal-set action `action` for frame_skip frames.

    Returns (frame [84, 84] uint8, summed reward, terminated, truncated).
    """
    if self._episode_over:
      raise RuntimeError(f"{self._game.ale_name}: step() called with no episode running; call "
                         "reset() first (also after an episode ends).")
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
      raise ValueError(f"{self._game.ale_name}: action must be an integer index into its "
                       f"{self.num_actions} minimal actions, got {action!r}.")
    if not 0 <= action < self.num_actions:
      raise ValueError(f"{self._game.ale_name} has {self.num_actions} actions (indices 0.."
                       f"{self.num_actions - 1}), got action {action}.")
    reward, terminated, truncated = self.step_screen(int(action), self._screen)
    return resize_area(self._screen), reward, terminated, truncated

  def reset_screen(self, out: np.ndarray) -> None:
    """`reset()` that writes the first raw screen ([H, W] uint8, before resizing) into `out`.

    For batched preprocessing (`VectorAtariEnv` resizes all its envs' screens in one call).
    """
    self._ale.reset_game()
    self._episode_over = False
    self._ale.getScreenGrayscale(out)

  def step_screen(self, action: int, out: np.ndarray) -> tuple[float, bool, bool]:
    """`step()` that writes the observation's raw screen into `out` instead of returning the
    resized frame: the max of the step's last two emulator frames, or its last frame alone when
    the episode's end cuts the step short. `action` (a Python int) is not checked here.

    Returns (summed reward, terminated, truncated).
    """
    if self._episode_over:
      raise RuntimeError(f"{self._game.ale_name}: step() called with no episode running; call "
                         "reset() first (also after an episode ends).")
    ale, ale_action, skip = self._ale, self._actions[action], self._frame_skip
    reward, previous = 0, False
    for t in range(skip):
      reward += ale.act(ale_action)
      terminated = ale.game_over(with_truncation=False)
      truncated = not terminated and ale.getEpisodeFrameNumber() >= self._max_episode_frames
      if terminated or truncated or t == skip - 1:
        break
      if t == skip - 2:  # The next-to-last frame of a full step.
        ale.getScreenGrayscale(self._previous)
        previous = True
    self._episode_over = terminated or truncated
    if previous:  # The step ran to its last frame: max-pool the last two.
      ale.getScreenGrayscale(self._last)
      np.maximum(self._previous, self._last, out=out)
    else:
      ale.getScreenGrayscale(out)
    return float(reward), terminated, truncated


def make_variant_env(game: GameLike, mode: Optional[int], difficulty: Optional[int], seed: int,
                     **kwargs) -> AtariEnv:
  """An `AtariEnv` of one game variant (a ROM mode and difficulty); kwargs go to AtariEnv."""
  return AtariEnv(game, seed, mode=mode, difficulty=difficulty, **kwargs)
