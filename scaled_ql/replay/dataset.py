"""Sampling batches of transitions from Reverb tables for the learner."""
from __future__ import annotations

import queue
import threading
import time
from typing import Mapping, Optional

import numpy as np
import reverb
import tensorflow as tf
import tree

from scaled_ql.data.batch import Batch, split_fractions  # noqa: F401  (re-exported)
from scaled_ql.replay.server import (ONLINE, TRANSITION_FIELDS, ReplayError, check_address,
                                     port_open, server_info)
from scaled_ql.replay.writer import _check_signature

_POLL_S = 0.25


class ReplayBatches:
  """An iterator of `scaled_ql.data.Batch` (NumPy arrays) sampled from Reverb tables.

  Each batch has `batch_size` rows: consecutive blocks of rows per table, in the order of
  `tables_and_fractions` (e.g. {"offline": 0.25, "online": 0.75} at batch 256: 64 offline rows,
  then 192 online rows), each sampled uniformly from its table. Built on
  `reverb.TrajectoryDataset` (the tables' signatures) and tf.data (batched, zipped, prefetched)
  in a background thread, `prefetch` batches ahead.

  Game blocks (the learner's `block_size`): rows are not grouped by game. With ONE game per
  online run (`single_game=True`, the default) every row has the same game_id, so
  `block_size` = batch_size is right (checked on every batch). With several games in the
  tables use `single_game=False`: `block_size` is then 1, the head's any-mix path.

  `next()` raises ReplayError when the server is gone (noticed within a second) or no batch
  came within `timeout_s` (e.g. a table below its min_size_to_sample, or a samples-per-insert
  limiter waiting for inserts); it can be called again afterwards and continues once data flows.
  A sampling stream that waits `rate_limiter_timeout_s` for the rate limiter is restarted (rows
  of a partly filled batch are then dropped). Call `close()` (or use `with`).
  """

  def __init__(self, address: str, batch_size: int, *,
               tables_and_fractions: Optional[Mapping[str, float]] = None, prefetch: int = 2,
               timeout_s: float = 60.0, single_game: bool = True,
               rate_limiter_timeout_s: float = 60.0,
               max_in_flight_samples_per_worker: Optional[int] = None,
               num_workers_per_iterator: int = -1):
    self.address = address
    self.tables_and_fractions = dict(tables_and_fractions or {ONLINE: 1.0})
    self.counts = split_fractions(batch_size, self.tables_and_fractions)
    self.batch_size = int(batch_size)
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}.")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}.")
    self.timeout_s, self.single_game = float(timeout_s), bool(single_game)
    info = check_address(address, min(self.timeout_s, 10.0), tuple(self.counts))
    stacks = {t: _check_signature(address, t, info[t]) for t in self.counts}
    if len(set(stacks.values())) > 1:
      raise ReplayError(f"the tables {stacks} at {address} hold stacks of different sizes.")
    self._signature = info[next(iter(self.counts))].signature
    self._rate_limiter_timeout_ms = int(rate_limiter_timeout_s * 1000)
    self._in_flight = max_in_flight_samples_per_worker
    self._num_workers = num_workers_per_iterator
    self._queue: queue.Queue = queue.Queue(prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name="replay-batches", daemon=True)
    self._thread.start()

  @property
  def block_size(self) -> int:
    """The learner's block_size for these batches (see the class docstring)."""
    return self.batch_size if self.single_game else 1

  # -- The producer thread. -----------------------------------------------------------------
  def _dataset(self) -> tf.data.Dataset:
    shapes = tree.map_structure(lambda s: s.shape, self._signature)
    dtypes = tree.map_structure(lambda s: s.dtype, self._signature)
    parts = []
    for table, count in self.counts.items():
      ds = reverb.TrajectoryDataset(
          self.address, table, dtypes, shapes,
          max_in_flight_samples_per_worker=self._in_flight or max(2 * count, 8),
          num_workers_per_iterator=self._num_workers,
          rate_limiter_timeout_ms=self._rate_limiter_timeout_ms)
      parts.append(ds.map(lambda sample: sample.data).batch(count, drop_remainder=True))
    if len(parts) == 1:
      ds = parts[0]
    else:
      ds = tf.data.Dataset.zip(tuple(parts)).map(
          lambda *blocks: {k: tf.concat([b[k] for b in blocks], 0) for k in TRANSITION_FIELDS})
    return ds.prefetch(1)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        pass
    return False

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        # The stream ends when the rate limiter held a sample rate_limiter_timeout_s: restart.
        for element in self._dataset():
          batch = Batch(**{k: element[k].numpy() for k in TRANSITION_FIELDS})
          if not self._put(batch):
            return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  # -- The consumer. ------------------------------------------------------------------------
  def __iter__(self) -> "ReplayBatches":
    return self

  def __next__(self) -> Batch:
    if self._stop.is_set():
      raise RuntimeError("ReplayBatches is closed.")
    start = time.monotonic()
    while True:
      try:
        item = self._queue.get(timeout=_POLL_S)
        break
      except queue.Empty:
        pass
      if not port_open(self.address, 1.0):
        raise ReplayError(f"no Reverb server at {self.address} (tables "
                          f"{list(self.counts)}): it went away while sampling.")
      if not self._thread.is_alive() and self._queue.empty():
        raise ReplayError(f"the sampling thread for {self.address} tables {list(self.counts)} "
                          f"has stopped.")
      waited = time.monotonic() - start
      if waited >= self.timeout_s:
        raise ReplayError(f"no batch from the Reverb server at {self.address} (tables "
                          f"{self._describe()}) within timeout_s={self.timeout_s:g}s: a table "
                          f"below its min_size_to_sample, or a samples-per-insert rate limiter "
                          f"waiting for inserts.")
    if isinstance(item, BaseException):
      self.close()
      raise ReplayError(f"sampling from the Reverb server at {self.address} (tables "
                        f"{list(self.counts)}) failed: {type(item).__name__}: {item}") from item
    if self.single_game and self.batch_size > 1 and \
        np.any(item.game_id != item.game_id[0]):
      raise ReplayError(f"a batch from {self.address} mixes games "
                        f"{np.unique(item.game_id).tolist()}, but single_game=True: use "
                        f"single_game=False (the learner's block_size 1) for several games.")
    return item

  def _describe(self) -> str:
    """The tables' sizes, for error messages (best effort, at most about a second)."""
    try:
      info = server_info(self.address, 1.0)
    except ReplayError:
      return str(list(self.counts))
    parts = []
    for table in self.counts:
      t = info[table]
      limiter = t.rate_limiter_info
      parts.append(f"{table!r}: {t.current_size} items, min_size_to_sample "
                   f"{limiter.min_size_to_sample}, samples_per_insert "
                   f"{limiter.samples_per_insert:g}, {limiter.insert_stats.completed} inserted, "
                   f"{limiter.sample_stats.completed} sampled")
    return "; ".join(parts)

  def close(self) -> None:
    """Stops the background thread (one blocked inside Reverb is left to finish). Idempotent."""
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=2 * _POLL_S)

  def __enter__(self) -> "ReplayBatches":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
