"""The area resize that made the DQN Replay Dataset, bit-exact with OpenCV's `cv2.INTER_AREA`.

`resize_area` shrinks raw 210x160 ALE screens to 84x84 in exact integer arithmetic (fast, batched);
`_resize_area_reference` is OpenCV's own float32 arithmetic, frame by frame (slow), the ground
truth the fast path is checked against and the fallback for shapes it does not cover.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

import numpy as np

from scaled_ql.frames import FRAME_SHAPE


@functools.lru_cache(maxsize=None)
def _area_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Area-averaging taps for shrinking one axis: (indices, weights), each [out, taps].

  Output pixel i covers the input interval [i * s, (i + 1) * s), s = in / out; each input pixel
  weighs by the fraction of that interval it covers. The taps, their float32 weights and their
  order are OpenCV's (`computeResizeAreaTab`), so that `resize_area` is bit-exact with
  `cv2.resize(..., interpolation=cv2.INTER_AREA)`, the resize that made the DQN Replay Dataset.
  Unused taps have weight 0 (adding 0 changes no float).
  """
  if not 0 < out_size < in_size or in_size % out_size == 0:
    raise ValueError(f"area resizing here only shrinks by a non-integer factor (as OpenCV does "
                     f"it for those), got {in_size} -> {out_size}.")
  scale = 1.0 / (out_size / in_size)  # Computed as OpenCV computes it.
  taps = []
  for i in range(out_size):
    lo = i * scale
    hi = lo + scale
    width = min(scale, in_size - lo)
    first, last = int(np.ceil(lo)), int(np.floor(hi))
    last = min(last, in_size - 1)
    first = min(first, last)
    row = []
    if first - lo > 1e-3:
      row.append((first - 1, (first - lo) / width))
    row.extend((j, 1.0 / width) for j in range(first, last))
    if hi - last > 1e-3:
      row.append((last, min(hi - last, 1.0, width) / width))
    taps.append(row)
  num_taps = max(len(row) for row in taps)
  index = np.zeros((out_size, num_taps), np.int64)
  weight = np.zeros((out_size, num_taps), np.float32)
  for i, row in enumerate(taps):
    for k, (j, w) in enumerate(row):
      index[i, k], weight[i, k] = j, np.float32(w)
  return index, weight


def resize_area(frames: np.ndarray, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
  """Shrinks [..., H, W] uint8 frames to [..., *shape] by area averaging, like `cv2.INTER_AREA`.

  The same to the bit as OpenCV, not just to +-1: the policy must see the pixels the dataset
  holds. OpenCV computes in float32 (columns, then rows; taps summed in sequence; round half to
  even), which `_resize_area_reference` repeats (checked against opencv-python-headless 4.11 on
  real and random 210x160 frames). This function gets the same result about twice as fast, in
  integers, and resizes a batch [N, H, W] in one call (what `VectorAtariEnv` does every step):

  - Every area weight is a multiple of 1 / (in / gcd(in, out)) per axis (1/40 for 160 -> 84,
    1/5 for 210 -> 84), so each output pixel is exactly S / 200 for an integer S <= 255 * 200.
    S is computed exactly in uint16 lanes (four pixels per uint64 word, so each NumPy call
    processes four pixels).
  - OpenCV's float32 value differs from S / 200 by less than 2e-4 (at most about ten roundings of
    relative size 2^-24 on a value <= 255; all terms are non-negative), while S / 200 is at least
    1 / 200 away from a rounding boundary unless it lies exactly on one (S = 100 mod 200). So
    every pixel off a boundary rounds as S / 200 does, and only the pixels on one ("ties", from
    none to a few dozen per Atari frame) take OpenCV's float32 arithmetic, for those pixels alone.

  Shapes where this does not apply (denominators too large for uint16 sums, such as Carnival's
  214 rows; widths not a multiple of 4) take the float32 reference frame by frame. Integer
  factors, e.g. 168 -> 84, are refused: OpenCV computes those another way.
  """
  frames = np.asarray(frames)
  if frames.ndim < 2 or frames.dtype != np.uint8:
    raise ValueError(f"resize_area takes uint8 [..., H, W] frames, got {frames.dtype} "
                     f"{frames.shape}.")
  lead, (height, width) = frames.shape[:-2], frames.shape[-2:]
  plan = _integer_area_plan(height, width, *shape)
  if frames.size == 0:
    return np.zeros((*lead, *shape), np.uint8)
  if plan is None:
    flat = frames.reshape(-1, height, width)
    return np.stack([_resize_area_reference(f, shape) for f in flat]).reshape(*lead, *shape)
  return plan(np.ascontiguousarray(frames).reshape(-1, height, width)).reshape(*lead, *shape)


class _IntegerAreaPlan:
  """`resize_area` for one (H, W) -> (h, w) in exact integer arithmetic (see its docstring).

  Pixels are widened to uint16 and handled four at a time as uint64 words (lane-wise sums and
  products by small integers, none of which exceeds 16 bits, so no carry crosses lanes).
  """

  def __init__(self, height: int, width: int, out_height: int, out_width: int,
               row_period: list[list[tuple[int, list[int]]]],
               columns: tuple[np.ndarray, np.ndarray, int], den: int):
    self.in_shape, self.out_shape = (height, width), (out_height, out_width)
    # Rows repeat with a period of len(row_period) output rows per `self._row_block` input rows:
    # row_period[o] lists (integer weight, [input rows within the period]) of output row o.
    self._row_period = row_period
    self._row_block = height * len(row_period) // out_height
    # Columns: [taps * w] source columns (tap-major) and their integer weights [taps * w, 1],
    # which broadcast over words of four output rows.
    self._col_index = columns[0]
    self._col_flat = columns[0].T.reshape(-1)
    self._col_mult = columns[1].T.reshape(-1, 1).astype(np.uint64)
    self._den = np.float32(den)
    self._half = np.float32(den / 2)
    self._row_index, self._row_weight_f32 = _area_table(height, out_height)
    self._col_weight_f32 = _area_table(width, out_width)[1]
    self._local = threading.local()

  def _scratch(self, n: int) -> dict[str, np.ndarray]:
    """This thread's work arrays for batches of n frames, kept between calls (allocating and
    freeing about 1 MB per call costs page faults)."""
    cache = self._local.__dict__.setdefault("scratch", {})
    if n not in cache:
      (height, width), (out_h, out_w) = self.in_shape, self.out_shape
      words = n * width // 4
      if len(cache) >= 4:  # A few batch sizes (a VectorAtariEnv's groups, single resets).
        del cache[next(iter(cache))]
      cache[n] = dict(
          pixels=np.empty((self._row_block, height // self._row_block, n, width), np.uint16),
          columns=np.empty((width, n, height // self._row_block, len(self._row_period)),
                           np.uint16),
          acc=np.empty((height // self._row_block, words), np.uint64),
          part=np.empty((height // self._row_block, words), np.uint64),
          taps=np.empty((len(self._col_flat), n, out_h), np.uint16),
          total=np.empty((out_w, n * out_h // 4), np.uint64),
          quotient=np.empty((out_w, n * out_h), np.float32),
          whole=np.empty((out_w, n * out_h), np.float32))
    return cache[n]

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """[N, H, W] uint8 (C-contiguous) -> [N, h, w] uint8."""
    n = frames.shape[0]
    (height, width), (out_h, out_w) = self.in_shape, self.out_shape
    scratch = self._scratch(n)
    # The frames as uint16 in the layout [block, H / block, N, W]: input row q * block + r is
    # pixels[r, q], so that every row operation below runs over contiguous arrays of
    # H / block * N * W pixels (NumPy's cost per call and per inner loop is then amortised).
    block, period = self._row_block, len(self._row_period)
    pixels = scratch["pixels"]
    np.copyto(pixels, frames.reshape(n, height // block, block, width).transpose(2, 1, 0, 3))
    # Rows, one period at a time: [block, H / block, N * W / 4] words -> columns [W, N, h]
    # uint16 (transposed for the column pass), each output row of the period summed in a
    # contiguous array and then copied into place (output row q * period + o is [:, :, q, o]).
    words = pixels.view(np.uint64).reshape(block, height // block, -1)
    columns, acc = scratch["columns"], scratch["acc"]
    for o, groups in enumerate(self._row_period):
      for g, (weight, sources) in enumerate(groups):
        if g and weight == 1:  # Added in place.
          for r in sources:
            acc += words[r]
          continue
        part = acc if g == 0 else scratch["part"]
        if len(sources) == 1:
          np.copyto(part, words[sources[0]])
        else:
          np.add(words[sources[0]], words[sources[1]], out=part)
        for r in sources[2:]:
          part += words[r]
        if weight & (weight - 1) == 0:  # A power of two: a shift.
          part <<= weight.bit_length() - 1
        else:
          part *= weight
        if g:
          acc += part
      np.copyto(columns[..., o], acc.view(np.uint16).reshape(-1, n, width).transpose(2, 1, 0))
    # Columns: the source columns of every output column gathered from [W, N, h] into
    # [taps * w, N * h] (words of four output rows), weighted and summed over the taps.
    taps = np.take(columns.reshape(width, n, out_h), self._col_flat, axis=0, out=scratch["taps"])
    taps = taps.reshape(len(self._col_flat), -1).view(np.uint64)
    taps *= self._col_mult
    taps = taps.reshape(-1, out_w, taps.shape[-1])
    total = np.add(taps[0], taps[1], out=scratch["total"])
    for k in range(2, taps.shape[0]):
      total += taps[k]
    # S of every output pixel [w, N, h] -> round(S / den) -> [N, h, w] uint8.
    # round(S / den) = floor((S + den / 2) / den), in float32: S + den / 2 is exact, and so is
    # the quotient where it is a whole number (a tie, S = den / 2 mod den; IEEE division rounds
    # correctly), while any other quotient lies at least 1 / den > 2^-16 from a whole number, far
    # more than its rounding error. So truncation gives the rounded value half up, and the ties
    # are exactly the whole quotients; they are redone with OpenCV's floats.
    quotient, whole = scratch["quotient"], scratch["whole"]
    np.copyto(quotient, total.view(np.uint16).reshape(out_w, -1))
    quotient += self._half
    quotient /= self._den
    out = quotient.reshape(out_w, n, out_h).transpose(1, 2, 0).astype(np.uint8, order="C")
    np.trunc(quotient, out=whole)
    ties = np.flatnonzero(quotient == whole)
    if ties.size:
      j, frame, i = np.unravel_index(ties, (out_w, n, out_h))
      out[frame, i, j] = self._opencv_pixels(frames, frame, i, j)
    return out

  def _opencv_pixels(self, frames: np.ndarray, frame: np.ndarray, i: np.ndarray,
                     j: np.ndarray) -> np.ndarray:
    """OpenCV's float32 result for output pixels (i, j) of `frame` in [N, h, w]."""
    height, width = self.in_shape
    source = (frame[:, None, None] * (height * width) + self._row_index[i][:, :, None] * width
              + self._col_index[j][:, None, :])
    # [T, row taps, column taps]: columns first, each row's taps summed in sequence.
    pixels = frames.reshape(-1)[source].astype(np.float32) * self._col_weight_f32[j][:, None, :]
    rows = pixels[:, :, 0] + pixels[:, :, 1]
    for k in range(2, pixels.shape[2]):
      rows += pixels[:, :, k]
    rows *= self._row_weight_f32[i]
    total = rows[:, 0] + rows[:, 1]
    for k in range(2, rows.shape[1]):
      total += rows[:, k]
    return np.rint(total).astype(np.uint8)


def _integer_taps(in_size: int, out_size: int) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
  """(indices [out, taps], integer weights [out, taps], denominator) equal to `_area_table`'s
  float32 weights (weight = integer / denominator, each row summing to the denominator), or None
  when the table has fewer than 2 taps or its weights are not such fractions."""
  index, weight = _area_table(in_size, out_size)
  den = in_size // np.gcd(in_size, out_size)
  numerator = np.rint(weight.astype(np.float64) * den)
  if (index.shape[1] < 2 or np.any(np.abs(weight - numerator / den) > 1e-6)
      or np.any(numerator.sum(axis=1) != den)):
    return None
  return index, numerator.astype(np.int64), int(den)


def _periodic_taps(index: np.ndarray, weight: np.ndarray, in_size: int,
                   out_size: int) -> Optional[list[list[tuple[int, list[int]]]]]:
  """The taps of one period (out / gcd outputs over in / gcd inputs) as, per output, a list of
  (weight, [inputs within the period]), or None if the taps do not repeat with that period."""
  g = int(np.gcd(in_size, out_size))
  block_in, block_out = in_size // g, out_size // g
  period = []
  for o in range(block_out):
    taps = {}
    for j, w in zip(index[o], weight[o]):
      if w:
        taps[int(j)] = taps.get(int(j), 0) + int(w)
    for q in range(g):
      shifted = {}
      for j, w in zip(index[q * block_out + o], weight[q * block_out + o]):
        if w:
          shifted[int(j) - q * block_in] = shifted.get(int(j) - q * block_in, 0) + int(w)
      if shifted != taps or any(not 0 <= j < block_in for j in taps):
        return None
    groups = {}
    for j, w in sorted(taps.items()):
      groups.setdefault(w, []).append(j)
    # Weight-1 groups last: they add straight into the accumulator (no scratch array).
    period.append(sorted(groups.items(), key=lambda item: (item[0] == 1, item[0])))
  return period


@functools.lru_cache(maxsize=None)
def _integer_area_plan(height: int, width: int, out_height: int,
                       out_width: int) -> Optional[_IntegerAreaPlan]:
  """The exact integer resize for these shapes, or None where it does not apply."""
  rows, columns = _integer_taps(height, out_height), _integer_taps(width, out_width)
  if rows is None or columns is None or width % 4 or out_height % 4:
    return None
  den = rows[2] * columns[2]
  if 255 * den >= 1 << 16:  # Every sum must fit a uint16 lane.
    return None
  row_period = _periodic_taps(rows[0], rows[1], height, out_height)
  if row_period is None:
    return None
  return _IntegerAreaPlan(height, width, out_height, out_width, row_period, columns, den)


def _resize_area_reference(frame: np.ndarray, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
  """`resize_area` of one [H, W] uint8 frame by OpenCV's own float32 arithmetic (slow).

  Columns first, as OpenCV does; taps summed in order; round half to even. Both passes gather
  whole rows (fast), hence the transposes.
  """
  if frame.ndim != 2:
    raise ValueError(f"resize_area takes a single [H, W] frame, got shape {frame.shape}.")
  columns = _shrink_rows(frame.T.astype(np.float32), *_area_table(frame.shape[1], shape[1]))
  out = _shrink_rows(np.ascontiguousarray(columns.T), *_area_table(frame.shape[0], shape[0]))
  return np.rint(out).astype(np.uint8)  # Weights sum to 1: out is within [0, 255].


def _shrink_rows(pixels: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """[in, W] float32 -> [out, W]: sums each output row's weighted taps in order, in float32."""
  taps = pixels[index]  # [out, taps, W]
  taps *= weight[:, :, None]
  out = taps[:, 0] + taps[:, 1]
  for k in range(2, index.shape[1]):
    out += taps[:, k]
  return out
