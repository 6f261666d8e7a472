r"""Makes an offline Atari dataset (RLDS episodes in TFDS folders, the rlu_atari format): from the
emulator with a behaviour policy (--source=ale), as the replay of an online agent learning each
game (--source=agent, resumable), or from DQN Replay Dataset files (--source=dqn_replay); the
README shows each command. Output: `{data_dir}/{dataset_name}/{AleName}_run_{k}/{version}/`,
one split per checkpoint. The jobs: `scaled_ql.data.make.make_ale` / `make_dqn_replay`,
`scaled_ql.train.logged_agent.make_agent_datasets` (checks first, atomic outputs).
"""
from __future__ import annotations

from absl import app, flags

from scaled_ql import app as app_lib
from scaled_ql import configs
from scaled_ql.data import dqn_replay, make, rlds
from scaled_ql.train import logged_agent

_SOURCE = flags.DEFINE_enum("source", "ale", ["ale", "agent", "dqn_replay"],
                            "Where episodes come from: a behaviour policy in the emulator (ale), "
                            "an online agent learning each game (agent), DQN Replay files.")
_AGENT_CONFIG = flags.DEFINE_string("agent_config", "configs/agent.py:default",
                                    "agent: the online agent's config file and preset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output TFDS data_dir.", required=True)
_DATASET_NAME = flags.DEFINE_string(
    "dataset_name", None, f"Output dataset name (default: {rlds.DEFAULT_DATASET_NAME!r} for "
    f"--source=ale, {logged_agent.DATASET_NAME!r} for agent, {dqn_replay.DATASET_NAME!r} for "
    "dqn_replay).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing game-run datasets.")
_SKIP_EXISTING = flags.DEFINE_bool(
    "skip_existing", False, "ale, agent: keep existing game-run datasets and make only the "
    "missing ones (what `make demo` does when run again).")
# --source=ale and --source=agent
_GAMES = flags.DEFINE_list("games", ["pong"], "ale, agent: games (snake_case or ALE names).")
_RUNS = flags.DEFINE_list("runs", ["1"], "ale, agent: run numbers (each its own seed).")
_CHECKPOINTS_PER_RUN = flags.DEFINE_integer("checkpoints_per_run", 3,
                                            "ale, agent: checkpoint ids 0..N-1 per run.")
_STEPS_PER_CHECKPOINT = flags.DEFINE_integer("steps_per_checkpoint", 10_000,
                                             "ale, agent: env steps per checkpoint.")
_POLICY = flags.DEFINE_enum(
    "policy", "random", ["random", "eps_greedy", "mixture"],
    "ale: uniform random; epsilon-greedy over --q_policy (epsilon from --epsilon_start to "
    "--epsilon_end over the checkpoints); or that plus whole random episodes "
    "(--random_episode_prob).")
_Q_POLICY = flags.DEFINE_string(
    "q_policy", None, "ale, eps_greedy/mixture: 'module:factory'; factory(game_names) returns "
    "policy(stacked_obs [N,84,84,4] uint8, game_index) -> actions [N].")
_EPSILON_START = flags.DEFINE_float("epsilon_start", 1.0, "ale: epsilon at checkpoint 0.")
_EPSILON_END = flags.DEFINE_float("epsilon_end", 0.01, "ale: epsilon at the last checkpoint.")
_RANDOM_EPISODE_PROB = flags.DEFINE_float("random_episode_prob", 0.5,
                                          "ale, mixture: chance an episode is played at random.")
_SEED = flags.DEFINE_integer("seed", 0, "ale, agent: seed of every game-run's data.")
_MAX_EPISODE_FRAMES = flags.DEFINE_integer("max_episode_frames", 108_000,
                                           "ale: emulator frames before an episode is truncated.")
# --source=dqn_replay
_REPLAY_DIR = flags.DEFINE_string("replay_dir", None, "dqn_replay: one game-run's folder.")
_GAME = flags.DEFINE_string("game", None, "dqn_replay: the game of --replay_dir.")
_RUN = flags.DEFINE_integer("run", 1, "dqn_replay: the run number to file it under.")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", None,
                                 "dqn_replay: checkpoint indices to convert (default: all).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SOURCE.value == "agent":
    agent = configs.load(_AGENT_CONFIG.value)
    app_lib.start_jax(None, agent.model.encoder)
    logged_agent.make_agent_datasets(
        agent, _DATA_DIR.value, _GAMES.value, _RUNS.value,
        checkpoints_per_run=_CHECKPOINTS_PER_RUN.value,
        steps_per_checkpoint=_STEPS_PER_CHECKPOINT.value, seed=_SEED.value,
        dataset_name=_DATASET_NAME.value,
        overwrite=_OVERWRITE.value, skip_existing=_SKIP_EXISTING.value)
  elif _SOURCE.value == "ale":
    make.make_ale(
        _DATA_DIR.value, _GAMES.value, runs=_RUNS.value,
        checkpoints_per_run=_CHECKPOINTS_PER_RUN.value,
        steps_per_checkpoint=_STEPS_PER_CHECKPOINT.value, policy=_POLICY.value,
        q_policy=_Q_POLICY.value, epsilon_start=_EPSILON_START.value,
        epsilon_end=_EPSILON_END.value, random_episode_prob=_RANDOM_EPISODE_PROB.value,
        seed=_SEED.value, max_episode_frames=_MAX_EPISODE_FRAMES.value,
        dataset_name=_DATASET_NAME.value, overwrite=_OVERWRITE.value,
        skip_existing=_SKIP_EXISTING.value)
  else:
    make.make_dqn_replay(_DATA_DIR.value, _REPLAY_DIR.value, _GAME.value, run=_RUN.value,
                         checkpoints=_CHECKPOINTS.value, dataset_name=_DATASET_NAME.value,
                         overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app_lib.run(main)
