"""`make demo`'s program end to end at its smallest: emulator data, training, the loss curve."""
import json
import math
import subprocess
import sys


def test_demo_runs_end_to_end(repo, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.demo", f"--workdir={tmp_path}",
       "--env_steps_per_game=120", "--train_steps=4"],
      cwd=repo, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "loss curve" in result.stdout
  for game in ("pong", "breakout", "freeway"):
    assert game in result.stdout
  curve = json.loads((tmp_path / "loss_curve.json").read_text())
  assert [c["step"] for c in curve] == [1, 4]
  assert all(math.isfinite(c[k]) for c in curve for k in ("loss", "td_loss", "cql_penalty"))
