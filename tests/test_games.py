"""The game table against the ROMs that ale-py ships, and score normalization."""
import ale_py
import numpy as np
import pytest
from ale_py import roms

from scaled_ql import games


def test_minimal_action_sets_match_the_roms():
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  for game in games.GAMES.values():
    ale.loadROM(roms.get_rom_path(game.name))
    assert tuple(a.value for a in ale.getMinimalActionSet()) == game.minimal_actions, game.name


def test_paper_split():
  assert len(games.TRAIN_GAMES) == 40
  assert set(games.HELDOUT_GAMES) == {"alien", "ms_pacman", "pong", "space_invaders", "star_gunner"}
  assert not set(games.TRAIN_GAMES) & set(games.HELDOUT_GAMES)
  assert "road_runner" not in games.TRAIN_GAMES
  assert all(games.get_game(g).in_rlu_atari for g in games.TRAIN_GAMES + games.HELDOUT_GAMES)


def test_legal_action_mask_is_a_prefix_of_the_action_count():
  mask = games.legal_action_mask(["freeway", "pong", "alien"])
  assert mask.shape == (3, 18)
  np.testing.assert_array_equal(mask.sum(1), [3, 6, 18])
  assert mask[0, :3].all() and not mask[0, 3:].any()


def test_human_normalized_score_hand_computed():
  # Pong: random -20.7, human 14.6.
  assert games.human_normalized_score("pong", 14.6) == pytest.approx(1.0)
  assert games.human_normalized_score("pong", -20.7) == pytest.approx(0.0)
  assert games.human_normalized_score("Pong", -3.05) == pytest.approx(0.5)
  assert games.human_normalized_score("breakout", 30.5) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="'carnival' has no published"):
    games.human_normalized_score("carnival", 100.0)


def test_unknown_or_duplicate_games_are_named():
  with pytest.raises(ValueError, match="unknown game 'pacman'.*ms_pacman"):
    games.get_game("pacman")
  with pytest.raises(ValueError, match="'pong' is listed twice"):
    games.get_games(["pong", "Pong"])
  assert games.get_game("MsPacman").name == "ms_pacman"
