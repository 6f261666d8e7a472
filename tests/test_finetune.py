"""Offline fine-tuning (`launch.finetune`) from an exported backbone, and its building blocks."""
import os

import jax
import numpy as np
import pytest

import scaled_ql
from conftest import load_config, run_module
from scaled_ql import evaluation, export, games, learner, networks
from scaled_ql.data.batch import Batch


def _tiny_model(num_games=2):
  return networks.build_q_network(dict(encoder="nature", spatial_features=4, feature_dim=32,
                                       num_atoms=51), num_games)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_initial_params_replace_backbone_and_chosen_head_rows():
  model = _tiny_model(3)
  optimizer = learner.make_optimizer(load_config("configs/pretrain.py", "tiny").optimizer)
  source = networks.init_params(model, jax.random.PRNGKey(7))
  backbone, head = networks.split_params(source)
  initial = dict(backbone, head=dict(rows=np.asarray([2], np.int32),
                                     kernel=np.asarray(head["kernel"][:1]),
                                     bias=np.asarray(head["bias"][:1]) + 1.0))
  state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0),
                                     initial_params=initial)
  fresh = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0))
  for name in backbone:
    for a, b in zip(_leaves(state.params[name]), _leaves(backbone[name])):
      np.testing.assert_array_equal(a, b)
  kernel = np.asarray(state.params["head"]["kernel"])
  np.testing.assert_array_equal(kernel[2], np.asarray(head["kernel"][0]))
  np.testing.assert_array_equal(kernel[:2], np.asarray(fresh.params["head"]["kernel"])[:2])
  np.testing.assert_array_equal(np.asarray(state.params["head"]["bias"])[2],
                                np.asarray(head["bias"][0]) + 1.0)
  for a, b in zip(_leaves(state.target_params), _leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="projection.*shape"):
    learner.create_train_state(networks.build_q_network(dict(
        encoder="nature", spatial_features=4, feature_dim=16, num_atoms=51), 3), optimizer,
                               jax.random.PRNGKey(0), initial_params=initial)


def test_frozen_backbone_updates_only_the_heads():
  config = load_config("configs/pretrain.py", "tiny")
  model = _tiny_model(2)
  names = ("pong", "breakout")
  rng = np.random.default_rng(0)
  frames = lambda: rng.integers(0, 256, (8, 84, 84, 4), dtype=np.uint8)
  batch = Batch(observation=frames(), action=np.zeros(8, np.int32),
                reward=rng.uniform(-1, 1, 8).astype(np.float32),
                discount=np.full(8, 0.97, np.float32), next_observation=frames(),
                game_id=np.repeat(np.arange(2, dtype=np.int32), 4))
  for heads_only in (True, False):
    optimizer = learner.make_optimizer(config.optimizer, heads_only=heads_only)
    state = learner.create_train_state(model, optimizer, jax.random.PRNGKey(0))
    before = jax.tree_util.tree_map(np.asarray, state.params)
    update = jax.jit(learner.make_update_fn(model, optimizer, config.loss,
                                            games.legal_action_mask(names), 100, 4))
    for _ in range(3):
      state, metrics = update(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    for name in before:
      same = all(np.array_equal(a, b) for a, b in zip(_leaves(state.params[name]),
                                                      _leaves(before[name])))
      assert same == (heads_only and name != "head"), (heads_only, name)


def _finetune(repo, pretrained, workdir, *extra, steps=12):
  return run_module(repo, "launch.finetune", "--config=configs/finetune.py:offline_cpu",
                    f"--backbone={pretrained['artifact']}", f"--workdir={workdir}",
                    f"--config.data.data_dir={pretrained['data']}", f"--config.num_steps={steps}",
                    "--config.batch_size=16", "--config.checkpoint_every=6",
                    "--config.data.pool_frames_per_game=400", *extra)


def _backbone_equal(params, artifact_params) -> bool:
  backbone, _ = networks.split_params(params)
  return all(np.array_equal(a, b) for a, b in zip(_leaves(backbone), _leaves(artifact_params)))


def test_offline_finetune_on_an_unseen_game(repo, pretrained, tmp_path):
  artifact = scaled_ql.load_backbone(pretrained["artifact"], with_heads=True)
  assert "space_invaders" not in artifact.games

  # Frozen backbone: the unseen game's new head learns, the backbone stays the exported one.
  result = _finetune(repo, pretrained, tmp_path / "frozen", "--config.finetune.freeze_backbone")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pre-trained backbone" in result.stdout and "backbone frozen" in result.stdout
  assert "done: step 12" in result.stdout
  frozen = evaluation.load(str(tmp_path / "frozen"))
  assert frozen.games == ("space_invaders",) and frozen.step == 12
  assert _backbone_equal(frozen.params, artifact.params)

  # Trainable backbone, and a game the backbone has a head for: with lr 0 nothing moves, so
  # the run's parameters are its initialisation: the exported backbone and pong's head.
  result = _finetune(repo, pretrained, tmp_path / "lr0", "--config.optimizer.learning_rate=0",
                     "--config.games=('pong','space_invaders')")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "heads: from the backbone for pong, new for space_invaders" in result.stdout
  lr0 = evaluation.load(str(tmp_path / "lr0"))
  assert _backbone_equal(lr0.params, artifact.params)
  np.testing.assert_array_equal(np.asarray(lr0.params["head"]["kernel"][0]),
                                artifact.heads["kernel"][artifact.games.index("pong")])

  # The scratch baseline: same architecture, its own random initialisation.
  result = _finetune(repo, pretrained, tmp_path / "scratch", "--config.finetune.init=scratch",
                     "--config.optimizer.learning_rate=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "from scratch" in result.stdout
  scratch = evaluation.load(str(tmp_path / "scratch"))
  assert networks.param_shapes(scratch.model) == networks.param_shapes(frozen.model)
  assert not _backbone_equal(scratch.params, artifact.params)

  # The same workdir with the other initialisation is refused, before training.
  result = _finetune(repo, pretrained, tmp_path / "scratch")
  assert result.returncode != 0
  assert "holds a run with finetune" in result.stderr


def test_bad_input_fails_before_training(repo, pretrained, tmp_path):
  result = run_module(repo, "launch.finetune", "--config=configs/finetune.py:offline_cpu",
                      f"--workdir={tmp_path / 'a'}", f"--config.data.data_dir={pretrained['data']}")
  assert result.returncode != 0 and "no backbone" in result.stderr
  result = _finetune(repo, pretrained, tmp_path / "b", "--config.finetune.init=warm")
  assert result.returncode != 0 and "config.finetune.init='warm'" in result.stderr
  assert "Traceback" not in result.stderr
  result = run_module(repo, "launch.finetune", "--config=configs/finetune.py:offline_cpu",
                      f"--backbone={pretrained['workdir']}", f"--workdir={tmp_path / 'c'}")
  assert result.returncode != 0 and "export it first" in result.stderr
  result = run_module(repo, "launch.finetune", "--config=configs/finetune.py:offline_nope",
                      f"--workdir={tmp_path / 'd'}")
  assert result.returncode != 0 and "unknown preset 'offline_nope'" in result.stderr
  for d in "abcd":
    assert not os.path.exists(tmp_path / d / "checkpoints")


def test_artifact_of_another_architecture_is_refused_for_an_existing_run(repo, pretrained,
                                                                          tmp_path):
  result = _finetune(repo, pretrained, tmp_path / "run", steps=6)
  assert result.returncode == 0, result.stderr[-3000:]
  model_config = dict(encoder="nature", depth=101, width=1.0, spatial_features=4,
                      feature_dim=48, num_atoms=51)
  model = networks.build_q_network(model_config, 3)
  export.write_artifact(str(tmp_path / "wide"), model_config=model_config,
                        params=networks.init_params(model, jax.random.PRNGKey(3)),
                        games=("pong", "breakout", "freeway"), loss_kind="c51", step=0)
  other = dict(pretrained, artifact=str(tmp_path / "wide"))
  result = _finetune(repo, other, tmp_path / "run", steps=12)
  assert result.returncode != 0
  assert "another architecture (model.feature_dim: checkpoint 32 vs config 48)" in result.stderr
  assert evaluation.load(str(tmp_path / "run")).step == 6  # Nothing was trained or written.
