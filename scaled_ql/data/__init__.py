"""Offline Atari data: RLDS/TFDS episode datasets, where they come from, and how they are read.

- `rlds`: the on-disk format (the TFDS layout of RL Unplugged's `rlu_atari*`), `EpisodeWriter`
  (atomic, incremental), `find_sources`, `read_episodes` (stored order) and `UniformStream`
  (every stretch a uniform sample of the selection: what pools and online seeding read),
  which read our datasets and prepared `rlu_atari`, `rlu_atari_checkpoints` and
  `rlu_atari_checkpoints_ordered` folders alike, lazily and per host;
- `generate`: datasets played in the emulator by a behaviour policy (random, epsilon-greedy over
  any policy callable, or a mixture), several checkpoint ids per run;
- `dqn_replay`: conversion of DQN Replay Dataset checkpoint files (Dopamine's replay buffer);
- `batch`: the transition batch and its per-game counts; `frame_pool`: one game's bounded ring
  of single frames with n-step targets (whole episodes or one env step at a time); `sampler`:
  game-blocked batches from those pools fed by the readers; `prefetch`: sampling ahead in a thread;
- `make`: the dataset jobs of `launch.make_dataset` (emulator, DQN Replay).

Names are resolved on first use (PEP 562), so that `scaled_ql.data.batch` or `.sampler` (what
the learner and the accelerator benchmark need) import without the emulator (ale-py) or
TensorFlow.
"""
from scaled_ql import _lazy

_EXPORTS = {
    "dqn_replay": ("ReplayFileError", "convert_run"),
    "generate": ("BehaviourPolicy", "PolicyFn", "epsilon_greedy", "generate_run"),
    "rlds": ("DEFAULT_DATASET_NAME", "CorruptDataError", "DatasetError", "DatasetExistsError",
             "DatasetSource", "EpisodeWriter", "SplitSummary", "UniformStream",
             "checkpoint_split", "config_name", "find_sources", "make_episode", "read_episodes",
             "uniform_episodes", "uniform_sources"),
    "batch": ("Batch", "split_batch", "split_fractions"),
    "prefetch": ("Prefetcher",),
    "frame_pool": ("FramePool", "n_step_targets", "validate_episode"),
    "sampler": ("MultiGameSampler", "steps_for_one_pass"),
    "make": (),
}
__getattr__, __dir__, __all__ = _lazy.exports(__name__, _EXPORTS)
