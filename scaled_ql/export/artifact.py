"""The backbone artifact's native part: Orbax parameters and backbone.json.

A directory, self-contained (no workdir or config file needed to use it). The open formats
beside these two files (safetensors, ONNX, StableHLO, model card) are written by the sibling
modules (the package docstring lists them); backbone.json records which (`formats`, and
`skipped_formats` with the reason where the default left one out). The two native files:

  backbone.json   format and version; the architecture (`config.model` fields of the backbone,
                  plus the heads' atoms and loss); the games the heads were trained on, in head
                  order, with their action counts (the head's action slots index each game's
                  minimal action set, `scaled_ql.games`); the training step, the dataset and the
                  source checkpoint; parameter counts; and a SHA-256 over every parameter's bytes.
  params/         an Orbax PyTree checkpoint {"backbone": ..., "heads": ... (optional)}.

`write_artifact` makes one (`export.job.export_checkpoint` calls it, writing the other formats
into the same temporary directory through its `extra_writer`);
`load_backbone` reads it back as (Flax module, parameters, heads, info) after checking all of
it, and raises `ArtifactError` naming what is wrong with a bad one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from scaled_ql import checkpoints
from scaled_ql import games as games_lib
from scaled_ql import networks

FORMAT = "scaled-ql-backbone"
VERSION = 1
INFO_FILE = "backbone.json"
PARAMS_DIR = "params"


class ArtifactError(ValueError):
  """A backbone artifact that cannot be used (missing, incomplete, corrupt, inconsistent)."""


@dataclasses.dataclass(frozen=True)
class LoadedBackbone:
  """`load_backbone`'s result.

  module.apply({"params": params}, observation) -> unit-norm features [B, feature_dim], the
  same features as the pre-trained Q-network's. `heads` (or None when not exported) is the
  pre-training head's parameters ({"kernel": [G, D, 18 * atoms], "bias": [G, 18 * atoms]}),
  head g for info["games"][g]["name"]; the heads were trained on the features times
  info["feature_scale"] (0: sqrt(feature_dim); see networks/qnetwork.py), as
  `model_config` tells `build_q_network`.
  """
  module: networks.Backbone
  params: Any
  heads: Optional[Any]
  info: dict

  @property
  def model_config(self) -> dict:
    """The backbone's `config.model` fields (plus num_atoms), for `build_q_network`."""
    # Artifacts written before the heads saw scaled features were trained with scale 1.
    return dict(self.info["architecture"], num_atoms=self.info["num_atoms"],
                feature_scale=self.info.get("feature_scale", 1.0))

  @property
  def games(self) -> tuple[str, ...]:
    return tuple(g["name"] for g in self.info["games"])


def params_digest(tree) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (in a fixed order)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _host(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def write_artifact(out_dir: str, *, model_config: Mapping[str, Any], params: Any,
                   games: Sequence[str], loss_kind: str, step: int, include_heads: bool = True,
                   dataset: Optional[Mapping[str, Any]] = None, source: Optional[str] = None,
                   v_range: tuple[float, float] = (-10.0, 10.0), overwrite: bool = False,
                   write_orbax: bool = True, extra_info: Optional[Mapping[str, Any]] = None,
                   extra_writer: Optional[Callable[[str, dict, dict], None]] = None) -> str:
  """Writes the artifact of a Q-network's `params` to `out_dir` (atomically: a temporary
  directory renamed into place). Returns out_dir.

  `write_orbax=False` leaves out params/ (backbone.json still describes the network);
  `extra_info` is merged into backbone.json; `extra_writer(tmp_dir, info, tree)` writes further
  files (the open formats) into the temporary directory before it is renamed, so a failure
  there leaves no half artifact and never replaces a good one.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out (or "
                          f"pass --overwrite).")
  game_list = games_lib.get_games(games)
  model = networks.build_q_network(model_config, len(game_list))
  networks.check_param_shapes(networks.param_shapes(model), params, source="params")
  backbone, heads = networks.split_params(_host(params))
  tree = {"backbone": backbone, **({"heads": heads} if include_heads else {})}
  info = dict(
      format=FORMAT, version=VERSION,
      architecture={k: model_config[k] for k in networks.BACKBONE_FIELDS},
      num_atoms=int(model_config["num_atoms"]), loss_kind=loss_kind,
      feature_scale=float(model_config.get("feature_scale", 0.0)),
      v_min=float(v_range[0]), v_max=float(v_range[1]),
      games=[dict(name=g.name, num_actions=g.num_actions) for g in game_list],
      step=int(step), dataset=dict(dataset or {}), source=source,
      num_backbone_params=networks.count_params(backbone),
      num_head_params=networks.count_params(heads), has_heads=bool(include_heads),
      feature_dim=int(model_config["feature_dim"]), sha256=params_digest(tree),
      versions=dict(jax=jax.__version__, orbax=ocp.__version__ if hasattr(ocp, "__version__")
                    else None),
      **dict(extra_info or {}))
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    if write_orbax:
      with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(tmp, PARAMS_DIR), tree)
    if extra_writer is not None:
      extra_writer(tmp, info, tree)
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=1)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def read_info(path: str) -> dict:
  """The checked backbone.json of the artifact at `path`."""
  path = os.path.abspath(os.path.expanduser(path))
  info_path = os.path.join(path, INFO_FILE)
  if not os.path.isdir(path):
    raise ArtifactError(f"backbone artifact {path} does not exist (or is not a directory); "
                        f"make one with `python -m launch.export --workdir=... --out={path}`.")
  if not os.path.exists(info_path):
    hint = (" It looks like a pre-training workdir: export it first with `python -m "
            "launch.export`." if os.path.isdir(os.path.join(path, "checkpoints")) else "")
    raise ArtifactError(f"{path} is not a backbone artifact: no {INFO_FILE}.{hint}")
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise ArtifactError(f"{info_path} is unreadable or not JSON: {e}") from e
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise ArtifactError(f"{info_path} is not a {FORMAT} description (format "
                        f"{info.get('format') if isinstance(info, dict) else None!r}).")
  if info.get("version") != VERSION:
    raise ArtifactError(f"{info_path} has format version {info.get('version')!r}; this code "
                        f"reads version {VERSION}.")
  required = ("architecture", "num_atoms", "games", "step", "sha256", "has_heads")
  missing = [k for k in required if k not in info]
  if missing:
    raise ArtifactError(f"{info_path} lacks {', '.join(missing)}.")
  try:
    games_lib.get_games([g["name"] for g in info["games"]])
    networks.build_q_network(dict(info["architecture"], num_atoms=info["num_atoms"]),
                             len(info["games"]))
  except (ValueError, KeyError, TypeError) as e:
    raise ArtifactError(f"{info_path} describes no network this code can build: {e}") from e
  for g in info["games"]:
    expected = games_lib.get_game(g["name"]).num_actions
    if g.get("num_actions") != expected:
      raise ArtifactError(f"{info_path}: game {g['name']} was trained with "
                          f"{g.get('num_actions')} actions but has {expected} minimal actions "
                          f"here (another action layout).")
  return info


@checkpoints.quiet_orbax()  # Orbax's notes on restoring without shardings.
def load_backbone(path: str, *, with_heads: bool = False) -> LoadedBackbone:
  """Reads and checks the artifact at `path` (see the module docstring).

  Checks: the description (format, version, buildable architecture, known games with the
  same action counts), the stored parameter shapes against the architecture, and the SHA-256
  of the parameters read. `with_heads=True` also reads the pre-training heads (an error if they
  were not exported). Parameters come back as host NumPy arrays.
  """
  info = read_info(path)
  path = os.path.abspath(os.path.expanduser(path))
  params_dir = os.path.join(path, PARAMS_DIR)
  module = networks.build_backbone(info["architecture"])
  q_network = networks.build_q_network(dict(info["architecture"], num_atoms=info["num_atoms"]),
                                       len(info["games"]))
  expected_backbone, expected_heads = networks.split_params(networks.param_shapes(q_network))
  if not os.path.isdir(params_dir):
    if "orbax" not in info.get("formats", ("orbax",)):  # Artifacts before `formats`: Orbax.
      raise ArtifactError(f"{path} was exported without its Orbax parameters (launch.export "
                          f"--formats={','.join(info['formats'])}); export again with orbax in "
                          f"--formats, or read model.safetensors.")
    raise ArtifactError(f"{path}: the parameters ({PARAMS_DIR}/) are missing.")
  try:
    stored = checkpoints.stored_tree(params_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ArtifactError(f"{params_dir}: unreadable parameter metadata ({type(e).__name__}: "
                        f"{str(e)[:200]}).") from e
  expected = {"backbone": expected_backbone}
  if info["has_heads"]:
    expected["heads"] = expected_heads
  try:
    networks.check_param_shapes(expected, stored, source=params_dir)
  except ValueError as e:
    raise ArtifactError(f"{e} ({INFO_FILE} describes {info['architecture']}).") from e
  if with_heads and not info["has_heads"]:
    raise ArtifactError(f"{path} was exported without heads (launch.export --noheads).")
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.restore(params_dir, item=jax.tree_util.tree_map(
          lambda s: np.zeros(s.shape, s.dtype), expected))
  except Exception as e:  # pylint: disable=broad-except
    raise ArtifactError(f"{params_dir}: cannot read the parameters ({type(e).__name__}: "
                        f"{str(e)[:200]}).") from e
  tree = _host(tree)
  if params_digest(tree) != info["sha256"]:
    raise ArtifactError(f"{params_dir}: the parameters do not match the SHA-256 in {INFO_FILE} "
                        f"(corrupt or modified files).")
  return LoadedBackbone(module=module, params=tree["backbone"],
                        heads=tree.get("heads") if with_heads else None, info=info)
