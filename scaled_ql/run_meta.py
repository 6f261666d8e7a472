"""Run metadata: what a checkpoint's parameters mean, written and read here only.

Every checkpoint carries `meta` (checkpoints.Checkpointer): the model config, the game list,
the loss kind and its value support (v_min, v_max), plus job-specific entries (fine-tuning's
init and artifact hash). A resumed run must agree with it (`check_resume_compatible`);
evaluation and export rebuild the network from it alone (`describe`). The workdir also gets
`config.json`, the whole flat config, for people and for reports (which dataset, which runs).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple, Optional

CONFIG_FILE = "config.json"
# The C51 support of checkpoints written before the metadata held it (configs/pretrain.py's).
DEFAULT_V_RANGE = (-10.0, 10.0)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'model.depth': 34, ...}: a config as flat key/values, for logs and comparisons."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def build(config, extra: Optional[dict] = None) -> dict:
  """The metadata of a run of `config` (games already canonical), with `extra` entries."""
  return dict(model=flatten(config.model.to_dict()), games=list(config.games),
              loss_kind=config.loss.kind, v_range=[float(config.loss.v_min),
                                                   float(config.loss.v_max)], **(extra or {}))


def check_resume_compatible(saved: dict, current: dict, workdir: str) -> None:
  """Raises ValueError naming every difference that makes `saved` another run than `current`."""
  if saved.get("games") != current["games"]:
    raise ValueError(f"{workdir} holds a checkpoint trained on games {saved.get('games')}, but "
                     f"config.games is {current['games']}. Use another --workdir.")
  diffs = [f"model.{k}: checkpoint {saved.get('model', {}).get(k)!r} vs config {v!r}"
           for k, v in current["model"].items() if saved.get("model", {}).get(k) != v
           and k != "dtype"]
  if saved.get("loss_kind") != current["loss_kind"]:
    diffs.append(f"loss.kind: checkpoint {saved.get('loss_kind')!r} vs config "
                 f"{current['loss_kind']!r}")
  if diffs:
    raise ValueError(f"{workdir} holds a checkpoint of another architecture ("
                     + "; ".join(diffs) + "). Use another --workdir.")
  # Other entries (v_range, job entries such as "finetune") must agree; only v_range may be
  # missing, from checkpoints written before the metadata held it.
  for key in sorted(set(current) - {"games", "model", "loss_kind"}):
    if key == "v_range" and key not in saved:
      continue
    if saved.get(key) != current[key]:
      raise ValueError(f"{workdir} holds a run with {key} {saved.get(key)!r}, but this run "
                       f"has {current[key]!r}. Use another --workdir.")


def write_config(workdir: str, config) -> str:
  """WORKDIR/config.json: the whole config, flat. Returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path, "w") as f:
    json.dump(flatten(config.to_dict()), f, indent=1)
  return path


def read_config(workdir: Optional[str]) -> dict:
  """The flat config.json of `workdir` ({} when there is none)."""
  path = os.path.join(workdir, CONFIG_FILE) if workdir else ""
  if not path or not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


class Described(NamedTuple):
  """What evaluation and export need from a checkpoint's metadata."""
  model: dict
  games: tuple[str, ...]
  loss_kind: str
  v_min: float
  v_max: float


def describe(meta: dict, config: Optional[dict] = None) -> Described:
  """The network's description from checkpoint metadata; ValueError when fields are missing.
  Checkpoints written before the metadata held the value support take it from the workdir's
  flat `config` (read_config), else DEFAULT_V_RANGE."""
  if not isinstance(meta, dict) or not {"model", "games", "loss_kind"} <= set(meta):
    raise ValueError(f"the metadata lacks model / games / loss_kind: {meta!r}.")
  config = config or {}
  v_min, v_max = meta.get("v_range") or (config.get("loss.v_min", DEFAULT_V_RANGE[0]),
                                         config.get("loss.v_max", DEFAULT_V_RANGE[1]))
  model = dict(meta["model"])
  model.setdefault("feature_scale", 1.0)  # Trained before the heads saw scaled features.
  return Described(model, tuple(meta["games"]), meta["loss_kind"], float(v_min), float(v_max))


PROVENANCE_FILE = "provenance.json"


def provenance() -> dict:
  """What a result's bits depend on beyond its inputs and seed: the JAX and jaxlib versions,
  XLA:CPU's runtime (classic and thunk give different parameters), the CPU cores the process
  may use (the thunk runtime's results depend on them), and the library's code (a SHA-256 over
  its Python sources). Results made under different ones must not be mixed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return dict(jax=jax.__version__, jaxlib=jaxlib.__version__, xla_cpu_runtime=cpu_runtime(),
              cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count(), code=code_version())


def cpu_runtime() -> str:
  """XLA:CPU's runtime in this process: "classic" or "thunk" ("none" off CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    return f"none ({jax.default_backend()})"
  return ("classic" if "--xla_cpu_use_thunk_runtime=false" in os.environ.get("XLA_FLAGS", "")
          else "thunk")


def code_version() -> str:
  """'sha256:<16 hex>' over the scaled_ql package's Python files (paths and bytes, in order):
  the same in a checkout and an installed wheel of the same code."""
  import hashlib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(root)):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read() + b"\0")
  return "sha256:" + digest.hexdigest()[:16]


def write_provenance(workdir: str) -> str:
  """WORKDIR/provenance.json: `provenance()` of the process that trained there (for people
  and reports; a resumed run rewrites it, and keeps the earlier ones listed as `before`)."""
  path = os.path.join(workdir, PROVENANCE_FILE)
  now = provenance()
  before = []
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    before = saved.get("before", []) + [{k: v for k, v in saved.items() if k != "before"}]
    before = [b for b in before if b != now]
  with open(path + ".tmp", "w") as f:
    json.dump(dict(now, before=before), f, indent=1)
  os.replace(path + ".tmp", path)
  return path
