r"""Evaluates a checkpoint's multi-game Q-network in the emulator; prints and saves its scores.

  python -m launch.evaluate --checkpoint=runs/demo --episodes=10
  python -m launch.evaluate --checkpoint=runs/demo/checkpoints/2000 --games=pong,freeway \
      --episodes=30 --baselines=random,behaviour --out=runs/demo/eval_step2000

--checkpoint is a training workdir (its newest checkpoint), its checkpoints/ directory, or one
step directory; the network, games and loss come from the checkpoint. Protocol: sticky actions
0.25, frame skip 4, 108,000-frame cap, epsilon 0.001, zero-padded 4-frame stacks. Results go to
--out (default WORKDIR/eval). The job is `scaled_ql.evaluation.job.evaluate`.
"""
from absl import flags

from scaled_ql import app as app_lib
from scaled_ql.evaluation import job
from scaled_ql.train import metrics

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ "
                                  "directory, or one step directory.")
_GAMES = flags.DEFINE_list("games", [], "Games to play (default: all the checkpoint's games).")
_EPISODES = flags.DEFINE_integer("episodes", 10, "Episodes per game.")
_EPSILON = flags.DEFINE_float("epsilon", job.Request.epsilon,
                              "Probability of a random legal action per step.")
_ENVS = flags.DEFINE_integer("envs_per_game", 4, "Emulators per game stepped together.")
_SEED = flags.DEFINE_integer("seed", 0, "Evaluation seed (emulators and exploration).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")
_MAX_STEPS = flags.DEFINE_integer("max_steps_per_episode", 0, "Cut episodes after this many "
                                  "agent steps (CPU budgets); 0 = the protocol's 27,000.")
_BASELINES = flags.DEFINE_list("baselines", [], "Also score: random (uniform policy, same "
                               "protocol), constant (every legal action held for whole "
                               "episodes, the best per game) and/or behaviour (the dataset's "
                               "episode returns, cut at --max_steps_per_episode as the agent's).")
_CACHE = flags.DEFINE_string("baseline_cache", job.default_baseline_cache(),
                             "Where the constant baseline keeps each game's result per protocol "
                             "(computed once); empty: no cache.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset of the behaviour baseline (default: "
                                "the run's config data.data_dir).")
_BEHAVIOUR_MAX = flags.DEFINE_integer("behaviour_max_episodes", 1000,
                                      "Dataset episodes read per game for the behaviour baseline.")
_REPS = flags.DEFINE_integer("bootstrap_reps", job.Request.bootstrap_reps,
                             "Stratified-bootstrap replications of the aggregate CIs.")
_WORKERS = flags.DEFINE_integer("num_workers", 0, "Emulator worker processes (0: in process).")
_MODE = flags.DEFINE_integer("mode", None, "ALE game mode (default: the ROM's, or the variant an "
                             "online fine-tuning run trained on).")
_DIFFICULTY = flags.DEFINE_integer("difficulty", None, "ALE difficulty (default as --mode).")


def main(argv):
  del argv
  app_lib.configure_jax()
  job.evaluate(job.Request(
      checkpoint=_CHECKPOINT.value, games=tuple(_GAMES.value), episodes=_EPISODES.value,
      epsilon=_EPSILON.value, envs_per_game=_ENVS.value, seed=_SEED.value, out=_OUT.value,
      max_steps_per_episode=_MAX_STEPS.value, baselines=tuple(_BASELINES.value),
      data_dir=_DATA_DIR.value, behaviour_max_episodes=_BEHAVIOUR_MAX.value,
      bootstrap_reps=_REPS.value, num_workers=_WORKERS.value, mode=_MODE.value,
      difficulty=_DIFFICULTY.value, baseline_cache=_CACHE.value or None),
      progress=metrics.progress)


if __name__ == "__main__":
  app_lib.run(main)
