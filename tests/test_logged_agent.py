"""Logged-agent datasets (`launch.make_dataset --source=agent`): an online agent's training
run written as checkpoints, its returns per checkpoint, and a rerun after a kill that gives the
uninterrupted run's bytes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import load_config
from scaled_ql import data, errors
from scaled_ql.train import logged_agent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ("--source=agent", "--agent_config=configs/agent.py:tiny", "--games=boxing", "--runs=1",
        "--checkpoints_per_run=3", "--steps_per_checkpoint=300", "--seed=5")


def _make(data_dir, *extra, wait=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, "-m", "launch.make_dataset", *ARGS, f"--data_dir={data_dir}", *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _files(root):
  out = {}
  for base, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(base, name), "rb") as f:
        out[os.path.relpath(os.path.join(base, name), root)] = f.read()
  return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("agent")
  result = _make(data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, result.stdout


def test_the_agent_run_becomes_checkpoints_with_its_returns(uninterrupted):
  data_dir, out = uninterrupted
  assert "checkpoint  env steps  updates" in out
  episodes = list(data.read_episodes(str(data_dir), "boxing"))
  by_checkpoint = {}
  for e in episodes:
    by_checkpoint.setdefault(int(e["checkpoint_id"]), []).append(e)
  assert sorted(by_checkpoint) == [0, 1, 2]
  assert by_checkpoint[2][-1]["is_terminal"][-1] == False  # noqa: E712  (cut by the run's end)
  # 900 env steps over 2 emulators; episodes run on across checkpoints, so a checkpoint holds
  # the episodes that ended in it (the last one those the run's end cut).
  assert sum(len(e["action"]) - 1 for e in episodes) == 900
  root = os.path.join(data_dir, logged_agent.DATASET_NAME, "Boxing_run_1")
  with open(os.path.join(root, "agent_returns.json")) as f:
    table = json.load(f)
  assert [s["checkpoint"] for s in table["segments"]] == [0, 1, 2]
  assert [s["env_steps"] for s in table["segments"]] == [300, 600, 900]
  updates = [s["updates"] for s in table["segments"]]
  assert 0 < updates[0] < updates[1] < updates[2] <= 900 // 4  # update_every 4, after warm-up.
  # The staging folder is gone once the dataset is complete.
  assert not os.path.exists(logged_agent.staging_dir(str(data_dir), "boxing", 1))


def test_a_killed_agent_run_rerun_gives_the_uninterrupted_runs_bytes(uninterrupted, tmp_path):
  """Killed after its first checkpoint, midway through the game-run, and rerun: the run is
  played again from its start, and the dataset's files equal the uninterrupted run's."""
  data_dir, _ = uninterrupted
  process = _make(tmp_path, wait=False)
  progress = os.path.join(logged_agent.staging_dir(str(tmp_path), "boxing", 1),
                          logged_agent.PROGRESS_FILE)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(progress):  # Checkpoint 0 complete.
      with open(progress) as f:
        if len(json.load(f)["segments"]) == 1:
          break
    time.sleep(0.1)
  assert process.poll() is None, "the run ended before it could be killed"
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  result = _make(tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "an unfinished run of 1 of 3 checkpoints is played again from its start" in result.stdout
  rerun, whole = _files(tmp_path), _files(data_dir)
  assert rerun.keys() == whole.keys()
  for name in whole:
    assert rerun[name] == whole[name], name
  assert sum(".tfrecord-" in name for name in whole) == 3  # One file per checkpoint split.


def test_bad_agent_input_fails_before_play(tmp_path):
  config = load_config("configs/agent.py", "tiny")
  with pytest.raises(errors.InputError, match="unknown game 'boxingg'"):
    logged_agent.make_agent_datasets(config, str(tmp_path), "boxingg", checkpoints_per_run=2,
                                     steps_per_checkpoint=100)
  with pytest.raises(errors.InputError, match="less than one step"):
    logged_agent.make_agent_datasets(config, str(tmp_path), "boxing", checkpoints_per_run=2,
                                     steps_per_checkpoint=1)
  # A staging folder made with other settings is refused, not silently reused.
  stage = logged_agent.staging_dir(str(tmp_path), "boxing", 1)
  os.makedirs(stage)
  wanted = logged_agent.settings(config, "boxing", 1, 2, 100, seed=0)
  with open(os.path.join(stage, logged_agent.PROGRESS_FILE), "w") as f:
    json.dump(dict(settings=dict(wanted, seed=1), segments=[]), f)
  with pytest.raises(errors.InputError, match="other settings.*seed: kept 1 vs now 0"):
    logged_agent.make_agent_datasets(config, str(tmp_path), "boxing", checkpoints_per_run=2,
                                     steps_per_checkpoint=100)
  assert os.path.exists(os.path.join(stage, logged_agent.PROGRESS_FILE))  # Kept, not replaced.
