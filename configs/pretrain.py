"""Pre-training configs: `--config=configs/pretrain.py:PRESET`, any field overridable with
`--config.a.b=value`.

Presets:
  tiny             CPU, seconds: Nature-CNN, 3 games, batch 24. For tests and smoke runs.
  demo             CPU, minutes: Nature-CNN, batch 96 (`make demo`: RoadRunner logged-agent data;
                   `launch.reproduce`'s networks).
  paper_resnet34   the paper's 40 games and stated hyper-parameters, ResNet-34  (~33M params).
  paper_resnet50   the same with ResNet-50                                        (~56M params).
  paper_resnet101  the same with ResNet-101                                       (~75M params).

Sources: [SQL] Kumar et al., "Offline Q-Learning on Diverse Multi-Task Data Both Scales and
Generalizes", ICLR 2023; [C51] Bellemare et al. 2017; [DOP] Dopamine's
C51/Rainbow Atari defaults (google/dopamine, jax agents' gin files); [HLG] Farebrother et al.,
"Stop Regressing: Training Value Functions via Classification for Scalable Deep RL", ICML 2024.
"""
from __future__ import annotations

import ml_collections

from scaled_ql.games import TRAIN_GAMES

PRESETS = ("tiny", "demo", "paper_resnet34", "paper_resnet50", "paper_resnet101")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.games = TRAIN_GAMES  # [SQL] the 40 pre-training games (scaled_ql.games.TRAIN_GAMES).
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "resnet"  # "resnet" | "nature" | "impala".   [SQL] ResNets, Fig. 3.
  c.model.depth = 101  # ResNet depth: 18 | 34 | 50 | 101.          [SQL] 34 / 50 / 101.
  c.model.width = 1.0  # channel-width multiplier of the ResNet.
  # Learned spatial embedding features F and projection width D. [SQL] names the components but
  # not these sizes; F=100, D=128 put the three paper models within 10% of the paper's
  # 31M / 60M / 79M parameters with 40 games (BUILD_NOTES.md, "Parameter counts").
  c.model.spatial_features = 100
  c.model.feature_dim = 128
  c.model.num_atoms = 51  # [C51] 51 atoms.
  # Scale on the unit-norm features going into the heads; 0 = sqrt(feature_dim). [SQL] states
  # none; sqrt(D) gives the features unit RMS per coordinate, the scale the heads' init assumes,
  # and lets a 51-atom softmax learn at the paper's lr (scaled_ql/networks/qnetwork.py; NormFace,
  # Wang et al. 2017, sec. 3.3). 1 = the unscaled form (checkpoints made before this field
  # existed were trained so, and are read so).
  c.model.feature_scale = 0.0
  c.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32).

  c.loss = ml_collections.ConfigDict()
  # "c51" (Scaled QL) | "mse" (MSE TD, [SQL] ablation) | "bc" | "hl_gauss" ([HLG]: the scalar
  # TD target as a Gaussian histogram, sigma = 0.75 bin widths, over model.num_atoms bins of
  # [v_min, v_max]; cross-entropy; CQL as for C51).
  c.loss.kind = "c51"
  # CQL weight. [SQL]'s main text gives no single value; 0.1 is the Atari setting of Kumar et
  # al. 2022 ("Should I Run Offline RL or BC?"), the CQL code base [SQL] builds on.
  # 0 = plain offline C51 (an [SQL] baseline).
  c.loss.cql_alpha = 0.1
  c.loss.v_min = -10.0  # [C51] support [-10, 10] (rewards clipped to [-1, 1]).
  c.loss.v_max = 10.0
  c.loss.gamma = 0.99  # [DOP] discount.
  c.loss.n_step = 3  # [DOP] update_horizon = 3 for C51/Rainbow.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-4  # [SQL] Adam, lr 2e-4 at batch 512.
  c.optimizer.adam_eps = 3.125e-4  # [DOP] 0.01 / 32 for C51.
  c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping. [SQL] states none.

  c.batch_size = 512  # [SQL] 16x the single-game batch of 32.
  c.target_update_period = 2000  # [SQL] target network copied every 2,000 gradient steps.
  c.num_steps = 1_000_000  # gradient steps. Not a paper value: set it for your compute budget.

  c.data = ml_collections.ConfigDict()
  # A directory of datasets: our own (`launch.make_dataset`) or prepared TFDS rlu_atari,
  # rlu_atari_checkpoints or rlu_atari_checkpoints_ordered directories.
  c.data.data_dir = ""
  c.data.runs = (1, 2, 3, 4, 5)  # DQN Replay runs per game. [SQL] near-optimal data: all runs.
  # Checkpoint ids kept, (first, last) inclusive; () = all. [SQL] low-quality data: (0, 9).
  c.data.checkpoint_range = ()
  # Frames held in host RAM per game (~7.1 KB each). 200k x 40 games = 57 GB per host; each
  # host holds its own share of the episodes.
  c.data.pool_frames_per_game = 200_000
  c.data.refresh_every = 100  # sampling steps between pool refreshes from the stream.
  # Replay ratio: each stored transition is sampled about this many times before it is evicted
  # (each refresh ingests the transitions sampled since the last one divided by it); 0 = ingest
  # refresh_episodes episodes per game per refresh instead. Not a paper value: [SQL] samples
  # all of its data uniformly, so this is set for one pass over the selection per run:
  # 1M steps x 512 samples / (40 games x 5 runs x 50 checkpoints x 1M transitions) = 0.051.
  # `sampler.steps_per_pass()` gives the steps one pass takes for the data on disk.
  c.data.samples_per_transition = 0.05
  c.data.refresh_episodes = 1  # episodes streamed in per game at each refresh (see above).
  c.data.game_weights = ()  # relative samples per game; () = equal.
  c.data.prefetch = 2  # batches prepared ahead in a background thread.

  c.parallel = ml_collections.ConfigDict()
  c.parallel.model_axis_size = 1  # devices per parameter shard (within a host); 1 = replicate.
  c.parallel.min_shard_size = 2**18  # arrays with fewer elements stay replicated.

  c.checkpoint_every = 5000  # steps between (asynchronous) checkpoints.
  c.keep_checkpoints = 3
  c.log_every = 100  # steps between TensorBoard scalars.

  # Evaluation during pre-training (scaled_ql.evaluation.periodic): every `eval_every` steps
  # (0 = never) the current parameters play every game under the evaluation protocol; scores go
  # to TensorBoard (eval/iqm, eval/median, eval/mean, eval/hns/<game>, eval/return/<game>) and
  # WORKDIR/eval.jsonl (learning curves in launch.report).
  c.eval_every = 0
  c.eval = ml_collections.ConfigDict()
  c.eval.episodes_per_game = 2  # few: a trend; `launch.evaluate` gives the result to report.
  c.eval.envs_per_game = 2
  c.eval.epsilon = 0.001  # [SQL] evaluation epsilon (the Machado et al. 2018 protocol).
  c.eval.max_steps_per_episode = 0  # 0 = the protocol's 27,000 agent steps (108,000 frames).
  c.eval.seed = 0
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "tiny"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/pretrain.py; choose one of {PRESETS}.")
  c = _base()
  c.preset = preset
  if preset.startswith("paper_resnet"):
    c.model.depth = int(preset[len("paper_resnet"):])
  elif preset == "tiny":
    c.games = ("pong", "breakout", "freeway")
    c.model.encoder = "nature"
    c.model.spatial_features = 4
    c.model.feature_dim = 32
    c.batch_size = 24
    c.target_update_period = 10
    c.num_steps = 20
    c.data.runs = (1,)
    c.data.pool_frames_per_game = 5000
    c.data.refresh_every = 10
    c.data.samples_per_transition = 0.0  # a few episodes per refresh: seconds-long runs.
    c.checkpoint_every = 10
    c.log_every = 5
  elif preset == "demo":
    c.games = ("road_runner",)
    c.model.encoder = "nature"
    c.model.spatial_features = 8
    c.model.feature_dim = 64
    c.batch_size = 96
    c.target_update_period = 250
    c.optimizer.learning_rate = 5e-4
    # Small data of agents that learn (6k-30k transitions per game): 10-step returns (as the
    # data-making agent, configs/agent.py) and a CQL weight of 0.01. On the low split of
    # `launch.reproduce`'s data (4 games, 6k transitions each, 2,000 updates, seed 0), IQM HNS
    # by alpha with n-step 10: 0 -> 0.057, 0.01 -> 0.080, 0.03 -> 0.036, 0.1 -> -0.015,
    # 1.0 -> -0.006 (behaviour data 0.003): at 0.1 and above, the penalty ranks actions by how
    # often the data takes them (softmax(Q) pulled to the data's action frequencies) and the
    # greedy policy plays the early agent's most frequent action in every state (BUILD_NOTES.md,
    # "The demo preset's loss on logged-agent data"). n-step 3 at alpha 0.1: -0.023.
    c.loss.n_step = 10
    c.loss.cql_alpha = 0.01
    # 6,000 updates: at 2,000 the greedy policies mostly press one button (`make demo`'s agent
    # took one action in 91% of its steps and tied the best constant action, 940); at 6,000
    # they act on the state (BUILD_NOTES.md, "Learning that beats the best constant action").
    c.num_steps = 6000
    c.data.runs = (1,)
    # A logged-agent game-run of up to ~32k steps (`make demo`: 20k; `launch.reproduce`: 30k)
    # fits whole in its pool (~0.23 GB per game).
    c.data.pool_frames_per_game = 32_000
    c.data.refresh_every = 0  # the demo dataset fits in the pools.
    c.data.samples_per_transition = 0.0  # no refresh.
    c.checkpoint_every = 500
    c.log_every = 50
  return c
