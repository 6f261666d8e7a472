"""The online agent whose replay becomes a logged-agent dataset
(`launch.make_dataset --source=agent --agent_config=configs/agent.py:PRESET`).

As the DQN Replay Dataset is the replay of DQN agents learning each game, a logged-agent
dataset is every transition an online C51 agent plays while it learns from scratch, its
training run cut into `checkpoints_per_run` segments (checkpoint_id = segment): early
checkpoints are a bad but trying agent, later ones better play. The agent is the framework's
own network, loss and update step (`scaled_ql.learner`), acting epsilon-greedily in
`VectorAtariEnv`, learning from a FIFO replay of its most recent episodes (`data.FramePool`).

Presets:
  default  CPU budget: Nature-CNN, 1 emulator, 1 update per 4 env steps, batch 32.
  tiny     tests: a smaller network, short warm-up.

Sources: [DQN] Mnih et al. 2015 (replay ratio 1 update / 4 env steps, epsilon to 0.01 over the
first part of training, target network); [C51] Bellemare et al. 2017; [DOP] Dopamine's C51
defaults (n-step 3 in its Rainbow/C51 JAX agents, Adam eps 0.01/32); [DER] van Hasselt et al.
2019, "When to use parametric models in RL?" (data-efficient settings: small warm-up, faster
target updates, lr 1e-4); [SPR] Schwarzer et al. 2021 (DER with n-step 10, Dopamine's DER.gin);
[DRQE] Agarwal et al. 2021, DrQ(epsilon) (n-step 10, epsilon to 0.01 over 5k steps).

Measured (30k env steps, 10 checkpoints, seed 0; mean return of the episodes ended in the
first and the last checkpoint; random policy; Dopamine's DER at 30k steps): RoadRunner
33 -> 1,400 (random 12; DER 1,833); MsPacman 362 -> 737 (307; 917); Krull 1,640 -> 2,507
(1,598; 3,186); Qbert 263 -> 306 (164; 538). See BUILD_NOTES.md, "Logged-agent data".
"""
from __future__ import annotations

import ml_collections

from scaled_ql.configs import pretrain

PRESETS = ("default", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/agent.py; choose one of {PRESETS}.")
  base = pretrain.get_config("demo")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.model = base.model  # Nature-CNN, F=8, D=64, 51 atoms (the demo network).
  c.loss = base.loss
  c.loss.cql_alpha = 0.0  # An online agent: plain C51 ([C51]), no conservative penalty.
  # n-step 10 ([DER] as run by [SPR]; [DRQE]): rewards reach the early states in few updates.
  c.loss.n_step = 10
  c.optimizer = base.optimizer
  c.optimizer.learning_rate = 1e-4  # [DER]
  c.optimizer.adam_eps = 3.125e-4  # [DOP] 0.01 / 32.
  c.batch_size = 32  # [DQN]
  c.update_every = 4  # env steps (all envs together) per gradient update. [DQN] 4.
  c.target_update_period = 500  # gradient steps. [DER] faster than [DQN]'s 10k frames.
  # Emulators stepped together. [DQN] plays 1; more means more parallel episodes, but the replay
  # only receives finished episodes, so the first updates wait for num_envs x episode length.
  c.num_envs = 1
  c.replay_frames = 100_000  # the FIFO replay of recent episodes, in frames (~7 KB each).
  c.min_replay_transitions = 1_600  # warm-up before the first update. [DER] 1,600.
  c.epsilon_start = 1.0  # [DQN]
  c.epsilon_end = 0.01  # [DQN]
  # Of the run's env steps, linearly. [DQN] 1M of 50M frames (2%), [DER] 2k of 100k steps (2%).
  # Measured at 30k steps (BUILD_NOTES.md, "Logged-agent data"): 5% gives the cleaner learning
  # curves (RoadRunner 175 -> 2,167, MsPacman 286 -> 1,068), 25% (this default) still clear
  # ones (33 -> 1,400, 362 -> 737) and data whose first quarter is exploration, on which
  # `make demo`'s offline agent scored above the data's mean return (RoadRunner at 20k steps:
  # 887.5 vs 325, CIs apart; 825.0 vs 735.4 in another run, CIs overlapping); on 5%-decay
  # data it did not (412.5 vs 507.5).
  c.epsilon_decay_fraction = 0.25
  c.max_episode_frames = 108_000  # emulator frames before an episode is truncated.
  if preset == "tiny":
    c.model.spatial_features, c.model.feature_dim = 4, 32
    c.batch_size = 16
    c.min_replay_transitions = 64
    c.target_update_period = 20
    c.num_envs = 2
    c.replay_frames = 5_000
    c.max_episode_frames = 400  # 100 agent steps: several episodes per test checkpoint.
  return c
