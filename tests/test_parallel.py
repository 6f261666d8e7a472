"""Multi-host data parallelism for real: 2 processes x 2 CPU devices (gloo) vs 1 process."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from scaled_ql import parallel

STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_workers(repo, out, num_processes, devices_per_process, model_axis):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(repo / "tests" / "multihost_worker.py"), str(out), str(i),
       str(num_processes), str(port), str(STEPS), str(model_axis), "2"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return np.load(out)


@pytest.fixture(scope="module")
def single_process(repo, tmp_path_factory):
  return _run_workers(repo, tmp_path_factory.mktemp("single") / "out.npz", 1, 1, 1)


@pytest.mark.parametrize("model_axis", [1, 2])
def test_two_hosts_match_one_process_with_the_same_global_batch(repo, tmp_path, single_process,
                                                                model_axis):
  multi = _run_workers(repo, tmp_path / "out.npz", 2, 2, model_axis)
  assert int(multi["devices"]) == 4 and int(single_process["devices"]) == 1
  np.testing.assert_allclose(multi["losses"], single_process["losses"], rtol=1e-5)
  assert not np.allclose(single_process["losses"][0], single_process["losses"][-1])  # it learned
  names = [k for k in single_process.files if k not in ("losses", "devices")]
  assert "head/kernel" in names
  for name in names:
    np.testing.assert_allclose(multi[name], single_process[name], rtol=1e-4, atol=1e-6,
                               err_msg=name)


def test_xla_flags_for_gives_nature_the_classic_cpu_runtime_and_keeps_a_users_choice():
  if not parallel.classic_cpu_runtime_available():
    # Newer XLA has one CPU runtime: flags are left as they are.
    for encoder in ("nature", "impala", "resnet"):
      assert parallel.xla_flags_for(encoder, "--a=1") == "--a=1"
    return
  classic = "--xla_cpu_use_thunk_runtime=false"
  assert parallel.xla_flags_for("nature") == classic
  assert parallel.xla_flags_for("nature", "--xla_force_host_platform_device_count=2") == (
      f"--xla_force_host_platform_device_count=2 {classic}")
  assert parallel.xla_flags_for("impala") == classic
  # Strided flax convolutions, whose input gradients the classic runtime aborts on.
  assert parallel.xla_flags_for("resnet", "--a=1") == "--a=1"
  assert parallel.xla_flags_for("nature", "--xla_cpu_use_thunk_runtime=true") == (
      "--xla_cpu_use_thunk_runtime=true")


def test_select_cpu_runtime_sets_xla_flags_only_before_jax_starts(repo):
  script = """
import os, jax.numpy as jnp
from scaled_ql import parallel
print(parallel.select_cpu_runtime("resnet"), "|", os.environ.get("XLA_FLAGS", ""))
print(parallel.select_cpu_runtime("nature"), "|", os.environ["XLA_FLAGS"])
print(parallel.select_cpu_runtime("nature"), "|", os.environ["XLA_FLAGS"])
float(jnp.ones(3).sum())
"""
  late = """
import os, jax.numpy as jnp
from scaled_ql import parallel
float(jnp.ones(3).sum())
print(parallel.select_cpu_runtime("nature"), "|", os.environ.get("XLA_FLAGS", ""))
"""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
  run = lambda code: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                    text=True, timeout=120, check=True).stdout.splitlines()
  if not parallel.classic_cpu_runtime_available():
    assert run(late) == ["JAX's default (this XLA has no classic runtime) | "]
    return
  assert run(script) == [
      "thunk (JAX's default) | ",
      "classic (faster for the nature encoder; --xla_cpu_use_thunk_runtime=false) | "
      "--xla_cpu_use_thunk_runtime=false",
      "as set in XLA_FLAGS | --xla_cpu_use_thunk_runtime=false"]
  assert run(late) == ["thunk (JAX had started before the runtime could be chosen) | "]


def test_param_sharding_splits_large_arrays_over_the_model_axis():
  mesh = parallel.make_mesh(1)
  assert parallel.param_sharding(mesh, (4096, 4096)).spec == jax.sharding.PartitionSpec()
  devices = np.asarray(jax.devices() * 2)[:2].reshape(1, 2) if jax.device_count() == 1 else None
  if devices is not None:
    mesh2 = jax.sharding.Mesh(devices, (parallel.DATA, parallel.MODEL))
    spec = parallel.param_sharding(mesh2, (40, 128, 918), min_size=1).spec
    assert spec == jax.sharding.PartitionSpec(None, None, parallel.MODEL)  # largest even dim
    spec = parallel.param_sharding(mesh2, (40, 128, 917), min_size=1).spec
    assert spec == jax.sharding.PartitionSpec(None, parallel.MODEL, None)
    assert parallel.param_sharding(mesh2, (3, 5), min_size=1).spec == jax.sharding.PartitionSpec()


def test_bad_parallel_settings_are_named():
  with pytest.raises(ValueError, match="model_axis_size=3"):
    parallel.make_mesh(3)
  mesh = parallel.make_mesh(1)
  with pytest.raises(ValueError, match="does not divide over 4 hosts"):
    parallel.check_batch_divides(10, mesh, num_processes=4, num_games=2)
  with pytest.raises(ValueError, match="fewer than the 40 games"):
    parallel.check_batch_divides(64, mesh, num_processes=2, num_games=40)
  with pytest.raises(ValueError, match="game_weights must hold 3"):
    parallel.split_counts(12, 3, [1, 2])


def test_split_counts_gives_the_remainder_to_the_first_games():
  assert parallel.split_counts(512, 40) == (13,) * 32 + (12,) * 8
  assert parallel.split_counts(24, 3) == (8, 8, 8)
  assert parallel.split_counts(10, 2, [1, 4]) == (2, 8)
  assert sum(parallel.split_counts(97, 7, [1, 2, 3, 4, 5, 6, 7])) == 97
  with pytest.raises(ValueError, match="needs all of coordinator_address"):
    parallel.initialize(coordinator_address="localhost:1234")
