"""The transition batch: what the sampler produces and the update step consumes, and how a batch
is split into per-game counts (its blocked layout)."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union


class Batch(NamedTuple):
  """A batch of n-step transitions, blocked by game (`counts[g]` consecutive rows of game g)."""
  observation: Any  # [B, 84, 84, 4] uint8: 4 stacked frames, zero-padded at episode starts.
  action: Any  # [B] int32, index into the game's minimal action set.
  reward: Any  # [B] float32, n-step clipped discounted return.
  discount: Any  # [B] float32, gamma^k * (1 - terminated).
  next_observation: Any  # [B, 84, 84, 4] uint8, the stack k steps later.
  game_id: Any  # [B] int32, index into config.games.


UNEVEN_RULES = ("error", "largest_remainder")


def split_batch(batch_size: int, weights: Optional[Sequence[float]],
                games: Union[int, Sequence[str]], *, uneven: str = "error") -> tuple[int, ...]:
  """Per-game sample counts of a batch: batch_size x weight / sum(weights), whole numbers >= 1.

  The counts are fixed for a whole run (the blocked heads need the same layout in every batch).
  `weights`: one positive number per game (None or empty: equal). `games`: the game names (for
  the messages) or their number. `uneven` says what happens when some exact share is not whole:
  - "error": refuse, naming the batch sizes that would split evenly (the sampler's rule: counts
    are given, usually as integer weights);
  - "largest_remainder": each game gets the whole part of its share, and the samples left over
    go one each to the games with the largest remainders, the first games first on ties (the
    rule that turns a config's batch size and weights into those counts).
  """
  names = ([f"game {i}" for i in range(games)] if isinstance(games, int) else list(games))
  if uneven not in UNEVEN_RULES:
    raise ValueError(f"uneven must be one of {UNEVEN_RULES}, got {uneven!r}.")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  batch_size = int(batch_size)
  if weights is None or len(weights) == 0:
    weights = [1] * len(names)
  if len(weights) != len(names):
    raise ValueError(f"game_weights has {len(weights)} entries for {len(names)} games "
                     f"{names[:8]}{'...' if len(names) > 8 else ''}: game_weights must hold "
                     f"{len(names)} positive numbers, got {list(weights)}.")
  try:
    fractions = [Fraction(w).limit_denominator(10**6) for w in weights]
  except (TypeError, ValueError):
    raise ValueError(f"game_weights must be numbers, got {list(weights)}.") from None
  bad = [g for g, w in zip(names, fractions) if w <= 0]
  if bad:
    raise ValueError(f"game_weights must be > 0; got {dict(zip(names, weights))} (a game with "
                     f"no samples has no place in config.games): {bad}.")
  total = sum(fractions)
  shares = [batch_size * w / total for w in fractions]
  if uneven == "largest_remainder":
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: -(shares[i] - counts[i]))  # Stable.
    for i in order[:batch_size - sum(counts)]:
      counts[i] += 1
    if min(counts) == 0:
      raise ValueError(f"a batch of {batch_size} per host cannot give every one of the "
                       f"{len(names)} games a sample (counts {counts}).")
    return tuple(counts)
  uneven_shares = {g: float(c) for g, c in zip(names, shares) if c.denominator != 1}
  if uneven_shares:
    unit = math.lcm(*[(w / total).denominator for w in fractions])
    below, above = (batch_size // unit) * unit, (batch_size // unit + 1) * unit
    hint = f"{below} or {above}" if below else f"{above}"
    raise ValueError(f"batch_size {batch_size} cannot be split by game_weights into whole "
                     f"per-game counts (the per-game counts must be constant for the blocked "
                     f"head): {uneven_shares}. Use a batch size that is a multiple of {unit}, "
                     f"e.g. {hint}, or give integer per-game counts as weights.")
  return tuple(int(c) for c in shares)


def split_fractions(batch_size: int, tables_and_fractions: Mapping[str, float]) -> dict:
  """{table: rows per batch}: batch_size x fraction / sum, each a whole number >= 1."""
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if not tables_and_fractions:
    raise ValueError("tables_and_fractions is empty: name at least one table.")
  try:
    weights = {t: Fraction(f).limit_denominator(10**6) for t, f in tables_and_fractions.items()}
  except (TypeError, ValueError):
    raise ValueError(f"tables_and_fractions must map table names to numbers, got "
                     f"{dict(tables_and_fractions)}.") from None
  if any(w <= 0 for w in weights.values()):
    raise ValueError(f"every fraction must be > 0, got {dict(tables_and_fractions)}.")
  total = sum(weights.values())
  counts = {t: batch_size * w / total for t, w in weights.items()}
  uneven = {t: float(c) for t, c in counts.items() if c.denominator != 1}
  if uneven:
    raise ValueError(f"batch_size {batch_size} does not split into whole rows per table by "
                     f"tables_and_fractions {dict(tables_and_fractions)}: {uneven}. Every batch "
                     f"has fixed rows per table; choose fractions that divide the batch.")
  return {t: int(c) for t, c in counts.items()}
