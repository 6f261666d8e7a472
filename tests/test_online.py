"""Online fine-tuning end to end: a real Reverb server process, actor processes on a real
emulator variant (Freeway mode 1, difficulty 1), the learner; losing an actor and the server."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_module

pytest.importorskip("reverb", reason="online fine-tuning needs Reverb (dm-reverb), on the pinned "
                    "stack only (Python 3.11; no Python 3.12 build)")


def _args(pretrained, workdir, *extra):
  return ["--config=configs/finetune.py:online_cpu", f"--backbone={pretrained['artifact']}",
          f"--workdir={workdir}", "--config.batch_size=32", "--config.online.min_replay_size=200",
          "--config.online.publish_every=10", "--config.log_every=20",
          "--config.checkpoint_every=100", *extra]


def _start(repo, args, log_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable, "-m", "launch.finetune", *args], cwd=repo, env=env,
                          stdout=log, stderr=subprocess.STDOUT), log


def _wait_for(predicate, timeout, what, process=None, log_path=None):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    if process is not None and process.poll() is not None:
      tail = open(log_path).read()[-3000:] if log_path else ""
      raise AssertionError(f"the run exited ({process.returncode}) while waiting for {what}:\n"
                           f"{tail}")
    time.sleep(0.5)
  raise AssertionError(f"timed out waiting for {what}")


def _progress(workdir, actor):
  path = os.path.join(workdir, "online", "launch_0", f"actor_{actor}.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie (exited, not yet reaped) counts as gone.
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split()[2] != "Z"
  except OSError:
    return False


def test_online_loop_runs_and_survives_losing_an_actor(repo, pretrained, tmp_path):
  workdir = str(tmp_path / "run")
  # With 200 offline Freeway transitions seeded into their own table, a quarter of each batch.
  process, log = _start(repo, _args(pretrained, workdir, "--config.online.env_steps=1600",
                                    "--config.online.offline_transitions=200",
                                    f"--config.data.data_dir={pretrained['data']}"),
                        tmp_path / "out.txt")
  try:
    # Actor 0 is acting (its transitions reach the server): kill it.
    _wait_for(lambda: any(p["env_steps"] > 0 for p in _progress(workdir, 0)), 240,
              "actor 0 to act", process, tmp_path / "out.txt")
    pid = int(open(os.path.join(workdir, "online", "launch_0", "actor_0.pid")).read())
    os.kill(pid, signal.SIGKILL)
    assert process.wait(400) == 0, (tmp_path / "out.txt").read_text()[-4000:]
  finally:
    if process.poll() is None:
      process.kill()
    log.close()
  out = (tmp_path / "out.txt").read_text()
  assert "seeded the 'offline' table with 200 transitions" in out
  assert "actor 0 died (exit code -9); restarting it (restart 1 of 3)" in out
  assert re.search(r"online: 1,6\d\d env steps", out), out[-2000:]
  steps = int(re.search(r"done: step (\d+)", out).group(1))
  # The learner sampled from what the actors inserted: at most env steps x samples_per_insert /
  # the 24 online rows of each batch of 32 (the limiter counts the online table's samples).
  assert 200 <= steps <= 1600 * 8 // 24 + 2, steps
  # Parameters reached the actors: they switched to ones the learner published after step 0.
  assert any(p["param_step"] > 0 for a in (0, 1) for p in _progress(workdir, a)), \
      [p["param_step"] for a in (0, 1) for p in _progress(workdir, a)]
  # The restarted actor played on from its progress and finished its share.
  final = _progress(workdir, 0)[-1]
  assert final["finished"] and final["restarts"] == 1 and final["env_steps"] >= 800
  # Nothing left running: the server and the actors are gone.
  server_pid = int(re.search(r"replay server at \S+ \(pid (\d+)", out).group(1))
  assert not _alive(server_pid)
  for path in glob.glob(os.path.join(workdir, "online", "launch_0", "actor_*.pid")):
    assert not _alive(int(open(path).read()))
  # The fine-tuned checkpoint is a normal one: launch.evaluate reads it.
  with open(os.path.join(workdir, "online.jsonl")) as f:
    assert [json.loads(line)["env_steps"] for line in f]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps)))


def test_losing_the_replay_server_stops_cleanly(repo, pretrained, tmp_path):
  workdir = str(tmp_path / "run")
  process, log = _start(repo, _args(pretrained, workdir, "--config.online.env_steps=100000",
                                    "--config.online.timeout_s=60"), tmp_path / "out.txt")
  try:
    out = lambda: (tmp_path / "out.txt").read_text()
    server_pid = int(_wait_for(lambda: re.search(r"replay server at \S+ \(pid (\d+)", out()),
                               240, "the server", process, tmp_path / "out.txt").group(1))
    _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), 240,
              "the learner to train", process, tmp_path / "out.txt")
    os.kill(server_pid, signal.SIGKILL)
    code = process.wait(120)
  finally:
    if process.poll() is None:
      process.kill()
    log.close()
  text = (tmp_path / "out.txt").read_text()
  assert code != 0
  assert "died; stopping" in text and "rerun the same command to resume" in text, text[-3000:]
  for path in glob.glob(os.path.join(workdir, "online", "launch_0", "actor_*.pid")):
    _wait_for(lambda p=path: not _alive(int(open(p).read())), 30, "actors to stop")


def test_bad_online_input(repo, pretrained, tmp_path):
  result = run_module(repo, "launch.finetune",
                      *_args(pretrained, tmp_path / "a", "--config.online.mode=99"))
  assert result.returncode != 0 and "freeway has no mode 99" in result.stderr
  assert "offers modes [0, 1, 2, 3, 4, 5, 6, 7]" in result.stderr
  result = run_module(repo, "launch.finetune", *_args(
      pretrained, tmp_path / "b", "--config.online.replay_address=localhost:1",
      "--config.online.timeout_s=5"))
  assert result.returncode != 0 and "localhost:1" in result.stderr
  assert "Reverb server" in result.stderr
  result = run_module(repo, "launch.finetune", *_args(
      pretrained, tmp_path / "c", "--config.online.min_replay_size=5000",
      "--config.online.env_steps=1000"))
  assert result.returncode != 0 and "exceeds the env-step budget" in result.stderr
  result = run_module(repo, "launch.finetune", *_args(
      pretrained, tmp_path / "d", "--config.online.offline_transitions=100",
      f"--config.data.data_dir={tmp_path / 'no_data'}"))
  assert result.returncode != 0 and "no_data" in result.stderr
  assert "replay server at" not in result.stdout  # Nothing was started.
  for d in "abcd":
    assert not os.path.exists(tmp_path / d / "checkpoints")


def _table_sizes(address):
  import reverb  # pylint: disable=g-import-not-at-top
  info = reverb.Client(address).server_info(10)
  return {name: int(info[name].current_size) for name in ("online", "offline") if name in info}


def test_a_killed_online_run_resumes_with_its_replay(repo, pretrained, tmp_path):
  """SIGKILL of the whole run (learner, server, actors) once the actors have spent a 600-step
  budget and a checkpoint was taken after that (the tables are then still: no limiter, so the
  learner trains on); the rerun starts the server from the replay checkpoint and holds exactly
  the transitions counted on the server before the kill, without seeding again."""
  workdir = str(tmp_path / "run")
  args = _args(pretrained, workdir, "--config.online.env_steps=600",
               "--config.online.samples_per_insert=0", "--config.num_steps=100000",
               "--config.checkpoint_every=50", "--config.online.offline_transitions=200",
               f"--config.data.data_dir={pretrained['data']}")
  out_path = tmp_path / "out.txt"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  log = open(out_path, "w")  # pylint: disable=consider-using-with
  process = subprocess.Popen([sys.executable, "-m", "launch.finetune", *args], cwd=repo, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out = lambda: out_path.read_text()
    address = _wait_for(lambda: re.search(r"replay server at (\S+)", out()), 240, "the server",
                        process, out_path).group(1)

    def actors_done():
      path = os.path.join(workdir, "online.jsonl")
      if not os.path.exists(path):
        return None
      with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
      return lines[-1]["step"] if lines and lines[-1]["env_steps"] >= 600 else None

    done_at = _wait_for(actors_done, 300, "the actors to spend their budget", process, out_path)
    ckpts = os.path.join(workdir, "checkpoints")
    _wait_for(lambda: any(int(s) > done_at + 50 for s in os.listdir(ckpts) if s.isdigit()), 240,
              "a checkpoint after the actors finished", process, out_path)
    before = _table_sizes(address)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    log.close()
  assert before == {"online": 600, "offline": 200}, before
  assert os.listdir(os.path.join(workdir, "replay")), "no replay checkpoint was written"

  log = open(tmp_path / "again.txt", "w")  # pylint: disable=consider-using-with
  again = subprocess.Popen([sys.executable, "-m", "launch.finetune", *args], cwd=repo, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    restored = _wait_for(lambda: re.search(r"replay restored: ([\d,]+) online transitions, "
                                           r"([\d,]+) offline", (tmp_path / "again.txt")
                                           .read_text()), 240, "the replay restored", again,
                         tmp_path / "again.txt")
  finally:
    os.killpg(again.pid, signal.SIGKILL)
    again.wait()
    log.close()
  text = (tmp_path / "again.txt").read_text()
  assert "resumed from step" in text and "seeded the" not in text, text[-3000:]
  assert (int(restored.group(1).replace(",", "")),
          int(restored.group(2).replace(",", ""))) == (before["online"], before["offline"])
