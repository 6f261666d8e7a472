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
