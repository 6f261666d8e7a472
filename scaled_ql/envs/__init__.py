"""Atari environments: ALE v5 with the DQN preprocessing, frame stacking, game variants, and
vectorised envs.

- `resize`: the 210x160 -> 84x84 area resize, bit-exact with OpenCV's `INTER_AREA` (the resize
  that made the DQN Replay Dataset);
- `atari`: `AtariEnv`, one game (or variant) with sticky actions, frame skip 4, max-pooled
  grayscale frames and the 108,000-frame cap, seeded as gymnasium's `ALE/{Game}-v5`;
- `stacking`: `FrameStacker`, the 4-frame stacks with zero frames before an episode's first,
  exactly as the offline sampler stacks the data;
- `vector`: `VectorAtariEnv`, N envs of any games stepped together, in-process or in workers.
"""
from scaled_ql.envs.atari import (DEFAULT_FRAME_SKIP, DEFAULT_MAX_EPISODE_FRAMES,
                                  DEFAULT_STICKY_ACTION_PROB, AtariEnv, GameLike,
                                  available_variants, make_variant_env)
from scaled_ql.envs.resize import resize_area
from scaled_ql.envs.stacking import FrameStacker
from scaled_ql.envs.vector import EnvSpec, VectorAtariEnv
from scaled_ql.frames import FRAME_SHAPE, STACK_SIZE
# Internals the tests and the benchmark measure directly.
from scaled_ql.envs.resize import _area_table, _integer_area_plan, _resize_area_reference
from scaled_ql.envs.stacking import _Stacks


def ale_version() -> str:
  """The installed ale-py's version (ROMs and emulation can change between releases)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version("ale-py")
