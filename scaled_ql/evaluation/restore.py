"""Loads a pre-training checkpoint for evaluation: the network, its parameters and its games.

Everything needed comes from the checkpoint itself (its `meta` item, read by
`scaled_ql.run_meta`: model config, game list, loss kind, value support), so no config file is
needed; the workdir's `config.json`, where present, is passed along (the dataset it read). Only the online parameters are read (no Adam moments, no target network), and
nothing in the checkpoint directory is written, renamed or moved: an unreadable checkpoint is an
error here, not a reason to fall back silently to an older one (pre-training's resume does that).
"""
from __future__ import annotations

import os
import re
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp

from scaled_ql import games as games_lib
from scaled_ql import checkpoints, losses, networks, run_meta

_STEP_DIR = re.compile(r"^\d+$")


class CheckpointError(ValueError):
  """A checkpoint path that cannot be evaluated (missing, empty, inconsistent)."""


class EvalCheckpoint(NamedTuple):
  """A restored network, ready for `policy.make_greedy_policy`.

  `v_min`/`v_max` come from the metadata (`run_meta.describe`); the greedy action does
  not depend on them (the mean of a categorical distribution on evenly spaced atoms is an
  increasing affine function of the same mean on atoms 0..K-1), they only scale Q-values.
  """
  model: Any  # networks.MultiGameQNetwork
  params: Any
  games: tuple[str, ...]  # The heads, in order: head i plays games[i].
  loss_kind: str
  step: int
  checkpoint_dir: str  # The directory of step directories.
  workdir: Optional[str]  # The pre-training workdir, when the layout shows one.
  v_min: float
  v_max: float
  config: dict  # The workdir's flat config.json ({} when there is none).


def resolve(path: str) -> tuple[str, Optional[int], Optional[str]]:
  """(checkpoint_dir, step or None for the newest, workdir or None) for a user's path.

  Accepted: a pre-training workdir (holding checkpoints/), its checkpoints/ directory, or one
  step directory inside it (checkpoints/2000).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f"checkpoint path {path} does not exist (or is not a directory).")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None, path
  parent = os.path.dirname(path)
  if _STEP_DIR.match(os.path.basename(path)) and os.path.isdir(os.path.join(path, "state")):
    workdir = os.path.dirname(parent)
    has_workdir = os.path.basename(parent) == "checkpoints"
    return parent, int(os.path.basename(path)), workdir if has_workdir else None
  workdir = parent if os.path.basename(path) == "checkpoints" else None
  return path, None, workdir


def _manager(checkpoint_dir: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(read_only=True)
  return ocp.CheckpointManager(checkpoint_dir, options=options,
                               item_names=("state", "sampler", "meta"))


@checkpoints.quiet_orbax()
def load(path: str) -> EvalCheckpoint:
  """Restores the newest (or the named) checkpoint under `path`; see `resolve` for paths.

  Raises CheckpointError naming the path for: no such directory, no checkpoint in it, a
  checkpoint without the run metadata, games unknown to the game table, or parameters whose
  shapes disagree with the metadata (another game set or action layout than it claims).
  """
  checkpoint_dir, step, workdir = resolve(path)
  manager = None
  try:
    manager = _manager(checkpoint_dir)
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"{checkpoint_dir} holds no checkpoint (no step directories); "
                            f"pass a pre-training workdir or its checkpoints/ directory.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise CheckpointError(f"{checkpoint_dir} has no checkpoint at step {step} (steps: {steps}).")
    where = os.path.join(checkpoint_dir, str(step))
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{where}: cannot read the run metadata ({type(e).__name__}: "
                            f"{str(e)[:200]}).") from e
    config = run_meta.read_config(workdir)
    try:
      described = run_meta.describe(meta, config)
    except ValueError as e:
      raise CheckpointError(f"{where}: {e}") from e
    try:
      head_games = games_lib.canonical_names(described.games)
      if described.loss_kind not in losses.LOSS_KINDS:
        raise ValueError(f"unknown loss kind {described.loss_kind!r}")
      model = networks.build_q_network(described.model, len(head_games))
    except ValueError as e:
      raise CheckpointError(f"{where}: the metadata describes no network this code can build: "
                            f"{e}") from e
    expected = networks.param_shapes(model)
    try:
      tree = checkpoints.stored_tree(os.path.join(where, "state"))
      stored = tree["params"] if "params" in tree else None
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{where}: cannot read the train state's metadata "
                            f"({type(e).__name__}: {str(e)[:200]}).") from e
    if stored is None:
      raise CheckpointError(f"{where}: no train state with parameters in it.")
    try:
      networks.check_param_shapes(expected, stored, source=where)
    except ValueError as e:
      raise CheckpointError(f"{e} The metadata lists {len(head_games)} games "
                            f"{list(head_games)} with {model.num_atoms} atoms x "
                            f"{games_lib.MAX_ACTIONS} action slots per head.") from e
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {"params": expected}
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=device, global_shape=x.shape, dtype=x.dtype),
        abstract)
    try:  # transforms={} restores only the subtree named in `abstract` (online parameters).
      state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          abstract, restore_args=restore_args, transforms={}))).state
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{where}: cannot read the parameters ({type(e).__name__}: "
                            f"{str(e)[:200]}); an older step may be readable: pass its "
                            f"directory, e.g. {os.path.join(checkpoint_dir, str(steps[0]))}."
                            ) from e
  finally:
    if manager is not None:
      manager.close()
  return EvalCheckpoint(
      model=model, params=state["params"], games=head_games, loss_kind=described.loss_kind,
      step=int(step), checkpoint_dir=checkpoint_dir, workdir=workdir, v_min=described.v_min,
      v_max=described.v_max, config=config)
