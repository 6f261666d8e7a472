"""Orbax checkpoints: round trip, other device counts, corrupt newest, non-finite refusal."""
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from scaled_ql import checkpoints, learner, networks, parallel


def _state(seed=0):
  config = load_config("configs/pretrain.py", "tiny")
  model = networks.build_q_network(config.model, len(config.games))
  optimizer = learner.make_optimizer(config.optimizer)
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(seed))
  return state, learner.abstract_train_state(model, optimizer)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree_util.tree_leaves(tree)])


def test_round_trip_with_sampler_state_and_meta(tmp_path):
  state, abstract = _state()
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=5)
  assert ckpt.restore_latest(abstract) is None
  assert not ckpt.save(3, state, {"pos": 1}, {"games": ["pong"]})  # not due
  assert ckpt.save(5, state, {"pos": [1, 2]}, {"games": ["pong"]})
  ckpt.wait()
  restored = ckpt.restore_latest(abstract)
  assert restored.step == 5 and restored.sampler == {"pos": [1, 2]}
  assert restored.meta == {"games": ["pong"]}
  np.testing.assert_array_equal(_flat(restored.state), _flat(state))
  mesh = parallel.make_mesh(1)
  sharded = ckpt.restore_latest(abstract, learner.state_shardings(mesh, abstract))
  np.testing.assert_array_equal(_flat(sharded.state), _flat(state))
  ckpt.close()


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  state, abstract = _state()
  other, _ = _state(seed=1)
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  ckpt.save(1, state, {}, {})
  ckpt.save(2, other, {}, {})
  ckpt.wait()
  # Corrupt every data file of the newest checkpoint's state.
  for path in pathlib.Path(tmp_path, "2", "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"\x00garbage")
  restored = ckpt.restore_latest(abstract)
  assert restored.step == 1
  np.testing.assert_array_equal(_flat(restored.state), _flat(state))
  assert "checkpoint at step 2 is unreadable" in capsys.readouterr().out
  assert any(name.startswith("2.unreadable-") for name in os.listdir(tmp_path))
  # The run can go on saving step 2 again.
  assert ckpt.save(2, other, {}, {})
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
  state, _ = _state()
  bad = state._replace(params=jax.tree_util.tree_map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan),
                                                     state.params))
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  with pytest.raises(FloatingPointError, match="refusing to checkpoint step 4"):
    ckpt.save(4, bad, {}, {})
  ckpt.wait()
  assert ckpt.all_steps() == []
  ckpt.close()


_SAVE_WHILE_TRAINING = """
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
from scaled_ql import app, checkpoints
app.configure_jax()
from test_checkpoints import _flat, _state
state, abstract = _state()
update = jax.jit(lambda s: s._replace(params=jax.tree_util.tree_map(lambda p: p + 1.0, s.params),
                                      step=s.step + 1), donate_argnums=0)
ckpt = checkpoints.Checkpointer(sys.argv[1], save_interval_steps=1)
bad = 0
for step in range(1, 6):
  saved = _flat(state)
  ckpt.save(step, state, {{}}, {{}})
  for _ in range(50):
    state = update(state)
  ckpt.wait()
  bad += not np.array_equal(_flat(ckpt.restore_latest(abstract).state), saved)
print("checkpoints that changed after their save:", bad)
"""


def test_a_saved_checkpoint_keeps_its_state_while_training_donates_it(tmp_path):
  """The loop saves asynchronously and goes on updating its state, donated to every update.
  With JAX 0.4.34 on CPU, an update read back from JAX's persistent compilation cache wrote into
  buffers the save still shared: a run's checkpoint 10 held step 11's parameters (or NaN), and
  runs resumed from it went astray. So the library turns that cache off there; where it stays
  on, the cache is warm in the second process, and every checkpoint must still be the state
  it was given."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = _SAVE_WHILE_TRAINING.format(tests=os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  for run in ("cold", "warm"):
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoints that changed after their save: 0" in done.stdout, (run, done.stdout)
  if jax.__version__.startswith("0.4."):
    assert "persistent compilation cache is off" in done.stderr
