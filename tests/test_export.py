"""Backbone export (`launch.export`, `scaled_ql.load_backbone`): round trip and bad artifacts."""
import json
import os
import shutil

import numpy as np
import pytest

import scaled_ql
from conftest import PRETRAIN_GAMES, run_module
from scaled_ql import evaluation, export, games, networks


@pytest.fixture(scope="module")
def checkpoint(pretrained):
  return evaluation.load(pretrained["workdir"])


def _observations(n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 84, 84, 4), dtype=np.uint8)


def test_round_trip_gives_bit_identical_features_and_heads(pretrained, checkpoint):
  loaded = scaled_ql.load_backbone(pretrained["artifact"], with_heads=True)
  x = _observations()
  expected = checkpoint.model.apply({"params": checkpoint.params}, x, method="features")
  got = loaded.module.apply({"params": loaded.params}, x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(loaded.heads[name], np.asarray(checkpoint.params["head"][name]))
  # The loaded backbone + heads rebuild the whole Q-network's outputs.
  q_network = networks.build_q_network(loaded.model_config, len(loaded.games))
  full = dict(loaded.params, head=loaded.heads)
  game_id = np.arange(len(x), dtype=np.int32) % 3
  np.testing.assert_array_equal(
      np.asarray(q_network.apply({"params": full}, x, game_id).logits),
      np.asarray(checkpoint.model.apply({"params": checkpoint.params}, x, game_id).logits))


def test_description_names_games_actions_step_and_counts(pretrained, checkpoint):
  info = export.read_info(pretrained["artifact"])
  assert [g["name"] for g in info["games"]] == list(PRETRAIN_GAMES)
  assert [g["num_actions"] for g in info["games"]] == [
      games.get_game(g).num_actions for g in PRETRAIN_GAMES]
  assert info["step"] == 12 == checkpoint.step
  assert info["dataset"]["data_dir"] == pretrained["data"]
  backbone, heads = networks.split_params(checkpoint.params)
  assert info["num_backbone_params"] == networks.count_params(backbone)
  assert info["num_head_params"] == networks.count_params(heads)
  assert info["architecture"] == dict(encoder="nature", depth=101, width=1.0,
                                      spatial_features=4, feature_dim=32)


def test_without_heads(pretrained, tmp_path):
  result = run_module(os.path.dirname(os.path.dirname(__file__)), "launch.export",
                      f"--workdir={pretrained['workdir']}/checkpoints/10",
                      f"--out={tmp_path / 'b'}", "--noheads")
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = scaled_ql.load_backbone(str(tmp_path / "b"))
  assert loaded.heads is None and loaded.info["step"] == 10 and not loaded.info["has_heads"]
  with pytest.raises(export.ArtifactError, match="without heads"):
    scaled_ql.load_backbone(str(tmp_path / "b"), with_heads=True)


def _copy(pretrained, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(pretrained["artifact"], out)
  return out


def _edit_info(path, **changes):
  with open(path / export.INFO_FILE) as f:
    info = json.load(f)
  for key, value in changes.items():
    info[key] = value(info) if callable(value) else value
  with open(path / export.INFO_FILE, "w") as f:
    json.dump(info, f)


def test_bad_artifacts_name_what_is_wrong(pretrained, tmp_path):
  with pytest.raises(export.ArtifactError, match="does not exist"):
    scaled_ql.load_backbone(str(tmp_path / "missing"))
  with pytest.raises(export.ArtifactError, match="pre-training workdir: export it first"):
    scaled_ql.load_backbone(pretrained["workdir"])

  art = _copy(pretrained, tmp_path)
  (art / export.INFO_FILE).write_text("{not json")
  with pytest.raises(export.ArtifactError, match="not JSON"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)
  _edit_info(art, version=99)
  with pytest.raises(export.ArtifactError, match="version 99"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)  # Another architecture than the stored parameters.
  _edit_info(art, architecture=lambda i: dict(i["architecture"], feature_dim=64))
  with pytest.raises(export.ArtifactError, match="projection.*shape"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)  # Another action layout for a game.
  _edit_info(art, games=lambda i: [dict(g, num_actions=18) if g["name"] == "pong" else g
                                   for g in i["games"]])
  with pytest.raises(export.ArtifactError, match="pong was trained with 18 actions"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)  # Parameters that are not the exported ones.
  _edit_info(art, sha256="0" * 64)
  with pytest.raises(export.ArtifactError, match="SHA-256"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)  # Damaged parameter files.
  for root, _, files in os.walk(art / export.PARAMS_DIR):
    for name in files:
      path = os.path.join(root, name)
      if os.path.basename(root) == "d" and os.path.getsize(path) > 10_000:  # array data
        with open(path, "r+b") as f:
          f.seek(os.path.getsize(path) // 2)
          f.write(b"\x00garbage\xff" * 4)
  with pytest.raises(export.ArtifactError, match="cannot read the parameters|SHA-256"):
    scaled_ql.load_backbone(str(art))

  shutil.rmtree(art)
  art = _copy(pretrained, tmp_path)
  shutil.rmtree(art / export.PARAMS_DIR)
  with pytest.raises(export.ArtifactError, match="missing"):
    scaled_ql.load_backbone(str(art))


def test_export_refuses_to_overwrite_and_bad_workdir(pretrained, repo, tmp_path):
  result = run_module(repo, "launch.export", f"--workdir={pretrained['workdir']}",
                      f"--out={pretrained['artifact']}")
  assert result.returncode != 0 and "not empty" in result.stderr
  result = run_module(repo, "launch.export", f"--workdir={tmp_path / 'nothing'}",
                      f"--out={tmp_path / 'b'}")
  assert result.returncode != 0 and "does not exist" in result.stderr
  assert not (tmp_path / "b").exists()


def test_write_artifact_checks_parameters(tmp_path, pretrained, checkpoint):
  loaded = scaled_ql.load_backbone(pretrained["artifact"])
  wrong = dict(loaded.model_config, feature_dim=16)
  with pytest.raises(ValueError, match="shape"):
    export.write_artifact(str(tmp_path / "x"), model_config=wrong, params=checkpoint.params,
                          games=PRETRAIN_GAMES, loss_kind="c51", step=1)
  assert not os.path.exists(tmp_path / "x")
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".x")]  # no temporary left
