"""What a reproduction runs: the `Plan`, its presets (`plan`), and its checks (`check`).

A plan names the games (training games, a held-out game, a game variant), the data-making
agent, the networks to train (method x data split, each from several training seeds), the
model sizes, the transfer budgets and the evaluation protocol. Every claim of the report is
judged over training seeds, so every trained group has at least `seeds` networks; the main
claim's (Scaled QL and BC on the low split) has `claim_seeds`. The counts are fixed here,
before any run, and printed in the report.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from scaled_ql import configs, games

METHODS = {  # name -> (label, loss overrides, model overrides)
    "scaled_ql": ("Scaled QL (C51 + CQL)", {}, {}),
    "bc": ("BC", {"kind": "bc"}, {"num_atoms": 1}),
    "c51": ("offline C51 (CQL alpha 0)", {"cql_alpha": 0.0}, {}),
    "mse_cql": ("MSE + CQL", {"kind": "mse"}, {"num_atoms": 1}),
    "hl_gauss_cql": ("HL-Gauss + CQL", {"kind": "hl_gauss"}, {}),
}
SPLITS = ("low", "all")
# The main claim: Scaled QL > BC and > its data, on the low split.
MAIN_GROUPS = (("scaled_ql", "low"), ("bc", "low"))
# The split of the ablations (C51 vs MSE vs HL-Gauss vs alpha 0): the low split, where the main
# claim is made, so their Scaled QL arm is the main claim's own networks (trained once). On all
# data (6,000 updates a network) they would cost ~45 min more of the default run on this 2-core
# machine (2026-12-06: 12 networks x 6,000 updates at ~6.6 updates/s a core).
ABLATION_SPLIT = "low"
ABLATIONS = ("c51", "mse_cql", "hl_gauss_cql")
# Every claim's networks: the main claim's, Scaled QL on all data (against the best constant
# action; the transfer arms' backbone), and the ablations.
ALL_GROUPS = MAIN_GROUPS + (("scaled_ql", "all"),) + tuple((m, ABLATION_SPLIT)
                                                            for m in ABLATIONS)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a reproduction runs; the presets are `plan(budget)`."""
  train_games: tuple[str, ...]
  heldout_game: str
  variant: tuple[str, int, int]  # (a training game, ALE mode, difficulty) for online transfer
  agent_preset: str  # configs/agent.py preset of the data-making agent
  agent_checkpoints: int  # checkpoints per game-run (the low split: the first 20%)
  agent_steps_per_checkpoint: int
  pretrain_preset: str  # configs/pretrain.py preset the networks start from
  pretrain_steps: int  # updates of every network on the low split (sizes included)
  groups: tuple[tuple[str, str], ...]  # (method, split) trained, each from several seeds
  sizes: tuple[tuple[str, tuple], ...]  # (name, model overrides as (field, value) pairs)
  finetune_offline_steps: int
  finetune_online_env_steps: int
  eval_episodes: int  # per game and network (a group's seeds pool theirs)
  eval_max_steps: int  # agent steps: the cap of every policy's episodes, the data's included
  seed: int = 0
  all_split_steps: int = 0  # updates of the networks on all data (0: pretrain_steps)
  claim_seeds: int = 1  # training seeds of MAIN_GROUPS (seed, seed+1, ...)
  seeds: int = 1  # training seeds of every other network: groups, sizes, transfer arms
  # Online fine-tuning's exploration, per arm: (epsilon at step 0, share of the env-step budget
  # over which it falls linearly to the preset's 0.01). Scratch: the ordinary from-scratch
  # schedule (configs/agent.py falls from 1.0 over 25% of its run; [DQN] 1.0 over 2%).
  # Pre-trained: 0.3 over 10%, chosen on another game's variant (MsPacman mode 2, 10k env
  # steps, 2 seeds; `benchmarks/online_schedule.py`, BUILD_NOTES.md "The online comparison"):
  # greedy return 278 against 273 for 1.0 over 20%, 85 for 0.1 over 10%, 60 for 0.01.
  online_schedule: tuple[tuple[str, float, float], ...] = (("scratch", 1.0, 0.2),
                                                           ("pretrained", 0.3, 0.1))

  def steps(self, split: str) -> int:
    """Updates of a network trained on `split`."""
    return self.all_split_steps if split == "all" and self.all_split_steps \
        else self.pretrain_steps

  @property
  def low_range(self) -> tuple[int, int]:
    return (0, max(1, math.ceil(0.2 * self.agent_checkpoints)) - 1)


# Games where the data-making agent (configs/agent.py:default) clearly improves within 30k env
# steps (measured: that file's docstring, BUILD_NOTES.md "Logged-agent data"). Every setting of
# the `demo` preset and of these plans was chosen on them: the tuning games.
TRAIN_GAMES = ("road_runner", "ms_pacman", "krull", "qbert")
HELDOUT_GAME = "alien"
# Online fine-tuning's variant (training game, ALE mode, difficulty): a variant of a game the
# pre-trained network plays above random. On MsPacman mode 1, whose default mode it played
# below random, both arms stayed below random: BUILD_NOTES.md, "Online fine-tuning's variant".
VARIANT = ("qbert", 0, 1)
# The second set: four other training games of the paper, fixed before any run on them and
# never used for a choice of setting, on which the main claim is judged as it comes out
# (`launch.reproduce --games=second`). Games where data-efficient agents improve on random
# within 100k steps in published Atari-100k results (DER, SPR), chosen from that alone.
SECOND_GAMES = ("breakout", "jamesbond", "kung_fu_master", "up_n_down")
GAME_SETS = {"tuning": TRAIN_GAMES, "second": SECOND_GAMES}

# Rates of one job on one core with another job on the other (the default `--workers=2`), for
# the estimate printed at start (seconds). Measured on the 2-core reference machine on
# 2026-12-06 (the default run's job logs): the agent's data ~400 s a game of 30k env steps; the
# demo preset ~7.7 updates/s on the low split, ~6.6 on all data; an evaluation of 4 games x 5
# episodes capped at 2,500 steps ~45 s (its episodes end sooner). Online: the local replay's
# 2-core rate of 2026-12-05, doubled.
_CORE_SECONDS_PER_AGENT_STEP = 0.0135
_CORE_SECONDS_PER_UPDATE = {"tiny": 0.04, "demo": 0.14}
_CORE_SECONDS_PER_ONLINE_STEP = 0.028
_CORE_SECONDS_PER_EVAL_STEP = 0.0009  # of the step cap x episodes, per policy and game
# One job on both cores (`--workers=1`) against one on one core beside another: 18.0 against
# 12.4 updates/s (2026-12-05, BUILD_NOTES.md "Results a referee can rerun").
_BOTH_CORES_SPEEDUP = 1.45


def plan(budget: str = "default", scale: float = 1.0, seed: int = 0,
         train_games: Optional[Sequence[str]] = None, heldout_game: Optional[str] = None,
         variant: Optional[tuple[str, int, int]] = None, main_claim_only: bool = False) -> Plan:
  """The presets: `test` (seconds, for the test suite), `quick` (~30 min with 2 workers: the
  main claim, Scaled QL vs BC vs the behaviour data on the low split), `default` (~2 h 20 min
  with 2 workers: every claim; the networks on all data get 6,000 updates, BUILD_NOTES.md
  "Learning that beats the best constant action");
  `scale` multiplies the data and update budgets; `train_games`, `heldout_game` and `variant`
  replace the preset's games (`GAME_SETS` names a set); `main_claim_only` trains the main
  claim's networks alone, at the budget's data, updates and seeds."""
  common = dict(seed=seed)
  if budget == "test":
    p = Plan(train_games=("boxing", "breakout"), heldout_game="ms_pacman",
             variant=("breakout", 12, 1),
             agent_preset="tiny", agent_checkpoints=5, agent_steps_per_checkpoint=250,
             pretrain_preset="tiny", pretrain_steps=6,
             groups=MAIN_GROUPS + (("scaled_ql", "all"),),
             sizes=(("s", (("feature_dim", 16),)), ("m", ())),
             finetune_offline_steps=4, finetune_online_env_steps=200, eval_episodes=1,
             eval_max_steps=30, claim_seeds=2, seeds=1, **common)
  elif budget == "quick":
    p = Plan(train_games=TRAIN_GAMES, heldout_game=HELDOUT_GAME, variant=VARIANT,
             agent_preset="default",
             agent_checkpoints=10, agent_steps_per_checkpoint=1_500, pretrain_preset="demo",
             pretrain_steps=2_000, groups=MAIN_GROUPS, sizes=(),
             finetune_offline_steps=0, finetune_online_env_steps=0, eval_episodes=8,
             eval_max_steps=2_500, claim_seeds=3, seeds=3, **common)
  elif budget == "default":
    p = Plan(train_games=TRAIN_GAMES, heldout_game=HELDOUT_GAME, variant=VARIANT,
             agent_preset="default",
             agent_checkpoints=10, agent_steps_per_checkpoint=3_000, pretrain_preset="demo",
             pretrain_steps=2_000, all_split_steps=6_000, groups=ALL_GROUPS,
             sizes=(("small", (("feature_dim", 32), ("spatial_features", 4))), ("medium", ()),
                    ("large", (("feature_dim", 256), ("spatial_features", 16)))),
             finetune_offline_steps=1_000, finetune_online_env_steps=10_000, eval_episodes=5,
             eval_max_steps=2_500, claim_seeds=5, seeds=3, **common)
  else:
    raise ValueError(f"unknown budget {budget!r}; choose test, quick or default.")
  if scale != 1.0:
    if scale <= 0:
      raise ValueError(f"--scale must be positive, got {scale}.")
    p = dataclasses.replace(
        p, agent_steps_per_checkpoint=int(p.agent_steps_per_checkpoint * scale),
        pretrain_steps=int(p.pretrain_steps * scale),
        all_split_steps=int(p.all_split_steps * scale),
        finetune_offline_steps=int(p.finetune_offline_steps * scale),
        finetune_online_env_steps=int(p.finetune_online_env_steps * scale))
  if train_games:
    named = GAME_SETS.get(train_games) if isinstance(train_games, str) else None
    p = dataclasses.replace(p, train_games=tuple(named or games.canonical_names(train_games)))
  if heldout_game:
    p = dataclasses.replace(p, heldout_game=games.get_game(heldout_game).name)
  if variant:
    p = dataclasses.replace(p, variant=(games.get_game(variant[0]).name, int(variant[1]),
                                        int(variant[2])))
  elif train_games and p.variant[0] not in p.train_games:
    p = dataclasses.replace(p, finetune_online_env_steps=0)  # No variant named for these games.
  if main_claim_only:
    p = dataclasses.replace(p, groups=tuple(g for g in p.groups if g in MAIN_GROUPS), sizes=(),
                            finetune_offline_steps=0, finetune_online_env_steps=0)
  return p


def parse_variant(text: str) -> tuple[str, int, int]:
  """'qbert:0:1' -> ("qbert", 0, 1): a game, its ALE mode and difficulty."""
  parts = text.split(":")
  if len(parts) != 3:
    raise ValueError(f"--variant={text!r}: expected GAME:MODE:DIFFICULTY, e.g. qbert:0:1.")
  try:
    return parts[0], int(parts[1]), int(parts[2])
  except ValueError as e:
    raise ValueError(f"--variant={text!r}: mode and difficulty must be integers.") from e


def check(p: Plan) -> None:
  """Raises ValueError for a plan that cannot run, before any work."""
  names = games.canonical_names(p.train_games + (p.heldout_game,))
  if p.heldout_game in p.train_games:
    raise ValueError(f"the held-out game {p.heldout_game} is also a training game.")
  if len(p.train_games) < 2:
    raise ValueError(f"a multi-game plan needs at least 2 training games, got "
                     f"{list(p.train_games)}.")
  if p.finetune_online_env_steps:
    game, mode, difficulty = p.variant
    if games.get_game(game).name not in names[:-1]:
      raise ValueError(f"the variant's game {game} must be a training game {p.train_games}.")
    from scaled_ql import envs  # pylint: disable=g-import-not-at-top
    modes, difficulties = envs.available_variants(game)
    if mode not in modes or difficulty not in difficulties:
      raise ValueError(f"{game} has no variant mode {mode}, difficulty {difficulty}; its ROM "
                       f"offers modes {list(modes)} and difficulties {list(difficulties)}.")
  unknown = [m for m, _ in p.groups if m not in METHODS]
  unknown_splits = [s for _, s in p.groups if s not in SPLITS]
  if unknown or unknown_splits:
    raise ValueError(f"unknown methods {unknown} or splits {unknown_splits}; choose from "
                     f"{list(METHODS)} and {list(SPLITS)}.")
  agent = configs.load(f"configs/agent.py:{p.agent_preset}")
  from scaled_ql.train import logged_agent  # pylint: disable=g-import-not-at-top
  for g in names:
    logged_agent.check(agent, g, p.agent_checkpoints, p.agent_steps_per_checkpoint)
  if p.claim_seeds < 1 or p.seeds < 1:
    raise ValueError(f"claim_seeds and seeds must be at least 1, got {p.claim_seeds} and "
                     f"{p.seeds}.")
  if p.agent_checkpoints < 5:
    raise ValueError(f"{p.agent_checkpoints} checkpoints per run leave no low-quality split "
                     f"(the first 20%) apart from the rest: use at least 5.")


def encoder(p: Plan) -> str:
  """The encoder every network of the plan uses (the agent's and the pre-training preset's)."""
  kinds = {configs.load(f"configs/agent.py:{p.agent_preset}").model.encoder,
           configs.load(f"configs/pretrain.py:{p.pretrain_preset}").model.encoder}
  if len(kinds) != 1:
    raise ValueError(f"the plan mixes encoders {sorted(kinds)}; XLA:CPU's runtime is chosen "
                     f"once per process.")
  return kinds.pop()


def seeds_of(p: Plan, group: tuple[str, str]) -> int:
  return p.claim_seeds if group in MAIN_GROUPS else p.seeds


def seed_stage(name: str, k: int) -> str:
  """The stage of network `name` trained from seed seed+K (K = 0: the plain name)."""
  return name + (f"_seed{k}" if k else "")


def group_stages(p: Plan, group: tuple[str, str]) -> list[str]:
  """The training stages of a (method, split) group, one per seed (seed 0's first)."""
  method, split = group
  return [seed_stage(f"pretrain/{method}_{split}", k) for k in range(seeds_of(p, group))]


def size_is_main_group(p: Plan, overrides) -> bool:
  """Whether a model size is the preset's own, whose networks are Scaled QL's on the low split
  (trained once, for the group and the size sweep)."""
  return not overrides and ("scaled_ql", "low") in p.groups


def size_stages(p: Plan, size: str, overrides) -> list[str]:
  """The training stages of a model size (the preset's own size: Scaled QL on the low split)."""
  if size_is_main_group(p, overrides):
    return group_stages(p, ("scaled_ql", "low"))[:p.seeds]
  return [seed_stage(f"size/{size}", k) for k in range(p.seeds)]


def data_games(p: Plan) -> tuple[str, ...]:
  """The games the data stage makes: the training games, and the held-out game where the plan
  fine-tunes on it offline."""
  return tuple(p.train_games) + ((p.heldout_game,) if p.finetune_offline_steps else ())


def num_networks(p: Plan) -> int:
  """Pre-trained networks of the plan (groups and sizes, every seed)."""
  sizes = sum(p.seeds for _, o in p.sizes if not size_is_main_group(p, o))
  return sum(seeds_of(p, g) for g in p.groups) + sizes


def estimate_seconds(p: Plan, workers: int = 1) -> float:
  """A rough duration on the 2-core reference machine (printed at start): with 2 workers each
  job on one core (the data's games in rounds of two), with 1 each job on both cores."""
  games_n = len(data_games(p))
  per_game = p.agent_checkpoints * p.agent_steps_per_checkpoint * _CORE_SECONDS_PER_AGENT_STEP
  per_update = _CORE_SECONDS_PER_UPDATE.get(p.pretrain_preset, 0.14)
  runs = num_networks(p)
  updates = sum(seeds_of(p, g) * p.steps(g[1]) for g in p.groups) + \
      (runs - sum(seeds_of(p, g) for g in p.groups)) * p.pretrain_steps  # sizes: low split
  train = (updates + 2 * p.seeds * p.finetune_offline_steps) * per_update
  online = 2 * p.seeds * p.finetune_online_env_steps * _CORE_SECONDS_PER_ONLINE_STEP
  cap = p.eval_episodes * p.eval_max_steps * _CORE_SECONDS_PER_EVAL_STEP
  transfer_evals = 2 * p.seeds * (bool(p.finetune_offline_steps)
                                  + 2 * bool(p.finetune_online_env_steps))
  # Baselines, once per game set: random and constant (about 10 actions a game) on the
  # training games, random on the held-out game and the variant.
  baselines = len(p.train_games) * 11 + 2
  jobs = train + online + (runs * len(p.train_games) + transfer_evals + baselines) * cap
  if workers > 1:
    return math.ceil(games_n / 2) * per_game + jobs / 2
  return (games_n * per_game + jobs) / _BOTH_CORES_SPEEDUP
