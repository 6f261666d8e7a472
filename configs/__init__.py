"""The config files (`get_config(preset)`, ml_collections) and the one way to load them.

The files live in the checkout's top-level `configs/` folder, which setup.py installs as the
package `scaled_ql.configs` (package_dir): one copy, imported as `scaled_ql.configs.pretrain`
from an editable install and from a wheel alike.

A config is named `FILE:PRESET`, e.g. `configs/pretrain.py:demo`. FILE is a path to a config
file; when no such file exists it names one of the packaged files, by its base name
(`pretrain.py`, `configs/pretrain.py`, `scaled_ql/configs/pretrain.py` and `pretrain` are all
the packaged pretrain.py), so the same `--config=` works in a checkout and from an installed
wheel, in any directory. Your own file (a path that exists) always wins.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

PACKAGED = ("pretrain", "finetune", "agent")
_HERE = os.path.dirname(os.path.abspath(__file__))


def resolve(path: str) -> str:
  """The absolute path of config file `path` (see the module docstring)."""
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    return os.path.abspath(expanded)
  stem = os.path.splitext(os.path.basename(expanded))[0]
  if stem in PACKAGED:
    return os.path.join(_HERE, f"{stem}.py")
  raise FileNotFoundError(f"config file {path!r} not found (and not one of the packaged configs "
                          f"{', '.join(f'configs/{p}.py' for p in PACKAGED)}).")


def split_spec(spec: str) -> tuple[str, str | None]:
  """'FILE:PRESET' -> (FILE, PRESET or None)."""
  path, _, preset = spec.partition(":")
  return path, preset or None


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'FILE[:PRESET]': `get_config(PRESET)` of the resolved file."""
  path, preset = split_spec(spec)
  full = resolve(path)
  module_spec = importlib.util.spec_from_file_location(
      f"scaled_ql_config_{os.path.splitext(os.path.basename(full))[0]}", full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset)
