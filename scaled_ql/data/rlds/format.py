"""The on-disk format of Atari episodes: RLDS in TFDS folders, as RL Unplugged's `rlu_atari*`.

One game-run is one TFDS dataset folder, laid out as the prepared RL Unplugged datasets are:

  {data_dir}/{dataset_name}/{AleName}_run_{k}/{version}/
      dataset_info.json  features.json
      {dataset_name}-checkpoint_00.tfrecord-00000-of-00001  ...

Each record is one episode (a `tf.train.Example`) with the features of
`tensorflow_datasets.rl_unplugged.atari_utils.features_dict()`: steps {observation: Image
(84, 84, 1) uint8 PNG, action int64, reward float32, discount float32, is_first, is_last,
is_terminal bool} and episode metadata {checkpoint_id int64, episode_id int64, episode_return
float32}. Two split layouts exist and both are read:
- one split per checkpoint, `checkpoint_00`, `checkpoint_01`, ... (ours, `rlu_atari_checkpoints`,
  `rlu_atari_checkpoints_ordered`): a quality subset reads only its splits;
- one split `train` with the checkpoint only in the metadata (`rlu_atari`): a quality subset
  parses every record and drops the others before their frames are decoded.

RLDS step semantics: step t holds observation o_t, the action a_t taken in it and the reward r_t
and discount d_t that followed. Rewards are stored as logged: the DQN Replay Dataset, and so
RL Unplugged's `rlu_atari*` made from it and our `dqn_replay` conversions, hold rewards that
Dopamine's runner had already clipped to [-1, 1] (their `episode_return` is a clipped return,
not a game score); datasets played from the ALE (`generate`) hold raw rewards. The sampler clips
either way. The last step (is_last) carries the final observation
only; its action and reward are unused by learners. is_terminal[-1] is True iff the episode ended
in a game over (nothing to bootstrap from); a truncated episode (time limit, end of a checkpoint's
data) has is_terminal all False. Discounts follow RL Unplugged's conversion: 1 everywhere, except
the last transition and the last step of a terminated episode, which get 0.

This module holds the format itself (features, names, episode dicts, errors) and the lazy,
accelerator-free import of TensorFlow for the writer (and for metadata layouts only TFDS reads):
TensorFlow is imported only by the functions that need it and is never allowed to see an
accelerator (JAX owns those). Reading needs no TensorFlow (`records`).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any, Iterable, Union

import numpy as np

from scaled_ql import errors
from scaled_ql.frames import FRAME_SHAPE
from scaled_ql.games import Game, get_game

DEFAULT_DATASET_NAME = "scaled_ql_atari"  # Datasets this framework generates from the ALE.
DEFAULT_VERSION = "1.0.0"
TRAIN_SPLIT = "train"  # rlu_atari's single split.
STEP_KEYS = ("observation", "action", "reward", "discount", "is_first", "is_last", "is_terminal")
METADATA_KEYS = ("checkpoint_id", "episode_id", "episode_return")
# Datasets made from the DQN Replay Dataset, whose rewards were clipped before they were logged.
CLIPPED_REWARD_DATASETS = ("dqn_replay", "rlu_atari", "rlu_atari_checkpoints",
                           "rlu_atari_checkpoints_ordered")
# Fields of older TFDS Atari versions (rlu_atari < 1.3.0, rlu_atari_checkpoints_ordered 1.0.0):
# copies of `steps/reward` and `episode_return` (the data were clipped already), ignored.
REDUNDANT_CLIPPED_FIELDS = {"steps/clipped_reward": ("float32", (None,)),
                            "clipped_episode_return": ("float32", ())}

_CONFIG_RE = re.compile(r"^(?P<game>[A-Za-z]+)_run_(?P<run>\d+)$")
_CHECKPOINT_SPLIT_RE = re.compile(r"^checkpoint_(?P<id>\d+)$")

CheckpointSelection = Union[None, int, Iterable[int]]


class DatasetError(errors.InputError):
  """A dataset on disk is missing, malformed or corrupt; the message names the file (bad
  input: a launch prints it as one `error:` line, also when met deep into a run)."""


class CorruptDataError(DatasetError):
  """A shard file's records are damaged or fewer than its metadata promises, found while reading
  (possibly deep into a run); the message names the file."""


class DatasetExistsError(FileExistsError):
  """The output dataset exists already and overwriting was not asked for."""


# ---------------------------------------------------------------------------------------------
# TensorFlow, imported lazily and kept off accelerators.


@functools.lru_cache(maxsize=None)
def _tf():
  """Imports TensorFlow with every GPU hidden from it (TF is for data only; JAX owns GPUs)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF was initialised already by someone else.
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised with GPUs visible before scaled_ql.data could "
                      "hide them; it may take accelerator memory.")
  return tf


@functools.lru_cache(maxsize=None)
def _tfds():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def features():
  """The TFDS features of an episode: those of RL Unplugged's Atari datasets."""
  tfds = _tfds()
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": tfds.features.Image(shape=(*FRAME_SHAPE, 1), dtype=np.uint8,
                                             encoding_format="png"),
          "action": np.int64,
          "reward": tfds.features.Scalar(
              dtype=np.float32, doc="Reward as logged: clipped to [-1, 1] already in DQN Replay "
              "data (by Dopamine's runner), raw in datasets played from the ALE."),
          "is_terminal": np.bool_,
          "is_first": np.bool_,
          "is_last": np.bool_,
          "discount": np.float32,
      }),
      "checkpoint_id": np.int64,
      "episode_id": np.int64,
      "episode_return": tfds.features.Scalar(
          dtype=np.float32, doc="Sum of the step rewards as logged (clipped ones in DQN Replay "
          "data)."),
  })


def _expected_serialized_info() -> dict[str, tuple[str, tuple]]:
  """{flat feature key: (dtype name, shape)} that every readable dataset must have."""
  out = {f"steps/{k}": (d, (None,)) for k, d in (
      ("observation", "string"), ("action", "int64"), ("reward", "float32"),
      ("discount", "float32"), ("is_first", "bool"), ("is_last", "bool"),
      ("is_terminal", "bool"))}
  out.update({"checkpoint_id": ("int64", ()), "episode_id": ("int64", ()),
              "episode_return": ("float32", ())})
  return out


def checkpoint_split(checkpoint_id: int) -> str:
  """The split name of a checkpoint, as in rlu_atari_checkpoints*: 'checkpoint_07'."""
  return f"checkpoint_{int(checkpoint_id):02d}"


def config_name(game: Union[str, Game], run: int) -> str:
  """The TFDS config (folder) name of a game-run, as in rlu_atari: 'Pong_run_1'."""
  game = game if isinstance(game, Game) else get_game(game)
  return f"{game.ale_name}_run_{int(run)}"


def _split_order(split: str) -> tuple[int, str]:
  """Sorts checkpoint_9 before checkpoint_10 (numerically), other names after."""
  m = _CHECKPOINT_SPLIT_RE.match(split)
  return (int(m["id"]), split) if m else (1 << 62, split)


# ---------------------------------------------------------------------------------------------
# Episodes in memory.


def make_episode(observation: np.ndarray, action: np.ndarray, reward: np.ndarray, *,
                 terminated: bool, checkpoint_id: int, episode_id: int) -> dict[str, Any]:
  """Builds an RLDS episode dict (the flags, discounts and return) from its T steps.

  `observation` [T, 84, 84] uint8 holds every observation, the final one last; `action` and
  `reward` [T] hold, for step t, the action taken and the reward that followed (the last step's
  are unused by learners; callers put 0 there unless they hold a real value). `terminated`: the
  episode ended in a game over (False: truncated).
  """
  observation = np.asarray(observation)
  num_steps = len(observation)
  if num_steps < 1:
    raise ValueError("an episode needs at least one step (its final observation).")
  is_first = np.zeros(num_steps, bool)
  is_first[0] = True
  is_last = np.zeros(num_steps, bool)
  is_last[-1] = True
  is_terminal = np.zeros(num_steps, bool)
  is_terminal[-1] = bool(terminated)
  discount = np.ones(num_steps, np.float32)
  if terminated:
    discount[-2:] = 0.0  # RL Unplugged: the last transition and the final step.
  reward = np.asarray(reward, np.float32)
  return dict(observation=observation, action=np.asarray(action, np.int64), reward=reward,
              discount=discount, is_first=is_first, is_last=is_last, is_terminal=is_terminal,
              checkpoint_id=int(checkpoint_id), episode_id=int(episode_id),
              episode_return=np.float32(reward.astype(np.float64).sum()))


def check_episode(episode: dict[str, Any], game: Game) -> None:
  """Raises ValueError naming the field unless `episode` is a well-formed RLDS episode of `game`."""
  missing = [k for k in (*STEP_KEYS, "checkpoint_id", "episode_id") if k not in episode]
  if missing:
    raise ValueError(f"episode is missing {missing}.")
  obs = np.asarray(episode["observation"])
  if obs.ndim == 4 and obs.shape[-1] == 1:
    obs = obs[..., 0]
  if obs.dtype != np.uint8 or obs.ndim != 3 or obs.shape[1:] != FRAME_SHAPE or not len(obs):
    raise ValueError(f"observation must be uint8 [T, 84, 84] with T >= 1, got {obs.dtype} "
                     f"{obs.shape}.")
  num_steps = len(obs)
  for key in STEP_KEYS[1:]:
    shape = np.shape(episode[key])
    if shape != (num_steps,):
      raise ValueError(f"{key} must have shape ({num_steps},) like observation, got {shape}.")
  action = np.asarray(episode["action"])
  if not np.issubdtype(action.dtype, np.integer):
    raise ValueError(f"action must be integers, got {action.dtype}.")
  bad = np.flatnonzero((action < 0) | (action >= game.num_actions))
  if bad.size:
    raise ValueError(f"{game.ale_name} has {game.num_actions} actions, but step {bad[0]} has "
                     f"action {action[bad[0]]}.")
  is_first, is_last, is_terminal = (np.asarray(episode[k], bool)
                                    for k in ("is_first", "is_last", "is_terminal"))
  if not is_first[0] or is_first[1:].any():
    raise ValueError("is_first must be True at step 0 only.")
  if not is_last[-1] or is_last[:-1].any():
    raise ValueError("is_last must be True at the last step only.")
  if is_terminal[:-1].any():
    raise ValueError("is_terminal may only be True at the last step.")
  if not np.all(np.isfinite(np.asarray(episode["reward"], np.float32))):
    raise ValueError("reward has non-finite values.")
  for key in ("checkpoint_id", "episode_id"):
    value = episode[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{key} must be a non-negative integer, got {value!r}.")
