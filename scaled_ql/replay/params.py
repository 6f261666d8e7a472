"""The learner's newest parameters in the "variables" table, for the actors."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import jax
import numpy as np
import reverb

from scaled_ql.replay.server import VARIABLES, ReplayError, check_table, server_info


def publish_params(address: str, params: Any, step: int, *, timeout_s: float = 60.0) -> None:
  """Puts `params` (a pytree of arrays) with `step` into the "variables" table, replacing the
  previous ones. Leaves are copied to host NumPy arrays; waits for the server to confirm."""
  check_table(address, VARIABLES, min(timeout_s, 10.0))
  leaves = [np.asarray(x) for x in jax.device_get(jax.tree_util.tree_leaves(params))]
  client = reverb.Client(address)
  writer = client.trajectory_writer(num_keep_alive_refs=1, validate_items=False)
  try:
    writer.append([np.asarray(step, np.int64), *leaves])
    writer.create_item(VARIABLES, 1.0, [column[-1] for column in writer.history])
    writer.flush(0, timeout_ms=int(timeout_s * 1000))
  except reverb.errors.DeadlineExceededError:
    raise ReplayError(f"publishing parameters (step {step}) to {address} table {VARIABLES!r} "
                      f"was not confirmed within {timeout_s:g}s.") from None
  finally:
    writer.close()


def _version(address: str, timeout_s: float) -> tuple[int, int]:
  """(parameter sets ever inserted, items now) of the variables table."""
  info = server_info(address, timeout_s)
  if VARIABLES not in info:
    raise ReplayError(f"the Reverb server at {address} has no table {VARIABLES!r}; its tables "
                      f"are {sorted(info)}.")
  table = info[VARIABLES]
  return int(table.rate_limiter_info.insert_stats.completed), int(table.current_size)


def _sample(address: str, timeout_s: float) -> list[np.ndarray]:
  """The flat columns of the one item of the variables table (in a thread: never hangs)."""
  result = {}

  def run():
    try:
      sample = next(reverb.Client(address).sample(VARIABLES, 1, emit_timesteps=False))
      result["data"] = [np.asarray(x) for x in sample.data]
    except BaseException as e:  # pylint: disable=broad-except
      result["error"] = e

  thread = threading.Thread(target=run, name="fetch-params", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if "error" in result:
    raise ReplayError(f"fetching parameters from {address}: {result['error']}") from None
  if "data" not in result:
    raise ReplayError(f"fetching parameters from {address} took over {timeout_s:g}s (the server "
                      f"went away?).")
  return result["data"]


def _unflatten(address: str, template: Any, columns: list[np.ndarray]) -> tuple[Any, int]:
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if len(columns) != len(leaves) + 1:
    raise ReplayError(f"the parameters at {address} have {len(columns) - 1} arrays, the "
                      f"template {len(leaves)}: another model published them?")
  for i, (got, want) in enumerate(zip(columns[1:], leaves)):
    if tuple(got.shape) != tuple(np.shape(want)) or got.dtype != np.dtype(want.dtype):
      path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(template)[0][i][0])
      raise ReplayError(f"the parameters at {address}: leaf {path} is {got.dtype} "
                        f"{tuple(got.shape)}, the template's {np.dtype(want.dtype)} "
                        f"{tuple(np.shape(want))}.")
  return jax.tree_util.tree_unflatten(treedef, columns[1:]), int(columns[0])


def fetch_params(address: str, template: Any, timeout_s: float = 60.0) -> tuple[Any, int]:
  """(params, step): the newest published parameters, structured like `template` (a pytree
  of arrays or `jax.ShapeDtypeStruct`s; shapes and dtypes checked), as NumPy arrays. Waits up
  to `timeout_s` for a first publication; ReplayError then, or if the server is gone."""
  deadline = time.monotonic() + timeout_s
  while _version(address, min(timeout_s, 5.0))[1] == 0:
    if time.monotonic() > deadline:
      raise ReplayError(f"no parameters were published to {address} table {VARIABLES!r} within "
                        f"{timeout_s:g}s.")
    time.sleep(0.05)
  return _unflatten(address, template, _sample(address, max(deadline - time.monotonic(), 1.0)))


class ParamsClient:
  """The actors' view of the newest parameters: `latest()` costs one small server-info call
  when nothing was published since the last one, a download otherwise."""

  def __init__(self, address: str, template: Any, timeout_s: float = 60.0):
    self.address, self.template, self.timeout_s = address, template, timeout_s
    self._version = -1
    self._latest: Optional[tuple[Any, int]] = None

  def latest(self, wait: bool = False) -> Optional[tuple[Any, int]]:
    """(params, step) of the newest publication; None if there is none yet (wait=False), or
    wait up to timeout_s for one (wait=True)."""
    deadline = time.monotonic() + self.timeout_s
    version, size = _version(self.address, min(self.timeout_s, 5.0))
    while size == 0:
      if not wait:
        return None
      if time.monotonic() > deadline:
        raise ReplayError(f"no parameters were published to {self.address} table "
                          f"{VARIABLES!r} within {self.timeout_s:g}s.")
      time.sleep(0.05)
      version, size = _version(self.address, min(self.timeout_s, 5.0))
    if version != self._version:  # The version read before the download: never skips one.
      self._latest = _unflatten(self.address, self.template, _sample(self.address,
                                                                     self.timeout_s))
      self._version = version
    return self._latest
