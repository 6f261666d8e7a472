"""Package names resolved on first use (PEP 562), so that importing one light submodule of a
package does not import its heavy siblings (the emulator, TensorFlow, rliable)."""
from __future__ import annotations

import importlib
from typing import Callable


def exports(package: str, names_by_module: dict[str, tuple[str, ...]]
            ) -> tuple[Callable, Callable, list[str]]:
  """(__getattr__, __dir__, __all__) for `package`, whose submodule m provides the names
  `names_by_module[m]`; every listed submodule is also reachable as an attribute."""
  module_of = {name: module for module, names in names_by_module.items() for name in names}

  def getattr_(name: str):
    if name in names_by_module:
      return importlib.import_module(f"{package}.{name}")
    if name in module_of:
      return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def dir_():
    return sorted(set(module_of) | set(names_by_module))

  return getattr_, dir_, sorted(module_of)
