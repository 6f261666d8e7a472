"""Checkpoints: Orbax CheckpointManager for the train state, the sampler state and run metadata.

A checkpoint step directory holds three items:
- `state`: the TrainState (params, target params, Adam state, step, rng), saved asynchronously
  by every process for its own shards, written to a temporary name and renamed when complete
  (Orbax's atomic commit), so a killed run never leaves a half checkpoint that looks whole;
- `sampler`: the data sampler's state (JSON), so a resumed run draws exactly the batches the
  uninterrupted run would have drawn (one entry per host);
- `meta`: what the parameters mean (model config, game list, loss kind), checked on resume so
  a workdir of another architecture or game set is refused before training.

Restore takes the target shardings, so a checkpoint written on 8 devices restores onto 1 or
onto 64. An unreadable newest checkpoint is moved aside (never deleted) and the previous one is
used, with a warning that says so.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def stored_tree(directory: str):
  """The shapes and dtypes of the PyTree checkpoint in `directory` (an item directory, e.g. a
  step's `state/`), read from its metadata without reading any array."""
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory))
  return getattr(metadata, "tree", metadata)  # A dict, or a tree-metadata object around one.


@contextlib.contextmanager
def quiet_orbax():
  """Orbax's notes (read-only managers, its transforms API, restoring without shardings) are
  not for users: absl logging at ERROR inside the block."""
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


class Restored(NamedTuple):
  step: int
  state: Any
  sampler: Any
  meta: dict


def _finite(tree) -> bool:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(
      leaves)) if leaves else True


class Checkpointer:
  """Saves every `save_interval_steps`, keeps the newest `max_to_keep`, resumes from the newest
  readable checkpoint of `directory`."""

  def __init__(self, directory: str, *, save_interval_steps: int, max_to_keep: int = 3,
               asynchronous: bool = True):
    if save_interval_steps < 1:
      raise ValueError(f"checkpoint save_interval_steps must be >= 1, got {save_interval_steps}.")
    self.directory = os.path.abspath(directory)
    self.save_interval_steps = save_interval_steps
    # The interval is applied here (Orbax would also save the very first step it sees).
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=asynchronous)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "sampler", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, sampler_state, meta: dict, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); refuses non-finite parameters. Returns True if saved."""
    if not (force or step % self.save_interval_steps == 0) or step in self.all_steps():
      return False
    if not _finite(state.params):
      raise FloatingPointError(f"refusing to checkpoint step {step}: the parameters contain NaN "
                               f"or Inf (the last good checkpoint is kept).")
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), sampler=ocp.args.JsonSave(sampler_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore_latest(self, abstract_state, shardings=None) -> Optional[Restored]:
    """The newest readable checkpoint, restored into `shardings` (None: default device).

    Returns None when the directory has no checkpoint. A checkpoint that fails to restore is
    renamed `<step>.unreadable-<time>` and the previous one is tried.
    """
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree_util.tree_map(lambda _: device, abstract_state)
    abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
        shardings)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), sampler=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        aside = self._move_aside(step)
        logging.warning("checkpoint at step %d is unreadable (%s: %s); moved to %s, trying the "
                        "previous checkpoint.", step, type(e).__name__, str(e)[:300], aside)
        print(f"WARNING: checkpoint at step {step} is unreadable ({type(e).__name__}); moved "
              f"aside to {aside}; resuming from the previous checkpoint.", flush=True)
        continue
      return Restored(step, restored.state, restored.sampler, restored.meta)
    return None

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.unreadable-{int(time.time())}"
    if jax.process_index() == 0 and os.path.exists(src):
      os.rename(src, dst)
    # The manager caches its step list: rebuild it so the moved step is gone.
    self._manager.reload()
    return dst

  def wait(self) -> None:
    """Blocks until the asynchronous saves in flight are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
