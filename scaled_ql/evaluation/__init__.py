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
from scaled_ql.evaluation.baselines import BEHAVIOUR, RANDOM, behaviour_data, random_policy
from scaled_ql.evaluation.periodic import (EVAL_LOG, append_jsonl, evaluate_during_training,
                                           scalars)
from scaled_ql.evaluation.policy import (GreedyFn, action_values, fixed_action_policy,
                                         head_indices, make_greedy_policy)
from scaled_ql.evaluation.restore import CheckpointError, EvalCheckpoint, load
from scaled_ql.evaluation.results import Evaluation, from_rollouts, read, write
from scaled_ql.evaluation.rollout import (DEFAULT_EPSILON, Episode, Rollouts, Settings,
                                          check_budget, run_episodes)
from scaled_ql.evaluation.scores import (Aggregates, Estimate, GameScore, aggregate, game_score,
                                         normalize, score_matrix)
from scaled_ql.evaluation.tables import aggregate_table, comparison_table, game_table, notes
