"""Finding and opening the dataset folders of a game: which datasets, runs and checkpoint splits
are on disk, checked against the episode features before anything is read.

The TFDS metadata (dataset_info.json: splits, shard lengths, file names; features.json: the
features) are read as JSON, without TensorFlow. A folder whose metadata this does not know (a
TFDS release's older layout, another file-name template) is opened by TFDS itself instead
(`tfds.builder_from_directory`, the `data` extra)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Optional, Union

import numpy as np

from scaled_ql.data.rlds.format import (_CHECKPOINT_SPLIT_RE, _CONFIG_RE,
                                        CLIPPED_REWARD_DATASETS, REDUNDANT_CLIPPED_FIELDS,
                                        TRAIN_SPLIT, CheckpointSelection, DatasetError,
                                        _expected_serialized_info, _split_order, _tfds)
from scaled_ql.games import Game, get_game


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """One game-run dataset folder on disk (one TFDS version folder)."""
  path: str  # The version folder holding dataset_info.json.
  dataset_name: str  # "scaled_ql_atari", "rlu_atari_checkpoints_ordered", ...
  game: Game
  run: int
  split_lengths: tuple[tuple[str, int], ...]  # (split name, episodes) in split order.
  # Per split (same order): its shard files and their episodes, in order.
  split_shards: tuple[tuple[tuple[str, int], ...], ...] = ()

  @property
  def split_by_checkpoint(self) -> bool:
    """True for one split per checkpoint; False for rlu_atari's single 'train' split."""
    return all(_CHECKPOINT_SPLIT_RE.match(s) for s, _ in self.split_lengths)

  @property
  def checkpoint_ids(self) -> Optional[tuple[int, ...]]:
    """The checkpoints present (None where only the episodes' metadata knows: rlu_atari)."""
    if not self.split_by_checkpoint:
      return None
    return tuple(int(_CHECKPOINT_SPLIT_RE.match(s)["id"]) for s, _ in self.split_lengths)

  @property
  def clipped_rewards(self) -> bool:
    """The rewards were clipped to [-1, 1] before they were logged (DQN Replay data): episode
    returns are clipped returns, not game scores."""
    return self.dataset_name in CLIPPED_REWARD_DATASETS

  @property
  def num_episodes(self) -> int:
    return sum(n for _, n in self.split_lengths)


_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")  # TFDS versions: MAJOR.MINOR.PATCH.
_TEMPLATE_FIELD_RE = re.compile(r"{(\w+)}")
_DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default.


def _latest_version_dir(config_dir: str) -> Optional[str]:
  versions = [d for d in os.listdir(config_dir)
              if _VERSION_RE.match(d)
              and os.path.isfile(os.path.join(config_dir, d, "dataset_info.json"))]
  if not versions:
    return None
  return os.path.join(config_dir, max(
      versions, key=lambda v: tuple(int(x) for x in _VERSION_RE.match(v).groups())))


def _serialized_features(tree) -> Optional[dict[str, tuple[str, tuple]]]:
  """{flat key: (dtype, shape)} as TFDS serializes the features of a features.json tree (its
  proto JSON), or None where a feature is of a kind this does not know."""
  kind = tree.get("pythonClassName", "").rsplit(".", 1)[-1]
  if "featuresDict" in tree:
    out = {}
    for key, child in tree["featuresDict"].get("features", {}).items():
      inner = _serialized_features(child)
      if inner is None:
        return None
      out.update({(f"{key}/{k}" if k else key): v for k, v in inner.items()})
    return out
  if "sequence" in tree:  # Dataset / Sequence: one more leading dimension.
    length = int(tree["sequence"].get("length", -1))
    inner = _serialized_features(tree["sequence"].get("feature", {}))
    if inner is None:
      return None
    return {k: (d, (None if length < 0 else length, *s)) for k, (d, s) in inner.items()}
  if "image" in tree:  # Stored encoded: one string per image.
    return {"": ("string", ())}
  if "tensor" in tree and kind in ("Tensor", "Scalar") and \
      tree["tensor"].get("encoding", "none") == "none":
    dims = tree["tensor"].get("shape", {}).get("dimensions", [])
    return {"": (tree["tensor"]["dtype"], tuple(None if int(d) < 0 else int(d) for d in dims))}
  return None


def _shard_files(version_dir: str, info: dict) -> Optional[tuple]:
  """((split, episodes), ...) and per split ((file, episodes), ...) from dataset_info.json, or
  None where it lacks what that needs (an older TFDS layout)."""
  name, file_format = info.get("name"), info.get("fileFormat", "tfrecord")
  if not name or not isinstance(info.get("splits"), list):
    return None
  lengths, shards = [], []
  for split in info["splits"]:
    if "shardLengths" not in split or "name" not in split:
      return None
    counts = [int(n) for n in split["shardLengths"]]
    template = split.get("filepathTemplate") or _DEFAULT_TEMPLATE
    if set(_TEMPLATE_FIELD_RE.findall(template)) - {"DATASET", "SPLIT", "FILEFORMAT",
                                                    "SHARD_X_OF_Y", "SHARD_INDEX",
                                                    "NUM_SHARDS"}:
      return None
    files = []
    for i, count in enumerate(counts):
      fields = dict(DATASET=name, SPLIT=split["name"], FILEFORMAT=file_format,
                    SHARD_X_OF_Y=f"{i:05d}-of-{len(counts):05d}", SHARD_INDEX=f"{i:05d}",
                    NUM_SHARDS=f"{len(counts):05d}")
      path = _TEMPLATE_FIELD_RE.sub(lambda m, f=fields: f[m[1]], template)
      files.append((os.path.join(version_dir, path), count))
    lengths.append((split["name"], sum(counts)))
    shards.append(tuple(files))
  return tuple(lengths), tuple(shards)


def _metadata_by_tfds(version_dir: str) -> tuple[dict, tuple, tuple]:
  """What `_open_source` needs, from TFDS itself (metadata layouts the JSON path does not know)."""
  try:
    builder = _tfds().builder_from_directory(version_dir)
    serialized = builder.info.features.get_serialized_info()
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(f"{version_dir}: TFDS cannot open this dataset: {e}") from e
  found = {key: (v.tf_dtype.name, tuple(v.shape)) for key, v in _flatten(serialized).items()}
  splits = builder.info.splits.values()
  lengths = tuple((s.name, int(s.num_examples)) for s in splits)
  shards = tuple(tuple((os.fspath(p), int(n)) for p, n in zip(s.filepaths, s.shard_lengths))
                 for s in splits)
  return found, lengths, shards


def _candidate_dataset_dirs(data_dir: str, ale_name: str) -> list[str]:
  """Dataset folders under `data_dir` (or `data_dir` itself) holding configs of the game."""
  if not os.path.isdir(data_dir):
    raise DatasetError(f"data_dir {data_dir} does not exist or is not a directory.")
  pattern = re.compile(rf"^{re.escape(ale_name)}_run_\d+$")

  def has_game(path):
    return any(pattern.match(d) for d in os.listdir(path))

  if has_game(data_dir):
    return [data_dir]
  return sorted(os.path.join(data_dir, d) for d in os.listdir(data_dir)
                if not d.startswith(".") and os.path.isdir(os.path.join(data_dir, d))
                and has_game(os.path.join(data_dir, d)))


def _open_source(config_dir: str, game: Game, run: int) -> DatasetSource:
  version_dir = _latest_version_dir(config_dir)
  if version_dir is None:
    raise DatasetError(f"{config_dir} holds no finished TFDS dataset (no <version>/"
                       "dataset_info.json).")
  info_path = os.path.join(version_dir, "dataset_info.json")
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetError(f"{info_path}: unreadable dataset_info.json ({e}).") from e
  found, shard_files = None, _shard_files(version_dir, info)
  try:
    with open(os.path.join(version_dir, "features.json")) as f:
      found = _serialized_features(json.load(f))
  except (OSError, ValueError, AttributeError, KeyError, TypeError):
    pass  # TFDS says what is wrong below.
  if found is None or shard_files is None:
    found, *shard_files = _metadata_by_tfds(version_dir)
  split_lengths, split_shards = shard_files
  expected = _expected_serialized_info()
  if found != expected and found == {**expected, **REDUNDANT_CLIPPED_FIELDS}:
    found = expected  # An older rlu_atari* version: its clipped copies are not read.
  if found != expected:
    diff = sorted(set(found.items()) ^ set(expected.items()))
    lacking = [k for k in ("steps/is_last", "checkpoint_id") if k not in found]
    if lacking:
      version = os.path.basename(os.path.normpath(version_dir))
      raise DatasetError(
          f"{version_dir}: version {version} of this dataset lacks {lacking} (rlu_atari added "
          "is_last in 1.1.0 and checkpoint_id in 1.2.0), which reading needs. Prepare a newer "
          "version, e.g. tfds.builder('rlu_atari/<Game>_run_<k>:1.3.0').download_and_prepare() "
          "(or rlu_atari_checkpoints_ordered:1.1.0), and point data_dir at it.")
    raise DatasetError(f"{version_dir}/features.json: not the rlu_atari episode features "
                       f"(differences: {diff}).")
  if not split_lengths:
    raise DatasetError(f"{info_path}: the dataset has no splits.")
  names = [s for s, _ in split_lengths]
  if not (all(_CHECKPOINT_SPLIT_RE.match(s) for s in names) or names == [TRAIN_SPLIT]):
    raise DatasetError(f"{info_path}: splits {names} are neither 'checkpoint_NN' splits nor a "
                       "single 'train' split.")
  order = sorted(range(len(names)), key=lambda i: _split_order(names[i]))
  return DatasetSource(path=version_dir, dataset_name=info.get("name") or
                       os.path.basename(os.path.dirname(config_dir)),
                       game=game, run=run, split_lengths=tuple(split_lengths[i] for i in order),
                       split_shards=tuple(split_shards[i] for i in order))


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def find_sources(data_dir: str, game: Union[str, Game], *, runs: Optional[Iterable[int]] = None,
                 dataset: Optional[str] = None) -> list[DatasetSource]:
  """The game's run datasets under `data_dir`, by run.

  `data_dir` is a TFDS data_dir (holding `{dataset_name}/{AleName}_run_{k}/`) or one dataset
  folder itself. `dataset` picks the dataset name where several hold the game (else an error
  lists them); `runs` picks runs (None: every run found).
  """
  game = game if isinstance(game, Game) else get_game(game)
  data_dir = os.fspath(data_dir)
  dirs = _candidate_dataset_dirs(data_dir, game.ale_name)
  if dataset is not None:
    dirs = [d for d in dirs if os.path.basename(os.path.normpath(d)) == dataset]
  if not dirs:
    where = f"dataset {dataset!r} under " if dataset else ""
    raise DatasetError(f"no {game.ale_name} data in {where}{data_dir} (looked for "
                       f"*/{game.ale_name}_run_<k>/<version>/dataset_info.json).")
  if len(dirs) > 1:
    names = [os.path.basename(d) for d in dirs]
    raise DatasetError(f"several datasets in {data_dir} hold {game.ale_name}: {names}; pick one "
                       "with dataset=NAME.")
  dataset_dir = dirs[0]
  available = {}
  for d in os.listdir(dataset_dir):
    m = _CONFIG_RE.match(d)
    if m and m["game"] == game.ale_name:
      available[int(m["run"])] = os.path.join(dataset_dir, d)
  wanted = sorted(available) if runs is None else sorted({_as_int(r, "run") for r in runs})
  missing = [r for r in wanted if r not in available]
  if missing:
    raise DatasetError(f"{dataset_dir} has no {game.ale_name} run(s) {missing}; it has runs "
                       f"{sorted(available)}.")
  return [_open_source(available[r], game, r) for r in wanted]


def _as_int(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  return int(value)


def _checkpoint_set(checkpoints: CheckpointSelection) -> Optional[frozenset[int]]:
  if checkpoints is None:
    return None
  if isinstance(checkpoints, (int, np.integer)) and not isinstance(checkpoints, bool):
    checkpoints = [checkpoints]
  ids = frozenset(_as_int(c, "checkpoint id") for c in checkpoints)
  if not ids or min(ids) < 0:
    raise ValueError(f"checkpoints must be non-negative ids (and at least one), got "
                     f"{sorted(ids)}.")
  return ids
