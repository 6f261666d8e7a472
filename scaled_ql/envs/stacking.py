"""Frame stacking: the last 4 single frames as one observation, zero frames before an episode's
first frame, exactly as the offline sampler stacks the DQN Replay data."""
from __future__ import annotations

import sys

import numpy as np

from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE


# Word types holding a whole stack of uint8 pixels, one byte per frame.
_STACK_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class _Stacks:
  """N frame stacks [N, *frame_shape, stack_size] uint8, oldest frame first.

  With 1, 2, 4 or 8 frames a pixel's stack is one machine word whose bytes are the frames in
  memory order, so pushing a frame into every stack is a shift and an or over [N, 84, 84] words
  (not a copy of 3 of the 4 channels of a channels-last array); `view()` is the uint8 stacks.
  """

  def __init__(self, n: int, frame_shape: tuple[int, int], stack_size: int):
    word = _STACK_WORDS.get(stack_size)
    shape = (n, *frame_shape)
    if word is None:  # Other stack sizes: a plain channels-last array.
      self._words, self._stacks = None, np.zeros((*shape, stack_size), np.uint8)
      return
    self._words = np.zeros(shape, word)
    self._stacks = self._words.view(np.uint8).reshape(*shape, stack_size)
    self._frame = np.zeros(shape, word)  # Scratch: frames widened to words.
    # The newest frame is the word's last byte in memory: its top byte on little-endian machines.
    self._newest = 8 * (stack_size - 1) if sys.byteorder == "little" else 0
    self._older = 8 if sys.byteorder == "little" else -8  # Shifts the others one byte earlier.

  def view(self) -> np.ndarray:
    """The stacks [N, *frame_shape, stack_size] uint8 (a view: copy before handing out)."""
    return self._stacks

  def push(self, frames: np.ndarray) -> None:
    """Appends frames [N, *frame_shape] uint8 to all stacks, dropping the oldest."""
    if self._words is None:
      self._stacks[..., :-1] = self._stacks[..., 1:]
      self._stacks[..., -1] = frames
      return
    if self._older > 0:
      self._words >>= self._older
    else:
      self._words <<= -self._older
    np.copyto(self._frame, frames)
    if self._newest:
      self._frame <<= self._newest
    self._words |= self._frame

  def reset(self, index, frames: np.ndarray) -> None:
    """Stacks `index` (an int, slice or index array) restart: zeros, then `frames` newest."""
    self._stacks[index] = 0
    self._stacks[index, ..., -1] = frames


class FrameStacker:
  """Stacks the last `stack_size` single frames into [84, 84, stack_size], oldest to newest.

  At an episode's start the frames before the first are zeros, exactly as in the DQN Replay
  Dataset (each episode is preceded by stack_size - 1 zero rows). The offline sampler must stack
  the same way, or the acting / evaluated policy sees inputs it was never trained on.
  """

  def __init__(self, stack_size: int = STACK_SIZE, frame_shape: tuple[int, int] = FRAME_SHAPE):
    if stack_size < 1:
      raise ValueError(f"stack_size must be positive, got {stack_size}.")
    self._frame_shape = tuple(frame_shape)
    self._stack_size = int(stack_size)
    self._stacks = _Stacks(1, self._frame_shape, self._stack_size)
    self._started = False

  @property
  def stack_size(self) -> int:
    return self._stack_size

  def _check(self, frame: np.ndarray) -> None:
    if frame.shape != self._frame_shape or frame.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 {self._frame_shape}, got {frame.dtype} "
                       f"{frame.shape}.")

  def reset(self, first_frame: np.ndarray) -> np.ndarray:
    """Starts an episode: zeros, then `first_frame` last. Returns a copy of the stack."""
    self._check(first_frame)
    self._stacks.reset(0, first_frame)
    self._started = True
    return self._stacks.view()[0].copy()

  def push(self, frame: np.ndarray) -> np.ndarray:
    """Appends `frame`, dropping the oldest. Returns a copy of the stack."""
    if not self._started:
      raise RuntimeError("FrameStacker.push() before reset(): an episode must start with reset().")
    self._check(frame)
    self._stacks.push(frame[None])
    return self._stacks.view()[0].copy()
