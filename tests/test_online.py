"""Online fine-tuning end to end on a real emulator variant (Freeway mode 1, difficulty 1), with
both replay backends: local (one process, every stack: a run killed midway resumes with its
replay) and Reverb (a real server process and actor processes, the pinned stack only: losing an
actor and the server, resume with the server's replay checkpoint); bad input."""
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

from scaled_ql.train import finetuning
from scaled_ql.train.online import reverb_installed

needs_reverb = pytest.mark.skipif(
    not reverb_installed(), reason="the Reverb backend needs dm-reverb, on the pinned stack only "
    "(Python 3.11; no Python 3.12 build)")


def _args(pretrained, workdir, *extra, backend="reverb"):
  return ["--config=configs/finetune.py:online_cpu", f"--backbone={pretrained['artifact']}",
          f"--workdir={workdir}", "--config.batch_size=32", "--config.online.min_replay_size=200",
          "--config.online.publish_every=10", "--config.log_every=20",
          "--config.checkpoint_every=100", f"--config.online.replay={backend}", *extra]


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


@needs_reverb
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
  counts = re.search(r"replay: ([\d,]+) transitions inserted into 'online', ([\d,]+) sampled "
                     r"\([\d.]+ per insert; limit 8\)", out)
  assert counts, out[-2000:]
  inserted, sampled = (int(c.replace(",", "")) for c in counts.groups())
  # The actors inserted about their env steps: the restarted actor redid what it had done since
  # its last progress line (inserted twice), and what the killed one still held in its writer
  # never arrived (seen: 1,598 and 1,710 for 1,600). The learner trained on what it sampled:
  # 24 online rows in each batch of 32. Sampling stayed within the limiter's 8 per insert
  # beyond the first 200 (min_replay_size), plus its error buffer of 16.
  assert 1600 - 200 <= inserted <= 1600 + 800, inserted
  assert 200 * 24 <= steps * 24 <= sampled <= (inserted - 200) * 8 + 16, (steps, sampled, inserted)
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


@needs_reverb
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


@needs_reverb
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


@needs_reverb
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

  # The workdir holds Reverb's replay: a local-backend rerun is refused before any work.
  result = run_module(repo, "launch.finetune", *_args(pretrained, workdir, backend="local"))
  assert result.returncode != 0
  assert "replay holds a replay checkpoint of the 'reverb' backend" in result.stderr


# -- The local backend (every stack). ---------------------------------------------------------

def _local_args(pretrained, workdir, *extra):
  """Breakout mode 12 difficulty 1 (short episodes, so returns are recorded in a short run)."""
  return _args(pretrained, workdir, "--config.online.game=breakout", "--config.games=breakout",
               "--config.online.mode=12", "--config.online.difficulty=1", *extra,
               backend="local")


def _transitions_in(path):
  """Online transitions in a local replay checkpoint (.npz), read from its episode tables."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as z:
    return sum(int(z[k][:, 2].sum()) for k in z.files
               if k.startswith("online_") and k.endswith("/episodes"))


def test_local_online_run_records_returns_and_env_steps(repo, pretrained, tmp_path):
  workdir = tmp_path / "run"
  result = run_module(repo, "launch.finetune", *_local_args(
      pretrained, workdir, "--config.online.env_steps=1200", "--config.online.epsilon=0.1",
      "--config.online.epsilon_decay_steps=600", "--config.online.offline_transitions=100",
      f"--config.data.data_dir={pretrained['data']}"))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "online (local replay) on breakout (mode 12, difficulty 1)" in out, out[-3000:]
  assert "seeded the 'offline' table with 100 transitions" in out
  assert "online: 1,200 env steps" in out and "replay server at" not in out
  with open(workdir / "online.jsonl") as f:
    assert [json.loads(line) for line in f][-1]["env_steps"] == 1200
  returns = finetuning.read_online_returns(str(workdir))
  assert returns, out[-2000:]
  steps = [s for s, _ in returns]
  assert steps == sorted(steps) and 0 < steps[0] and steps[-1] <= 1200
  assert all(s % 4 == 0 for s in steps)  # 4 emulators step together.
  config = json.loads((workdir / "config.json").read_text())
  assert config["online.replay"] == "local"
  # The learner sampled no more than the ratio allows: 8 x (inserted - 200) + 16, 24 online
  # rows per batch of 32 (a quarter offline).
  steps_trained = int(re.search(r"done: step (\d+)", out).group(1))
  assert 100 <= steps_trained <= (8 * (1200 - 200) + 16) // 24 + 1, steps_trained


def test_a_killed_local_run_resumes_with_its_replay(repo, pretrained, tmp_path):
  """SIGKILL of a local-backend run midway (after its checkpoint at step >= 150, 600 of 2,000
  env steps: no limiter, one env step of the 4 emulators per update); the rerun restores that
  checkpoint's replay (the same transition count as the file it saved), goes on from its env
  steps to the budget, and keeps the returns log in env-step order."""
  workdir = str(tmp_path / "run")
  args = _local_args(pretrained, workdir, "--config.online.env_steps=2000",
                     "--config.online.samples_per_insert=0", "--config.online.epsilon=0.1",
                     "--config.online.epsilon_decay_steps=1000", "--config.num_steps=650",
                     "--config.checkpoint_every=50")
  out_path = tmp_path / "out.txt"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  log = open(out_path, "w")  # pylint: disable=consider-using-with
  process = subprocess.Popen([sys.executable, "-m", "launch.finetune", *args], cwd=repo, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  ckpts = os.path.join(workdir, "checkpoints")
  try:
    _wait_for(lambda: os.path.isdir(ckpts) and any(
        s.isdigit() and int(s) >= 150 for s in os.listdir(ckpts)), 400,
              "a checkpoint at step 150", process, out_path)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    log.close()
  assert "done: step" not in out_path.read_text()  # Killed midway, not finished.
  step = max(int(s) for s in os.listdir(ckpts) if s.isdigit())
  before = _transitions_in(os.path.join(workdir, "replay_local", f"replay_{step:09d}.npz"))
  assert before > 0

  again = run_module(repo, "launch.finetune", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  text = again.stdout
  assert f"resumed from step {step}" in text and "seeded the" not in text, text[-3000:]
  restored = re.search(r"replay restored: ([\d,]+) online transitions", text)
  assert restored and int(restored.group(1).replace(",", "")) == before, text[-3000:]
  # It goes on from the checkpoint's env steps (one step of the 4 emulators per update, after
  # those that filled the replay to min_replay_size), not from 0.
  start = re.search(r"env steps ([\d,]+) -> 2,000", text)
  assert start and 4 * step <= int(start.group(1).replace(",", "")) < 2000, text[-3000:]
  assert "online: 2,000 env steps" in text
  steps = [s for s, _ in finetuning.read_online_returns(workdir)]
  assert steps and steps == sorted(steps) and steps[-1] <= 2000

  # The workdir holds the local backend's replay: a Reverb rerun is refused before any work.
  result = run_module(repo, "launch.finetune", *_args(pretrained, workdir, backend="reverb"))
  assert result.returncode != 0
  assert ("replay_local holds a replay checkpoint of the 'local' backend" in result.stderr
          if reverb_installed() else "needs dm-reverb" in result.stderr), result.stderr[-2000:]


def test_bad_backend_input(repo, pretrained, tmp_path):
  """Refused before JAX starts (start-up prints the XLA:CPU runtime) or the backbone loads."""
  result = run_module(repo, "launch.finetune", *_args(pretrained, tmp_path / "a", backend="foo"))
  assert result.returncode != 0 and "config.online.replay='foo'" in result.stderr
  assert "XLA:CPU runtime" not in result.stdout
  result = run_module(repo, "launch.finetune", *_args(
      pretrained, tmp_path / "b", "--config.online.replay_address=localhost:1", backend="local"))
  assert result.returncode != 0 and "set config.online.replay=reverb" in result.stderr
  assert "XLA:CPU runtime" not in result.stdout
  result = run_module(repo, "launch.finetune", *_args(
      pretrained, tmp_path / "d", "--config.online.mode=99", backend="local"))
  assert result.returncode != 0 and "freeway has no mode 99" in result.stderr
  assert "XLA:CPU runtime" not in result.stdout
  if not reverb_installed():
    result = run_module(repo, "launch.finetune", *_args(pretrained, tmp_path / "c"))
    assert result.returncode != 0 and "needs dm-reverb" in result.stderr, result.stderr[-2000:]
    assert "pinned stack" in result.stderr and "XLA:CPU runtime" not in result.stdout
  for d in "abcd":
    assert not os.path.exists(tmp_path / d / "checkpoints")
