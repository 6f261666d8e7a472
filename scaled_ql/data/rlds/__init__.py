"""Atari episodes on disk: RLDS in TFDS folders, the format of RL Unplugged's `rlu_atari*`.

- `format`: the features, names (configs, checkpoint splits), episode dicts and errors, and the
  lazy import of TensorFlow (writing only) kept off accelerators;
- `writer`: `EpisodeWriter`, atomic and incremental, PNG frames in size-capped shards;
- `sources`: `find_sources`, the datasets, runs and splits of a game on disk, checked up front;
- `records`: TFRecord framing (CRC-checked), `tf.train.Example` and PNG decoding without
  TensorFlow, what the readers below use;
- `reader`: `read_episodes`, a host's share of a selection in stored (time) order, lazily, from
  our datasets and from prepared `rlu_atari`, `rlu_atari_checkpoints` and
  `rlu_atari_checkpoints_ordered` folders;
- `stream`: `UniformStream`, the same share in an order whose every stretch is a uniform sample
  of the whole selection, epoch after epoch (what the sampler's pools are filled from), and
  `uniform_episodes`, one epoch of it (e.g. to seed an online replay with offline data).
"""
from scaled_ql.data.rlds.format import (DEFAULT_DATASET_NAME, DEFAULT_VERSION, METADATA_KEYS,
                                        STEP_KEYS, TRAIN_SPLIT, CheckpointSelection,
                                        CorruptDataError, DatasetError, DatasetExistsError,
                                        check_episode, checkpoint_split, config_name, features,
                                        make_episode)
from scaled_ql.data.rlds.reader import check_selection, read_episodes
from scaled_ql.data.rlds.stream import UniformStream, uniform_episodes, uniform_sources
from scaled_ql.data.rlds.sources import DatasetSource, find_sources
from scaled_ql.data.rlds.writer import (DEFAULT_SHARD_BYTES, EpisodeWriter, SplitSummary,
                                        encode_png, serialize_episode)
