"""The Atari games: names, minimal action sets, reference scores and the paper's game split.

Facts copied into the project (nothing reads ../shared at run time):
- random / human reference scores as published in DQN Zoo's `atari_data.py` (Carnival and
  Pooyan have none: they are trained on but left out of human-normalized aggregates);
- `minimal_actions`: each game's minimal action set as ALE action ids, in ALE's order, as
  `ale_py` 0.12 reports it (`ALEInterface.getMinimalActionSet`); tests check it against the ROMs.
  Actions in the DQN Replay Dataset and RL Unplugged are indices into this set, so the network's
  18 action slots are *minimal-set indices*: slot i of game g is legal iff i < len(minimal_actions);
- the Scaled Q-Learning split (Kumar et al. 2023): 40 training games and 5 held-out games
  (Alien, MsPacman, Pong, SpaceInvaders, StarGunner); RoadRunner is in Multi-Game DT's 41
  training games but not in the 40.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable, Optional, Sequence, Union

import numpy as np

MAX_ACTIONS = 18  # The full ALE action space: every game's head has this many slots.
# ALE's action ids 0..17, by name (ale_py.Action).
ALE_ACTION_NAMES = ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT",
                    "DOWNRIGHT", "DOWNLEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE",
                    "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE")


@dataclasses.dataclass(frozen=True)
class Game:
  """One Atari game as the framework knows it."""
  name: str  # snake_case id, e.g. "ms_pacman".
  ale_name: str  # "MsPacman": gymnasium id `ALE/MsPacman-v5`, TFDS config `MsPacman_run_1`.
  random_score: Optional[float]  # None where no published reference exists.
  human_score: Optional[float]
  in_rlu_atari: bool  # One of the 46 games of the DQN Replay Dataset / TFDS `rlu_atari`.
  split: Optional[str]  # "train", "heldout", "mgdt_train_only" or None.
  minimal_actions: tuple[int, ...]  # ALE action ids of the minimal action set.

  @property
  def num_actions(self) -> int:
    return len(self.minimal_actions)

  @property
  def has_reference_scores(self) -> bool:
    return self.random_score is not None and self.human_score is not None


_ALL = tuple(range(MAX_ACTIONS))


def _g(name, ale_name, random_score, human_score, in_rlu, split, actions) -> Game:
  return Game(name, ale_name, random_score, human_score, in_rlu, split, tuple(actions))


_TABLE = (
    _g('alien', 'Alien', 227.8, 7127.7, True, 'heldout', _ALL),
    _g('amidar', 'Amidar', 5.8, 1719.5, True, 'train', (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    _g('assault', 'Assault', 222.4, 742.0, True, 'train', (0, 1, 2, 3, 4, 11, 12)),
    _g('asterix', 'Asterix', 210.0, 8503.3, True, 'train', (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    _g('asteroids', 'Asteroids', 719.1, 47388.7, False, None, (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15)),
    _g('atlantis', 'Atlantis', 12850.0, 29028.1, True, 'train', (0, 1, 11, 12)),
    _g('bank_heist', 'BankHeist', 14.2, 753.1, True, 'train', _ALL),
    _g('battle_zone', 'BattleZone', 2360.0, 37187.5, True, 'train', _ALL),
    _g('beam_rider', 'BeamRider', 363.9, 16926.5, True, 'train', (0, 1, 2, 3, 4, 6, 7, 11, 12)),
    _g('berzerk', 'Berzerk', 123.7, 2630.4, False, None, _ALL),
    _g('bowling', 'Bowling', 23.1, 160.7, False, None, (0, 1, 2, 5, 10, 13)),
    _g('boxing', 'Boxing', 0.1, 12.1, True, 'train', _ALL),
    _g('breakout', 'Breakout', 1.7, 30.5, True, 'train', (0, 1, 3, 4)),
    _g('centipede', 'Centipede', 2090.9, 12017.0, True, 'train', _ALL),
    _g('chopper_command', 'ChopperCommand', 811.0, 7387.8, True, 'train', _ALL),
    _g('crazy_climber', 'CrazyClimber', 10780.5, 35829.4, True, 'train', (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    _g('defender', 'Defender', 2874.5, 18688.9, False, None, _ALL),
    _g('demon_attack', 'DemonAttack', 152.1, 1971.0, True, 'train', (0, 1, 3, 4, 11, 12)),
    _g('double_dunk', 'DoubleDunk', -18.6, -16.4, True, 'train', _ALL),
    _g('enduro', 'Enduro', 0.0, 860.5, True, 'train', (0, 1, 3, 4, 5, 8, 9, 11, 12)),
    _g('fishing_derby', 'FishingDerby', -91.7, -38.7, True, 'train', _ALL),
    _g('freeway', 'Freeway', 0.0, 29.6, True, 'train', (0, 2, 5)),
    _g('frostbite', 'Frostbite', 65.2, 4334.7, True, 'train', _ALL),
    _g('gopher', 'Gopher', 257.6, 2412.5, True, 'train', (0, 1, 2, 3, 4, 10, 11, 12)),
    _g('gravitar', 'Gravitar', 173.0, 3351.4, True, 'train', _ALL),
    _g('hero', 'Hero', 1027.0, 30826.4, True, 'train', _ALL),
    _g('ice_hockey', 'IceHockey', -11.2, 0.9, True, 'train', _ALL),
    _g('jamesbond', 'Jamesbond', 29.0, 302.8, True, 'train', _ALL),
    _g('kangaroo', 'Kangaroo', 52.0, 3035.0, True, 'train', _ALL),
    _g('krull', 'Krull', 1598.0, 2665.5, True, 'train', _ALL),
    _g('kung_fu_master', 'KungFuMaster', 258.5, 22736.3, True, 'train', (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17)),
    _g('montezuma_revenge', 'MontezumaRevenge', 0.0, 4753.3, False, None, _ALL),
    _g('ms_pacman', 'MsPacman', 307.3, 6951.6, True, 'heldout', (0, 2, 3, 4, 5, 6, 7, 8, 9)),
    _g('name_this_game', 'NameThisGame', 2292.3, 8049.0, True, 'train', (0, 1, 3, 4, 11, 12)),
    _g('phoenix', 'Phoenix', 761.4, 7242.6, True, 'train', (0, 1, 3, 4, 5, 11, 12, 13)),
    _g('pitfall', 'Pitfall', -229.4, 6463.7, False, None, _ALL),
    _g('pong', 'Pong', -20.7, 14.6, True, 'heldout', (0, 1, 3, 4, 11, 12)),
    _g('private_eye', 'PrivateEye', 24.9, 69571.3, False, None, _ALL),
    _g('qbert', 'Qbert', 163.9, 13455.0, True, 'train', (0, 1, 2, 3, 4, 5)),
    _g('riverraid', 'Riverraid', 1338.5, 17118.0, True, 'train', _ALL),
    _g('road_runner', 'RoadRunner', 11.5, 7845.0, True, 'mgdt_train_only', _ALL),
    _g('robotank', 'Robotank', 2.2, 11.9, True, 'train', _ALL),
    _g('seaquest', 'Seaquest', 68.4, 42054.7, True, 'train', _ALL),
    _g('skiing', 'Skiing', -17098.1, -4336.9, False, None, (0, 3, 4)),
    _g('solaris', 'Solaris', 1236.3, 12326.7, False, None, _ALL),
    _g('space_invaders', 'SpaceInvaders', 148.0, 1668.7, True, 'heldout', (0, 1, 3, 4, 11, 12)),
    _g('star_gunner', 'StarGunner', 664.0, 10250.0, True, 'heldout', _ALL),
    _g('surround', 'Surround', -10.0, 6.5, False, None, (0, 2, 3, 4, 5)),
    _g('tennis', 'Tennis', -23.8, -8.3, False, None, _ALL),
    _g('time_pilot', 'TimePilot', 3568.0, 5229.2, True, 'train', (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    _g('tutankham', 'Tutankham', 11.4, 167.6, False, None, (0, 2, 3, 4, 5, 10, 11, 12)),
    _g('up_n_down', 'UpNDown', 533.4, 11693.2, True, 'train', (0, 1, 2, 5, 10, 13)),
    _g('venture', 'Venture', 0.0, 1187.5, False, None, _ALL),
    _g('video_pinball', 'VideoPinball', 16256.9, 17667.9, True, 'train', (0, 1, 2, 3, 4, 5, 10, 11, 12)),
    _g('wizard_of_wor', 'WizardOfWor', 563.5, 4756.5, True, 'train', (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)),
    _g('yars_revenge', 'YarsRevenge', 3092.9, 54576.9, True, 'train', _ALL),
    _g('zaxxon', 'Zaxxon', 32.5, 9173.3, True, 'train', _ALL),
    _g('carnival', 'Carnival', None, None, True, 'train', (0, 1, 3, 4, 11, 12)),
    _g('pooyan', 'Pooyan', None, None, True, 'train', (0, 1, 2, 5, 10, 13)),
)

GAMES: dict[str, Game] = {g.name: g for g in _TABLE}
_BY_ALE_NAME = {g.ale_name.lower(): g for g in _TABLE}

# The paper's 40 pre-training games and its 5 held-out games, in table order.
TRAIN_GAMES: tuple[str, ...] = tuple(g.name for g in _TABLE if g.split == "train")
HELDOUT_GAMES: tuple[str, ...] = tuple(g.name for g in _TABLE if g.split == "heldout")


def get_game(name: str) -> Game:
  """Looks a game up by snake_case id ("ms_pacman") or ALE name ("MsPacman")."""
  if not isinstance(name, str):
    raise TypeError(f"game name must be a string, got {type(name).__name__}: {name!r}")
  game = GAMES.get(name) or _BY_ALE_NAME.get(name.lower())
  if game is None:
    close = difflib.get_close_matches(name.lower(), list(GAMES) + list(_BY_ALE_NAME), n=6)
    close = list(dict.fromkeys((GAMES.get(c) or _BY_ALE_NAME[c]).name for c in close))[:3]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown game {name!r}.{hint} Known games: {', '.join(sorted(GAMES))}.")
  return game


def split_names(names: Union[str, Iterable[str]]) -> tuple[str, ...]:
  """Game names as written anywhere: "pong,breakout" (a command-line list), ("pong",
  "breakout"), or a mix ("pong,breakout", "freeway"); blanks dropped, order kept."""
  items = [names] if isinstance(names, str) else list(names)
  return tuple(part.strip() for item in items
               for part in (item.split(",") if isinstance(item, str) else [item])
               if not isinstance(part, str) or part.strip())


def get_games(names: Union[str, Iterable[str]]) -> tuple[Game, ...]:
  """Looks up several games (any form `split_names` reads); rejects duplicates, which would
  give one game two heads."""
  games = tuple(get_game(n) for n in split_names(names))
  seen = set()
  for game in games:
    if game.name in seen:
      raise ValueError(f"game {game.name!r} is listed twice in the game list.")
    seen.add(game.name)
  if not games:
    raise ValueError("the game list is empty.")
  return games


def canonical_names(names: Union[str, Iterable[str]]) -> tuple[str, ...]:
  """The games' snake_case ids ("Pong,MsPacman" -> ("pong", "ms_pacman")), checked."""
  return tuple(g.name for g in get_games(names))


def legal_action_mask(names: Sequence[str]) -> np.ndarray:
  """[num_games, MAX_ACTIONS] bool: slot i of game g is legal iff i < g's action count."""
  counts = np.array([get_game(n).num_actions for n in names])
  return np.arange(MAX_ACTIONS)[None, :] < counts[:, None]


def human_normalized_score(name: str, score: float) -> float:
  """(score - random) / (human - random); raises for games without reference scores."""
  game = get_game(name)
  if not game.has_reference_scores:
    raise ValueError(f"game {game.name!r} has no published random/human reference scores.")
  return (score - game.random_score) / (game.human_score - game.random_score)


def action_name(game, slot: int) -> str:
  """The ALE name of action slot `slot` of `game` (an index into its minimal action set)."""
  return ALE_ACTION_NAMES[get_game(game).minimal_actions[int(slot)]]
