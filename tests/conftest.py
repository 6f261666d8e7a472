"""Test set-up: CPU only, the jobs' global JAX settings, and the shared fixtures."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


from scaled_ql import app as _app, configs as _configs  # noqa: E402

_app.configure_jax()  # What every launch does (random numbers independent of sharding).


def load_config(path: str, arg: str | None = None):
  """`get_config(arg)` of config file `path` (scaled_ql.configs.load)."""
  return _configs.load(f"{path}:{arg}" if arg else path)


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
  return REPO


def run_module(repo, module: str, *args: str, timeout: int = 600):
  """`python -m module args...` in the repository on CPU; the CompletedProcess (text)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=timeout)


PRETRAIN_GAMES = ("pong", "breakout", "freeway")


@pytest.fixture(scope="session")
def pretrained(repo, tmp_path_factory):
  """A tiny pre-training run (3 games, 12 steps) and its exported artifact, shared by the
  export and fine-tuning tests: dict(data=dataset dir, workdir=..., artifact=...). The dataset
  also holds Space Invaders, a game the run never saw."""
  from scaled_ql import data  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("pretrained")
  for i, game in enumerate(PRETRAIN_GAMES + ("space_invaders",)):
    data.generate_run(str(root / "data"), game, 1, num_checkpoints=2, steps_per_checkpoint=150,
                      seed=i)
  workdir = root / "run"
  result = run_module(repo, "launch.pretrain", "--config=configs/pretrain.py:tiny",
                      f"--workdir={workdir}", f"--config.data.data_dir={root / 'data'}",
                      "--config.num_steps=12", "--config.data.pool_frames_per_game=400")
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_module(repo, "launch.export", f"--workdir={workdir}",
                      f"--out={root / 'backbone'}", "--formats=orbax")  # the open formats:
  # tests/test_export_formats.py exports its own.
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(data=str(root / "data"), workdir=str(workdir), artifact=str(root / "backbone"))
