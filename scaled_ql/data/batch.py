"""The transition batch: what the sampler produces and the update step consumes."""
from typing import Any, NamedTuple


class Batch(NamedTuple):
  """A batch of n-step transitions, blocked by game (`counts[g]` consecutive rows of game g)."""
  observation: Any  # [B, 84, 84, 4] uint8: 4 stacked frames, zero-padded at episode starts.
  action: Any  # [B] int32, index into the game's minimal action set.
  reward: Any  # [B] float32, n-step clipped discounted return.
  discount: Any  # [B] float32, gamma^k * (1 - terminated).
  next_observation: Any  # [B, 84, 84, 4] uint8, the stack k steps later.
  game_id: Any  # [B] int32, index into config.games.
