"""The benchmark harness's accelerator check, as a dry run on CPU at tiny shapes, on what a bare
GPU image has: no TensorFlow, TFDS, Reverb, ale-py, ml_collections, tqdm (blocked here)."""
import json
import os
import subprocess
import sys

from test_imports import ABSENT_ON_GPU_IMAGE, BLOCKER


def test_accelerator_check_smoke_runs_on_a_bare_image(repo, tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  # sitecustomize runs in every Python process started with this PYTHONPATH, so the check's
  # per-model child processes see the same bare image.
  (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=ABSENT_ON_GPU_IMAGE))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{site}{os.pathsep}{repo}")
  out = tmp_path / "accelerator.json"
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks", "--what=accelerator", "--smoke",
       "--accel_models=paper_resnet34", f"--accel_json={out}"],
      cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "host cores of sampling keep it fed" in done.stdout
  result = json.loads(out.read_text())
  (model,) = result["models"]
  assert "error" not in model, model
  assert model["preset"] == "paper_resnet34" and model["dtype"] == "bfloat16"
  assert model["config_source"].startswith("a stand-in")  # ml_collections was blocked.
  assert 0 < model["mfu"] and model["compile_s"] > 0 and model["update_flops"] > 0
  assert model["xla_memory_estimate"] > 0
  assert all(rate > 0 for rate in model["policy_obs_per_s"].values())
  assert result["sampler"]["per_core"] > 0
