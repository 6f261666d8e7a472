"""Sampling ahead of the learner: a sampler's batches made in a background thread, in order.

NumPy's gathers release the GIL, so a sampler thread overlaps the learner's device step. The
batches are the sampler's own, and the state handed out is the one after the last batch returned
(not the one the thread has reached), so saving it beside a checkpoint resumes exactly.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Mapping

from scaled_ql.data.batch import Batch


class Prefetcher:
  """Runs `sampler`'s batches in a background thread, up to `depth` ahead, in step order.

  `sampler`: a `MultiGameSampler` (anything with `next()`, `state_dict()`, `load_state_dict()`).

  Same batches as the sampler alone; `state_dict()` is the state after the last batch returned,
  so saving it beside a checkpoint resumes exactly. Call `close()` (or use `with`).
  """

  def __init__(self, sampler: Any, depth: int = 2):
    if depth < 1:
      raise ValueError(f"prefetch depth must be >= 1, got {depth}.")
    self._sampler, self._depth = sampler, depth
    self._thread = None
    self._start()

  def _start(self) -> None:
    self._state = self._sampler.state_dict()
    self._queue: queue.Queue = queue.Queue(self._depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name="sampler-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        pass

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        self._put((next(self._sampler), self._sampler.state_dict()))
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self) -> Batch:
    if self._thread is None:
      raise RuntimeError("the Prefetcher is closed.")
    item = self._queue.get()
    if isinstance(item, BaseException):
      self.close()
      raise item
    batch, self._state = item
    return batch

  def state_dict(self) -> dict:
    return self._state

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    self.close()
    self._sampler.load_state_dict(state)
    self._start()

  def close(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get(timeout=0.1)
      except queue.Empty:
        pass
    self._thread = None

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
