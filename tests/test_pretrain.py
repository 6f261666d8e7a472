"""`launch.pretrain` end to end: resume after SIGKILL, corrupt newest checkpoint, bad input."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import load_config
from scaled_ql import checkpoints, data, learner, networks, parallel

GAMES = ("pong", "breakout", "freeway")
STEPS = 30


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  for i, game in enumerate(GAMES):
    data.generate_run(str(root), game, 1, num_checkpoints=2, steps_per_checkpoint=150, seed=i)
  return str(root)


def _cmd(workdir, dataset, *extra, steps=STEPS):
  return [sys.executable, "-m", "launch.pretrain", "--config=configs/pretrain.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={dataset}",
          f"--config.num_steps={steps}", "--config.checkpoint_every=10",
          "--config.data.pool_frames_per_game=400", "--config.data.refresh_every=3", *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


def _run(repo, cmd):
  result = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=600)
  return result


def _final_params(workdir, step=STEPS):
  """The train state's leaves at `step` (the newest checkpoint, which must be that step; or,
  for an earlier step, that step's checkpoint restored on its own)."""
  config = load_config("configs/pretrain.py", "tiny")
  model = networks.build_q_network(config.model, len(config.games))
  abstract = learner.abstract_train_state(model, learner.make_optimizer(config.optimizer))
  directory = os.path.join(workdir, "checkpoints")
  if step != STEPS:  # A copy holding only that step, so restore_latest picks it.
    import shutil  # pylint: disable=g-import-not-at-top
    only = os.path.join(workdir, f"only_{step}", "checkpoints")
    if not os.path.exists(only):
      shutil.copytree(os.path.join(directory, str(step)), os.path.join(only, str(step)))
    directory = only
  ckpt = checkpoints.Checkpointer(directory, save_interval_steps=10)
  restored = ckpt.restore_latest(abstract)
  ckpt.close()
  assert restored.step == step
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(restored.state)]


@pytest.fixture(scope="module")
def uninterrupted_run(repo, dataset, tmp_path_factory):
  """(workdir, final train-state leaves) of the 30-step 1-device run every test compares with."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = _run(repo, _cmd(workdir, dataset))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done: step 30" in result.stdout
  if parallel.classic_cpu_runtime_available():  # parallel.select_cpu_runtime, Nature-CNN.
    assert "XLA:CPU runtime: classic" in result.stdout
  assert (workdir / "metrics.jsonl").exists() and os.listdir(workdir / "tensorboard")
  return str(workdir), _final_params(str(workdir))


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
  return uninterrupted_run[1]


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(repo, dataset, tmp_path, uninterrupted):
  cmd = _cmd(tmp_path, dataset)
  proc = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  ckpt_dir = tmp_path / "checkpoints"
  while time.time() < deadline and proc.poll() is None:
    if (ckpt_dir / "10").exists():  # A committed checkpoint: kill in the middle of the run.
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (ckpt_dir / "30").exists()
  result = _run(repo, cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step" in result.stdout
  for a, b in zip(_final_params(str(tmp_path)), uninterrupted):
    np.testing.assert_array_equal(a, b)


def test_corrupt_newest_checkpoint_resumes_from_previous(repo, dataset, tmp_path, uninterrupted):
  first = _run(repo, _cmd(tmp_path, dataset, steps=20))
  assert first.returncode == 0, first.stderr[-3000:]
  for path in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"corrupt")
  result = _run(repo, _cmd(tmp_path, dataset))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checkpoint at step 20 is unreadable" in result.stdout
  assert "resumed from step 10" in result.stdout
  for a, b in zip(_final_params(str(tmp_path)), uninterrupted):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_a_sharded_4_device_run_resumes_on_1_device(repo, dataset, tmp_path,
                                                                  uninterrupted_run):
  """20 steps on a (data 2, model 2) mesh with parameters split over `model`, then the last
  10 on one device: the result equals the 1-device run up to float reassociation.

  The bound. Sums over 4 devices associate differently, so gradients differ at ~1e-7
  relative; Adam divides each element's update by its own gradient scale, so an element whose
  gradient is noise-level near zero can take a step of up to ~lr in either direction: no
  elementwise tolerance is safe (2 of 64 elements once differed by 1.1e-5 > atol 1e-5). What a
  right restore guarantees is that every leaf stays far closer to the 1-device run than the
  run moves in the 10 resumed steps; any wrong restore (another step's state, lost Adam
  moments, a re-initialised leaf, a mis-placed shard) is off by about that movement or more.
  So: per leaf, |resumed - uninterrupted| <= 2% of |uninterrupted(30) - uninterrupted(20)|
  (L2 norms; measured here at most ~0.011%, i.e. a 180x margin)."""
  workdir_1, uninterrupted = uninterrupted_run
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=4")
  first = subprocess.run(
      _cmd(tmp_path, dataset, "--config.parallel.model_axis_size=2",
           "--config.parallel.min_shard_size=1024", steps=20),
      cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "4 devices" in first.stdout
  result = _run(repo, _cmd(tmp_path, dataset))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 20" in result.stdout and "1 devices" in result.stdout
  at_20 = _final_params(workdir_1, step=20)
  for i, (a, b, b20) in enumerate(zip(_final_params(str(tmp_path)), uninterrupted, at_20)):
    if not np.issubdtype(b.dtype, np.floating):
      np.testing.assert_array_equal(a, b)  # Step counters, RNG keys: exact.
      continue
    moved = np.linalg.norm(b.astype(np.float64) - b20)
    off = np.linalg.norm(a.astype(np.float64) - b)
    assert off <= 0.02 * moved or off == 0.0, (i, b.shape, off, moved)


def test_two_processes_checkpoint_and_resume(repo, dataset, tmp_path):
  """launch/run_local_processes.sh: 2 processes (gloo) save multi-host checkpoints and resume.
  With a persistent compilation cache set (warm on the resume), which such runs turn off: with
  it the resume hung (JAX 0.12.1) or aborted on heap corruption (JAX 0.4.34)."""
  args = _cmd(tmp_path / "run", dataset, steps=20)[3:]
  env = dict(_env(), PYTHON=sys.executable, LOG_DIR=str(tmp_path), DEVICES_PER_PROCESS="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for steps in (20, 30):
    args = [a if not a.startswith("--config.num_steps=") else f"--config.num_steps={steps}"
            for a in args]
    result = subprocess.run(["bash", "launch/run_local_processes.sh", "2", *args], cwd=repo,
                            env=env, capture_output=True, text=True, timeout=300)
    logs = "".join((tmp_path / f"scaled_ql_process_{i}.log").read_text() for i in range(2))
    assert result.returncode == 0, logs[-3000:]
    assert f"done: step {steps}" in result.stdout
    assert "2 devices x 2 hosts" in result.stdout or steps == 30
    assert "persistent compilation cache is off" in logs
  assert "resumed from step 20" in result.stdout
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["10", "20", "30"]


def test_bad_input_fails_before_training(repo, dataset, tmp_path):
  cases = [
      (["--config=configs/pretrain.py:tiny_typo"], "unknown preset 'tiny_typo'"),
      (["--config.model.widht=2"], "unknown config field 'model.widht'"),
      (["--config.batch_size=2"], "fewer than the 3 games"),
      (["--config.data.data_dir=" + str(tmp_path / "nothing")], "does not exist"),
  ]
  for extra, message in cases:
    result = _run(repo, _cmd(tmp_path / "w", dataset) + extra)
    assert result.returncode != 0 and message in result.stdout + result.stderr, (extra, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # One clear line.
    assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")
  empty = tmp_path / "empty"
  empty.mkdir()
  result = _run(repo, _cmd(tmp_path / "w2", str(empty)))
  assert result.returncode != 0 and "pong" in (result.stdout + result.stderr).lower()
  # A workdir holding another architecture's checkpoint is refused before training.
  done = _run(repo, _cmd(tmp_path / "w3", dataset, steps=10))
  assert done.returncode == 0, done.stderr[-3000:]
  other = _run(repo, _cmd(tmp_path / "w3", dataset) + ["--config.model.feature_dim=48"])
  assert other.returncode != 0
  assert "another architecture (model.feature_dim: checkpoint 32 vs config 48)" in other.stderr
  assert other.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_corrupt_shard_met_mid_run_is_one_error_line_and_keeps_the_checkpoint(repo, tmp_path):
  """A damaged TFRecord shard found after training started (here: on resume, while the pools
  are rebuilt) ends the run with one `error:` line naming the file; the good checkpoint stays."""
  root = tmp_path / "data"
  for i, game in enumerate(GAMES):
    data.generate_run(str(root), game, 1, num_checkpoints=2, steps_per_checkpoint=150, seed=i)
  first = _run(repo, _cmd(tmp_path / "w", str(root), steps=10))
  assert first.returncode == 0, first.stderr[-3000:]
  shards = sorted(p for p in root.rglob("*.tfrecord*") if "Pong" in str(p))
  assert shards
  for shard in shards:  # Garble every record body of Pong's shards, keeping the file sizes.
    raw = bytearray(shard.read_bytes())
    raw[40:-40] = bytes(len(raw) - 80)
    shard.write_bytes(bytes(raw))
  result = _run(repo, _cmd(tmp_path / "w", str(root), steps=20))
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and ".tfrecord" in last and "Pong" in last, last
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["10"]
