"""Fine-tuning configs: `--config=configs/finetune.py:PRESET --backbone=ARTIFACT`.

A fine-tuning config is a pre-training config (configs/pretrain.py: model, loss, optimizer,
data, parallel, checkpoints, eval, with the same meanings) plus `finetune`:

  finetune.init             "pretrained": the backbone from the artifact (--backbone);
                            "scratch": the same architecture, randomly initialised (the
                            baseline every fine-tuning result is compared with).
  finetune.freeze_backbone  train only the heads (the backbone's parameters stay as loaded).
  finetune.reuse_heads      target games the artifact has heads for start from those heads;
                            other games (unseen ones) get new, randomly initialised heads.

The architecture (encoder, depth, width, spatial_features, feature_dim) always comes from the
artifact, also for "scratch", so both arms of a comparison are the same network.

Offline presets (the data: `config.data`, as in pre-training):
  offline_cpu            CPU, minutes: one unseen game (Space Invaders) from a small
                         emulator dataset (`python -m launch.make_dataset`).
  offline_alien, offline_ms_pacman, offline_pong, offline_space_invaders, offline_star_gunner:
                         [SQL]'s held-out games with its data budget of 2M transitions per game
                         (here: the DQN Replay run 1's last two checkpoint buffers, 48 and 49,
                         ~1M transitions each, all resident in the pool).
Online presets (see launch/finetune.py): online_cpu, online_freeway, online_hero,
  online_breakout; `--config.online.replay=local|reverb` picks the replay backend.

Sources: [SQL] Kumar et al., ICLR 2023 (Sec. 5.2-5.3); [DOP] Dopamine's C51 defaults.
"""
from __future__ import annotations

import ml_collections

from scaled_ql.configs import pretrain

HELDOUT = ("alien", "ms_pacman", "pong", "space_invaders", "star_gunner")  # [SQL] Sec. 5.2.
# [SQL] Sec. 5.3 fine-tunes online on variants (ALE modes / difficulties) of these games; the
# (mode, difficulty) pairs are ones these ROMs have (scaled_ql.envs.available_variants).
VARIANTS = {"freeway": (1, 1), "hero": (1, 0), "breakout": (12, 1)}
OFFLINE_PRESETS = ("offline_cpu",) + tuple(f"offline_{g}" for g in HELDOUT)
ONLINE_PRESETS = ("online_cpu",) + tuple(f"online_{g}" for g in VARIANTS)
PRESETS = OFFLINE_PRESETS + ONLINE_PRESETS


def _base() -> ml_collections.ConfigDict:
  c = pretrain.get_config("paper_resnet101")
  c.finetune = ml_collections.ConfigDict()
  c.finetune.backbone = ""  # artifact directory (launch.export); --backbone sets it too.
  c.finetune.init = "pretrained"  # "pretrained" | "scratch".
  c.finetune.freeze_backbone = False
  c.finetune.reuse_heads = True
  c.finetune.mode = "offline"  # "offline" | "online" (set by the preset).

  c.online = ml_collections.ConfigDict()
  c.online.game = ""  # the variant's game (config.games is set to (game,)).
  c.online.mode = -1  # ALE game mode; -1 = the ROM's default.
  c.online.difficulty = -1  # ALE difficulty; -1 = the ROM's default.
  c.online.env_steps = 20_000  # agent steps in the emulator (all actors). [SQL] 20k.
  c.online.num_actors = 2  # actor processes (local: num_actors x envs_per_actor emulators).
  c.online.envs_per_actor = 4  # emulators stepped together in one actor.
  # The replay backend (scaled_ql/train/online.py): "local" (one process, no Reverb, every
  # stack) or "reverb" (a Reverb server and actor processes; needs dm-reverb: the pinned stack).
  # A config value, never guessed from what is installed: one command, one kind of run.
  c.online.replay = "local"
  c.online.epsilon_start = 1.0  # exploration at env step 0 (with epsilon_decay_steps > 0).
  c.online.epsilon = 0.01  # exploration while acting (after the decay).
  c.online.epsilon_decay_steps = 0  # epsilon_start -> epsilon over these env steps (0 = none).
  c.online.publish_every = 50  # learner steps between parameter publications to the actors.
  c.online.replay_address = ""  # reverb: host:port of a running server; "" = start one.
  c.online.replay_size = 100_000  # online transitions held (FIFO).
  c.online.min_replay_size = 500  # online transitions before the learner samples.
  c.online.samples_per_insert = 8.0  # rate limiter: sampled / inserted transitions.
  c.online.offline_transitions = 0  # offline transitions (config.data) inserted before acting.
  c.online.keep_offline = True  # offline data in its own table, sampled alongside online data.
  c.online.offline_fraction = 0.25  # share of each batch from the offline table.
  c.online.restart_actors = True  # restart a dead actor (else the rest go on; said in the log).
  c.online.timeout_s = 120.0  # reverb: longest wait for data / the server before giving up.
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "offline_cpu"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/finetune.py; choose one of "
                     f"{PRESETS}.")
  c = _base()
  c.preset = preset
  c.eval.episodes_per_game = 4
  if preset in OFFLINE_PRESETS:
    c.finetune.mode = "offline"
    if preset == "offline_cpu":
      _cpu(c)
      c.games = ("space_invaders",)  # unseen by the `demo` pre-training (road_runner)
      c.data.runs = (1,)
      c.data.pool_frames_per_game = 20_000
      c.data.refresh_every = 0
      c.data.samples_per_transition = 0.0  # no refresh: the small dataset is resident.
    else:
      c.games = (preset[len("offline_"):],)
      c.data.runs = (1,)
      c.data.checkpoint_range = (48, 49)
      c.data.pool_frames_per_game = 2_000_000
      c.data.refresh_every = 0  # the budget is resident: nothing else is read.
      c.data.samples_per_transition = 0.0
      c.batch_size = 32  # [SQL] single-game batch.
      c.num_steps = 300_000  # not a paper value: set it for your budget.
      c.eval_every = 25_000
  else:
    c.finetune.mode = "online"
    c.data.data_dir = ""
    if preset == "online_cpu":
      _cpu(c)
      c.online.game = "freeway"
      c.online.mode, c.online.difficulty = VARIANTS["freeway"]
      c.data.runs = (1,)  # for online.offline_transitions from a small emulator dataset
      c.online.env_steps = 20_000  # [SQL]'s budget; ~10 Freeway episodes per emulator.
      c.online.num_actors = 2
      c.online.envs_per_actor = 2
      c.online.replay_size = 20_000
      c.online.min_replay_size = 500
      c.online.publish_every = 20
      c.batch_size = 32
      c.num_steps = 5000  # env_steps x samples_per_insert / batch
    else:
      game = preset[len("online_"):]
      c.online.game = game
      c.online.mode, c.online.difficulty = VARIANTS[game]
      c.batch_size = 32
      c.num_steps = 5000  # env_steps x samples_per_insert / batch = 20k x 8 / 32
    c.games = (c.online.game,)
  return c


def _cpu(c: ml_collections.ConfigDict) -> None:
  """Laptop scale, for a backbone pre-trained with configs/pretrain.py:demo, and with its loss
  (n-step 10, CQL alpha 0.01: BUILD_NOTES.md, "The demo preset's loss on logged-agent data").
  Measured, offline on Alien's 30k-step logged-agent data, 1,000 updates from
  `launch.reproduce`'s backbone: 252.5 (pre-trained) vs 46.2 (scratch); with the paper's
  n-step 3 and alpha 0.1, 48.8 vs 46.3, both far below the data's 257.9."""
  demo_loss = pretrain.get_config("demo").loss
  c.loss.n_step, c.loss.cql_alpha = demo_loss.n_step, demo_loss.cql_alpha
  c.model.num_atoms = 51
  c.batch_size = 64
  c.target_update_period = 100
  c.optimizer.learning_rate = 5e-4
  c.num_steps = 1000
  c.checkpoint_every = 250
  c.log_every = 50
  c.eval_every = 0
  c.eval.episodes_per_game = 4
  c.eval.envs_per_game = 4
  c.eval.max_steps_per_episode = 2500
