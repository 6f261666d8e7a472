"""The paper's claims at laptop scale, in one command (`launch.reproduce`).

Stages, each in its own folder of the work directory, cached and resumable (`stages`: a stage
whose `stage.json` says done with the same settings and provenance is kept; a training stage
interrupted midway resumes from its own checkpoints; a stage folder made with other settings,
or under another JAX, XLA:CPU runtime or code, is refused, never silently reused):

  data/              logged-agent datasets (an online C51 agent learning each game from
                     scratch, its run cut into checkpoints): the training games and the
                     held-out game (`train.logged_agent`), with a SHA-256 per split;
  pretrain/M_SPLIT[_seedK]  the networks of every (method, split) group of the plan, each from
                     several training seeds (the main claim's, Scaled QL and BC on the `low`
                     split, from `claim_seeds`; the rest from `seeds`);
  size/S[_seedK]     Scaled QL on the low split at other model sizes (a power law of score
                     against parameters);
  baselines/         the random policy, the best constant action and the behaviour data of
                     each split, once per game set and protocol;
  transfer/...       the Scaled QL backbone exported, then fine-tuned offline on the held-out
                     game and online on a game variant, each beside scratch at the same budget,
                     every arm from `seeds` seeds; the pre-trained network's zero-shot score;
  eval/...           every network in the emulator under one protocol;
  report/            report.md, CSV and PNG files, and the table "claim | paper | here | holds",
                     every verdict judged over training seeds (`report`).

Modules: `plans` (what runs: presets, game sets, checks), `stages` (folders, settings,
provenance), `run` (the stages in order), `report`.
"""
from scaled_ql.reproduce.plans import (ALL_GROUPS, GAME_SETS, HELDOUT_GAME, MAIN_GROUPS, METHODS,
                                      SECOND_GAMES, SPLITS, TRAIN_GAMES, VARIANT, Plan, check,
                                      data_games, encoder, estimate_seconds, group_stages,
                                      num_networks, parse_variant, plan, seed_stage,
                                      size_stages)
from scaled_ql.reproduce.run import reproduce, split_digests
from scaled_ql.reproduce.stages import STAGE_FILE, Stages
