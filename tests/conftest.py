"""Test set-up: CPU only, and a loader for the config files (they are not a package)."""
import importlib.util
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(path: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
  return REPO
