"""Offline Atari data: RLDS/TFDS episode datasets, where they come from, and how they are read.

- `rlds`: the on-disk format (the TFDS layout of RL Unplugged's `rlu_atari*`), `EpisodeWriter`
  (atomic, incremental), and `read_episodes`, which reads our datasets and prepared `rlu_atari`,
  `rlu_atari_checkpoints` and `rlu_atari_checkpoints_ordered` folders alike, lazily and per host;
- `generate`: datasets played in the emulator by a behaviour policy (random, epsilon-greedy over
  any policy callable, or a mixture), several checkpoint ids per run;
- `dqn_replay`: conversion of DQN Replay Dataset checkpoint files (Dopamine's replay buffer).
"""
import importlib as _importlib

# Names resolved on first use (PEP 562), so that `scaled_ql.data.batch` or `.sampler` (what the
# learner and the accelerator benchmark need) import without the emulator (ale-py) or TensorFlow.
_EXPORTS = {
    "dqn_replay": ("ReplayFileError", "convert_run"),
    "generate": ("BehaviourPolicy", "PolicyFn", "epsilon_greedy", "generate_run"),
    "rlds": ("DEFAULT_DATASET_NAME", "DatasetError", "DatasetExistsError", "DatasetSource",
             "EpisodeWriter", "SplitSummary", "checkpoint_split", "config_name", "find_sources",
             "make_episode", "read_episodes"),
    "batch": ("Batch",),
    "sampler": ("FramePool", "MultiGameSampler", "Prefetcher", "split_batch",
                "validate_episode"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name in _EXPORTS:  # A submodule, as attribute (`evaluation.scores`, `data.rlds`).
    return _importlib.import_module(f"{__name__}.{name}")
  if name in _MODULE_OF:
    return getattr(_importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_MODULE_OF))
