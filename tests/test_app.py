"""The library's job plumbing: config files found from anywhere, game lists as users write
them, bad input as one line (and bugs with their traceback), heads matched by game whatever
the spelling, and the training loop's device reads."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import PRETRAIN_GAMES, load_config
from scaled_ql import configs, errors, games
from scaled_ql.train import finetuning, loop


def test_packaged_configs_load_from_any_directory_and_own_files_win(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No configs/ folder here.
  for spec in ("configs/pretrain.py:tiny", "pretrain.py:tiny", "scaled_ql/configs/pretrain.py:tiny",
               "pretrain:tiny"):
    assert configs.load(spec).preset == "tiny", spec
  assert configs.load("configs/finetune.py:online_cpu").finetune.mode == "online"
  own = tmp_path / "configs" / "pretrain.py"
  own.parent.mkdir()
  own.write_text("import ml_collections\n"
                 "def get_config(arg):\n  return ml_collections.ConfigDict({'preset': 'mine'})\n")
  assert configs.load("configs/pretrain.py:tiny").preset == "mine"
  with pytest.raises(FileNotFoundError, match="nothing.py"):
    configs.load("nothing.py:tiny")
  with pytest.raises(ValueError, match="unknown preset 'tiny_typo'"):
    configs.load("pretrain:tiny_typo")


def test_game_lists_as_users_write_them():
  assert games.canonical_names("pong,breakout") == ("pong", "breakout")
  assert games.canonical_names(("Pong, MsPacman", "freeway")) == ("pong", "ms_pacman", "freeway")
  assert games.canonical_names(["SpaceInvaders"]) == ("space_invaders",)
  with pytest.raises(ValueError, match="unknown game 'pongg'"):
    games.canonical_names("pongg,breakout")
  with pytest.raises(ValueError, match="listed twice"):
    games.canonical_names("pong,Pong")


def test_input_checks_turn_bad_input_into_input_error_only_inside():
  with pytest.raises(errors.InputError, match="bad value") as info:
    with errors.input_checks():
      raise ValueError("bad value")
  assert isinstance(info.value.__cause__, ValueError)
  with pytest.raises(KeyError):  # Not a kind of bad input: untouched.
    with errors.input_checks():
      raise KeyError("bug")


@pytest.mark.parametrize("raised,one_line", [("errors.InputError('no such game')", True),
                                             ("ValueError('a bug deep inside')", False)])
def test_apps_print_input_errors_as_one_line_and_bugs_with_a_traceback(tmp_path, raised,
                                                                      one_line):
  script = tmp_path / "app.py"
  script.write_text(f"from scaled_ql import app, errors\n"
                    f"def main(argv):\n  raise {raised}\n"
                    f"app.run(main)\n")
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  if one_line:
    assert result.stderr.strip().splitlines() == ["error: no such game"], result.stderr
  else:
    assert "Traceback" in result.stderr and "a bug deep inside" in result.stderr


def test_finetuning_matches_heads_by_game_whatever_the_spelling(pretrained):
  """--config.games=Pong reuses the pre-trained pong head exactly as `pong` does."""
  from scaled_ql import export  # pylint: disable=g-import-not-at-top
  loaded = export.load_backbone(pretrained["artifact"], with_heads=True)
  pong_row = list(loaded.games).index("pong")
  # What --config.games=... gives: ('pong',), ('Pong',), ('Pong,space_invaders',).
  for spelling in ("pong", "Pong", "Pong,space_invaders"):
    config = load_config("configs/finetune.py", "offline_cpu")
    with config.unlocked():
      config.games = (spelling,)
    info = finetuning.check(config, pretrained["artifact"])
    initial, meta = finetuning.prepare(config, pretrained["artifact"], info)
    assert config.games[0] == "pong" and meta["finetune"]["heads_from_backbone"] == ["pong"]
    head = initial["head"]
    assert list(head["rows"]) == [0]
    np.testing.assert_array_equal(head["kernel"][0], loaded.heads["kernel"][pong_row])


def test_the_loop_reads_the_device_only_at_log_points_and_checkpoints(pretrained, tmp_path):
  """20 steps, metrics logged every 5 and checkpointed every 10: 4 device reads (the
  checkpoint steps 10 and 20 reuse their log points' reads), not one per step; the update
  itself runs under a device-to-host transfer guard, so no hidden per-step read exists."""
  config = load_config("configs/pretrain.py", "tiny")
  with config.unlocked():
    config.data.data_dir = pretrained["data"]
    config.data.pool_frames_per_game = 400
    config.num_steps, config.log_every, config.checkpoint_every = 20, 5, 10
    config.games = (",".join(PRETRAIN_GAMES),)  # As --config.games=pong,breakout,freeway.
  result = loop.train(config, str(tmp_path / "run"))
  assert result.step == 20 and result.host_syncs == 4, result
  assert np.isfinite(result.last_metrics["loss"])
  assert config.games == PRETRAIN_GAMES  # Canonical names.
  with pytest.raises(errors.InputError, match="log_every"):
    with config.unlocked():
      config.log_every = 0
    loop.train(config, str(tmp_path / "bad"))


def test_checkpoints_from_before_the_feature_scale_are_read_unscaled():
  """Metadata without model.feature_scale (written before the heads saw sqrt(D) x the
  features) describes the unscaled network; a new config's 0 means sqrt(D)."""
  from scaled_ql import networks, run_meta  # pylint: disable=g-import-not-at-top
  config = load_config("configs/pretrain.py", "tiny")
  meta = run_meta.build(config)
  assert meta["model"]["feature_scale"] == 0.0
  model = networks.build_q_network(run_meta.describe(meta).model, 3)
  assert model.head_scale() == pytest.approx(config.model.feature_dim ** 0.5)
  old = dict(meta, model={k: v for k, v in meta["model"].items() if k != "feature_scale"})
  old.pop("v_range")
  described = run_meta.describe(old, {"loss.v_min": -5.0, "loss.v_max": 5.0})
  assert networks.build_q_network(described.model, 3).head_scale() == 1.0
  assert (described.v_min, described.v_max) == (-5.0, 5.0)
  with pytest.raises(ValueError, match="another architecture.*feature_scale"):
    run_meta.check_resume_compatible(old, meta, "w")
