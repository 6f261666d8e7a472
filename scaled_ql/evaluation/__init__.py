"""Evaluation: emulator rollouts of the multi-game policy, human-normalized scores, IQM with
confidence intervals (rliable), baselines, tables and plots.

Modules, in the order data flows through them:
  restore    a pre-training checkpoint -> network, parameters, game list (read-only);
  policy     the greedy policy over legal actions, jitted once for all games;
  rollout    N episodes per game through one VectorAtariEnv (sticky actions, 108k-frame cap,
             epsilon-greedy, seeds recorded);
  scores     per-game raw / normalized scores, IQM / median / mean with stratified-bootstrap CIs;
  results    an `Evaluation` (one policy's scores) and its JSON / CSV files;
  baselines  the random policy and the behaviour data;
  periodic   evaluation during pre-training (TensorBoard scalars, eval.jsonl);
  tables     text / Markdown tables;  plots  PNG figures (matplotlib, imported on use).
"""
from scaled_ql import _lazy

# Names resolved on first use (PEP 562): `scaled_ql.evaluation.policy` (the greedy policy on an
# accelerator) imports without the emulator (ale-py), rliable or pandas.
_EXPORTS = {
    "baselines": ("BEHAVIOUR", "CONSTANT", "RANDOM", "behaviour_data", "constant_action",
                  "random_policy"),
    "periodic": ("EVAL_LOG", "append_jsonl", "evaluate_during_training", "scalars"),
    "policy": ("GreedyFn", "action_values", "fixed_action_policy", "head_indices",
               "make_greedy_policy"),
    "restore": ("CheckpointError", "EvalCheckpoint", "load"),
    "results": ("Evaluation", "from_rollouts", "pooled", "read", "write"),
    "rollout": ("DEFAULT_EPSILON", "Episode", "Rollouts", "Settings", "check_budget",
                "run_episodes"),
    "scores": ("Aggregates", "Estimate", "GameScore", "aggregate", "aggregate_runs", "game_score",
               "normalize", "score_matrix"),
    "tables": ("aggregate_table", "comparison_table", "game_table", "notes"),
    "job": (),  # the evaluation job of launch.evaluate
}
__getattr__, __dir__, __all__ = _lazy.exports(__name__, _EXPORTS)
