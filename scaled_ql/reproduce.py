"""The paper's claims at laptop scale, in one command (`launch.reproduce`).

Stages, each in its own folder of the work directory, cached and resumable (a stage whose
`stage.json` says done is skipped; a training stage interrupted midway resumes from its own
checkpoints; a stage folder made with other settings is refused, never silently reused):

  data/              logged-agent datasets (an online C51 agent learning each game from
                     scratch, its run cut into checkpoints): the training games and the
                     held-out game (`train.logged_agent`);
  pretrain/M_SPLIT   one multi-game network per method M on each split: `low` (the first 20%
                     of the checkpoints: the paper's low-quality data) and `all`;
  pretrain/M_low_seedK  the main claim's methods (Scaled QL, BC) on the low split, trained
                     again from seeds seed+K (K = 1 .. claim_seeds-1): the claim is judged on
                     all their runs, with CIs over training seeds;
  size/S             Scaled QL on the low split at three model sizes (a power law of score
                     against parameters);
  transfer/...       the `all`-split Scaled QL backbone exported, then fine-tuned offline on the
                     held-out game and online on a game variant, each beside scratch at the same
                     budget;
  eval/...           every network in the emulator, with the behaviour data of its split and the
                     random policy beside it;
  report/            report.md, CSV and PNG files, and the table "claim | paper | here | holds".

Methods (`loss` overrides of the pre-training config): Scaled QL (C51 + CQL), BC, offline C51
(CQL alpha 0), MSE + CQL, HL-Gauss + CQL.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np

from scaled_ql import configs, errors, export, games
from scaled_ql.evaluation import job as eval_job
from scaled_ql.evaluation import report as report_lib
from scaled_ql.evaluation import results, tables
from scaled_ql.train import finetuning, logged_agent, loop

STAGE_FILE = "stage.json"

METHODS = {  # name -> (label, loss overrides, model overrides)
    "scaled_ql": ("Scaled QL (C51 + CQL)", {}, {}),
    "bc": ("BC", {"kind": "bc"}, {"num_atoms": 1}),
    "c51": ("offline C51 (CQL alpha 0)", {"cql_alpha": 0.0}, {}),
    "mse_cql": ("MSE + CQL", {"kind": "mse"}, {"num_atoms": 1}),
    "hl_gauss_cql": ("HL-Gauss + CQL", {"kind": "hl_gauss"}, {}),
}
SPLITS = ("low", "all")
CLAIM_METHODS = ("scaled_ql", "bc")  # The main claim: Scaled QL > BC and > data, low split.


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
  pretrain_steps: int
  methods: tuple[str, ...]
  splits: tuple[str, ...]
  sizes: tuple[tuple[str, tuple], ...]  # (name, model overrides as (field, value) pairs)
  finetune_offline_steps: int
  finetune_online_env_steps: int
  eval_episodes: int
  eval_max_steps: int
  seed: int = 0
  claim_seeds: int = 1  # Training seeds of CLAIM_METHODS on the low split (seed, seed+1, ...).

  @property
  def low_range(self) -> tuple[int, int]:
    return (0, max(1, math.ceil(0.2 * self.agent_checkpoints)) - 1)


# Games where the data-making agent (configs/agent.py:default) clearly improves within 30k env
# steps (measured: that file's docstring, BUILD_NOTES.md "Logged-agent data").
TRAIN_GAMES = ("road_runner", "ms_pacman", "krull", "qbert")
HELDOUT_GAME = "alien"
# Online fine-tuning's variant (training game, ALE mode, difficulty): a variant of a game the
# pre-trained network plays above random (Qbert 350 vs random 164 in the default run). On
# MsPacman mode 1, whose default mode it played below random (172.5 vs 307.3), both arms
# stayed below random (pre-trained 102.5, scratch 211.3, random 712.5): BUILD_NOTES.md,
# "Online fine-tuning's variant". Qbert's difficulty 1 plays differently from its default
# (the same seed and actions diverge after ~290 steps).
VARIANT = ("qbert", 0, 1)

# Rates measured on the 2-core reference machine, for the estimate printed at start (seconds).
# (2026-11-27, default run: the agent ~115 env steps/s, the demo preset ~15 updates/s, an
# evaluation of 4 games x 8 episodes capped at 2,500 steps ~65 s, as its episodes end sooner.)
_SECONDS_PER_AGENT_STEP = 0.0087
_SECONDS_PER_UPDATE = {"tiny": 0.02, "demo": 0.067}
_SECONDS_PER_EVAL_STEP = 0.0009  # of the step cap: agent, random and behaviour together.


def plan(budget: str = "default", scale: float = 1.0, seed: int = 0) -> Plan:
  """The presets: `test` (seconds, for the test suite), `quick` (~30 min: the main claim,
  Scaled QL vs BC vs the behaviour data on the low split), `default` (~2 h: every claim);
  `scale` multiplies the data and update budgets."""
  common = dict(seed=seed)
  if budget == "test":
    p = Plan(train_games=("boxing", "breakout"), heldout_game="ms_pacman",
             variant=("breakout", 12, 1),
             agent_preset="tiny", agent_checkpoints=5, agent_steps_per_checkpoint=250,
             pretrain_preset="tiny", pretrain_steps=6, methods=("scaled_ql", "bc"),
             splits=SPLITS, sizes=(("s", (("feature_dim", 16),)), ("m", ())),
             finetune_offline_steps=4, finetune_online_env_steps=200, eval_episodes=1,
             eval_max_steps=30, claim_seeds=2, **common)
  elif budget == "quick":
    p = Plan(train_games=TRAIN_GAMES, heldout_game=HELDOUT_GAME, variant=VARIANT,
             agent_preset="default",
             agent_checkpoints=10, agent_steps_per_checkpoint=1_500, pretrain_preset="demo",
             pretrain_steps=2_000, methods=("scaled_ql", "bc"), splits=("low",), sizes=(),
             finetune_offline_steps=0, finetune_online_env_steps=0, eval_episodes=8,
             eval_max_steps=2_500, claim_seeds=3, **common)
  elif budget == "default":
    p = Plan(train_games=TRAIN_GAMES, heldout_game=HELDOUT_GAME, variant=VARIANT,
             agent_preset="default",
             agent_checkpoints=10, agent_steps_per_checkpoint=3_000, pretrain_preset="demo",
             pretrain_steps=2_000, methods=tuple(METHODS), splits=SPLITS,
             sizes=(("small", (("feature_dim", 32), ("spatial_features", 4))), ("medium", ()),
                    ("large", (("feature_dim", 256), ("spatial_features", 16)))),
             finetune_offline_steps=1_000, finetune_online_env_steps=10_000, eval_episodes=8,
             eval_max_steps=2_500, claim_seeds=5, **common)
  else:
    raise ValueError(f"unknown budget {budget!r}; choose test, quick or default.")
  if scale != 1.0:
    if scale <= 0:
      raise ValueError(f"--scale must be positive, got {scale}.")
    p = dataclasses.replace(
        p, agent_steps_per_checkpoint=int(p.agent_steps_per_checkpoint * scale),
        pretrain_steps=int(p.pretrain_steps * scale),
        finetune_offline_steps=int(p.finetune_offline_steps * scale),
        finetune_online_env_steps=int(p.finetune_online_env_steps * scale))
  return p


def check(p: Plan) -> None:
  """Raises ValueError for a plan that cannot run, before any work."""
  names = games.canonical_names(p.train_games + (p.heldout_game,))
  if p.heldout_game in p.train_games:
    raise ValueError(f"the held-out game {p.heldout_game} is also a training game.")
  game, mode, difficulty = p.variant
  if games.get_game(game).name not in names[:-1]:
    raise ValueError(f"the variant's game {game} must be a training game {p.train_games}.")
  from scaled_ql import envs  # pylint: disable=g-import-not-at-top
  modes, difficulties = envs.available_variants(game)
  if mode not in modes or difficulty not in difficulties:
    raise ValueError(f"{game} has no variant mode {mode}, difficulty {difficulty}; its ROM offers "
                     f"modes {list(modes)} and difficulties {list(difficulties)}.")
  if p.finetune_online_env_steps:
    import importlib.util  # pylint: disable=g-import-not-at-top
    if importlib.util.find_spec("reverb") is None:
      raise ValueError("the online transfer stage needs Reverb, which is not installed: install "
                       "the pinned stack with the `online` extra (Python 3.11), or leave that "
                       "stage out (finetune_online_env_steps=0).")
  unknown = [m for m in p.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}.")
  agent = configs.load(f"configs/agent.py:{p.agent_preset}")
  for g in names:
    logged_agent.check(agent, g, p.agent_checkpoints, p.agent_steps_per_checkpoint)
  if p.claim_seeds < 1:
    raise ValueError(f"claim_seeds must be at least 1, got {p.claim_seeds}.")
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


def _seed_runs(p: Plan) -> list[tuple[str, int]]:
  """(method, K) of the extra-seed networks of the main claim (`claim_seeds`)."""
  if "low" not in p.splits:
    return []
  return [(m, k) for m in CLAIM_METHODS if m in p.methods for k in range(1, p.claim_seeds)]


def _seed_stage(method: str, k: int) -> str:
  """The training stage of `method` on the low split from seed seed+K (K = 0: the split's)."""
  return f"pretrain/{method}_low" + (f"_seed{k}" if k else "")


def seed_stages(p: Plan, method: str) -> list[str]:
  """The training stages of `method` on the low split, one per seed (seed 0's first)."""
  return [_seed_stage(method, 0)] + [_seed_stage(m, k) for m, k in _seed_runs(p) if m == method]


def data_games(p: Plan) -> tuple[str, ...]:
  """The games the data stage makes: the training games, and the held-out game where the plan
  fine-tunes on it offline."""
  return tuple(p.train_games) + ((p.heldout_game,) if p.finetune_offline_steps else ())


def estimate_seconds(p: Plan) -> float:
  """A rough duration on the 2-core reference machine (printed at start)."""
  games_n = len(data_games(p))
  data = games_n * p.agent_checkpoints * p.agent_steps_per_checkpoint * _SECONDS_PER_AGENT_STEP
  per_update = _SECONDS_PER_UPDATE.get(p.pretrain_preset, 0.06)
  runs = len(p.methods) * len(p.splits) + len(p.sizes) + len(_seed_runs(p))
  train = runs * p.pretrain_steps * per_update + 2 * p.finetune_offline_steps * per_update
  online = 2 * p.finetune_online_env_steps * _SECONDS_PER_AGENT_STEP
  transfer_evals = 2 * (bool(p.finetune_offline_steps) + bool(p.finetune_online_env_steps))
  evals = (runs * len(p.train_games) + transfer_evals) * p.eval_episodes * p.eval_max_steps \
      * _SECONDS_PER_EVAL_STEP
  return data + train + online + evals


class Stages:
  """The stage folders of a work directory: settings checked, done markers, skip when done.

  Paths inside the work directory are kept in `stage.json` relative to it ("{workdir}/..."),
  so a work directory moved or copied elsewhere resumes where it stopped."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print):
    self.workdir, self.log = os.path.abspath(workdir), log
    os.makedirs(workdir, exist_ok=True)

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def _portable(self, value):
    """`value` as JSON data, every path under the work directory written relative to it."""
    prefix = self.workdir + os.sep
    return _map_strings(json.loads(json.dumps(value)), lambda s: WORKDIR_TAG + s[len(self.workdir):]
                        if s == self.workdir or s.startswith(prefix) else s)

  def _resolve(self, value):
    return _map_strings(value, lambda s: self.workdir + s[len(WORKDIR_TAG):]
                        if s.startswith(WORKDIR_TAG) else s)

  def run(self, name: str, settings: dict, fn: Callable[[str], dict]) -> dict:
    """fn(folder) -> result dict, unless the stage is done with these settings."""
    folder = self.path(name)
    marker = os.path.join(folder, STAGE_FILE)
    settings = self._portable(settings)
    if os.path.exists(marker):
      with open(marker) as f:
        saved = json.load(f)
      # Stages written before paths were kept relative hold this work directory's absolute
      # paths: the same settings, unless the directory has moved since.
      before = self._portable(saved.get("settings", {}))
      if before != settings:
        raise errors.InputError(
            f"{folder} was made with other settings ({_diff(before, settings)})"
            f"; use another work directory, or remove that folder to redo the stage.")
      if saved.get("done"):
        self.log(f"[{name}] done before: kept")
        return self._resolve(saved.get("result", {}))
    os.makedirs(folder, exist_ok=True)
    _write_json(marker, dict(settings=settings, done=False))
    start = time.time()
    self.log(f"[{name}] running")
    result = fn(folder)
    _write_json(marker, dict(settings=settings, done=True,
                             result=self._portable(result),
                             seconds=round(time.time() - start, 1)))
    self.log(f"[{name}] done in {time.time() - start:.0f}s")
    return result


WORKDIR_TAG = "{workdir}"


def _map_strings(value, fn: Callable[[str], str]):
  if isinstance(value, str):
    return fn(value)
  if isinstance(value, dict):
    return {k: _map_strings(v, fn) for k, v in value.items()}
  if isinstance(value, list):
    return [_map_strings(v, fn) for v in value]
  return value


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _diff(a: dict, b: dict) -> str:
  keys = sorted(set(a) | set(b))
  return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys
                   if a.get(k) != b.get(k)) or "unreadable"


def _read_plan_data(c, p: Plan, data_dir: str) -> None:
  """Points config `c` (pre-training or offline fine-tuning, unlocked) at the plan's data: run 1
  of `data_dir`, in pools that hold a whole game-run (one frame per env step, plus each
  episode's last observation: 5% spare; at least the preset's pool). The offline stages never
  refresh their pools, so a smaller pool would stop the stage at its fill."""
  c.data.data_dir = data_dir
  c.data.runs = (1,)
  c.data.pool_frames_per_game = max(
      int(c.data.pool_frames_per_game),
      math.ceil(1.05 * p.agent_checkpoints * p.agent_steps_per_checkpoint))


def _pretrain_config(p: Plan, data_dir: str, split: str, loss: dict, model: dict,
                     seed_offset: int = 0):
  c = configs.load(f"configs/pretrain.py:{p.pretrain_preset}")
  with c.unlocked():
    c.games = games.canonical_names(p.train_games)
    c.seed = p.seed + seed_offset
    c.num_steps = p.pretrain_steps
    c.checkpoint_every = max(1, min(c.checkpoint_every, p.pretrain_steps))
    c.log_every = max(1, min(c.log_every, p.pretrain_steps))
    _read_plan_data(c, p, data_dir)
    c.data.checkpoint_range = p.low_range if split == "low" else ()
    for k, v in loss.items():
      c.loss[k] = v
    for k, v in model.items():
      c.model[k] = v
  return c


def _evaluate(p: Plan, checkpoint: str, out: str, game_list, behaviour: bool) -> dict:
  agent, baselines, _ = eval_job.evaluate(eval_job.Request(
      checkpoint=checkpoint, games=tuple(game_list), episodes=p.eval_episodes,
      envs_per_game=min(4, p.eval_episodes), seed=p.seed, out=out,
      max_steps_per_episode=p.eval_max_steps,
      baselines=("random", "behaviour") if behaviour else ("random",)), verbose=False)
  summary = {e.label: _iqm(e) for e in [agent, *baselines]}
  return dict(results=os.path.join(out, "results.json"), iqm=summary)


def _iqm(e: results.Evaluation) -> Optional[list[float]]:
  a = e.aggregates
  return [a.iqm.value, a.iqm.low, a.iqm.high] if a else None


def reproduce(workdir: str, p: Plan, log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage of plan `p` in `workdir`; returns the report's paths."""
  with errors.input_checks():
    check(p)
  stages = Stages(workdir, log)
  log(f"reproduce: {len(p.train_games)} training games {', '.join(p.train_games)}, held-out "
      f"{p.heldout_game}, variant {p.variant[0]} mode {p.variant[1]} difficulty {p.variant[2]}; "
      f"methods {', '.join(p.methods)} on splits {', '.join(p.splits)}; estimated "
      f"{estimate_seconds(p) / 60:.0f} min on a 2-core CPU")
  data_dir = stages.path("data")
  agent = configs.load(f"configs/agent.py:{p.agent_preset}")
  all_games = data_games(p)

  # -- Data. ------------------------------------------------------------------------------------
  stages.run("data", dict(games=all_games, agent=json.loads(agent.to_json()),
                          checkpoints=p.agent_checkpoints,
                          steps=p.agent_steps_per_checkpoint, seed=p.seed),
             lambda folder: {f"{g}": [dataclasses.asdict(s) for s in segs] for (g, _), segs in
                             logged_agent.make_agent_datasets(
                                 agent, folder, all_games, (1,),
                                 checkpoints_per_run=p.agent_checkpoints,
                                 steps_per_checkpoint=p.agent_steps_per_checkpoint,
                                 seed=p.seed, skip_existing=True).items()})

  # -- Pre-training and evaluation, per method and split; sizes. -----------------------------
  runs = []  # (stage name, label, split, loss, model, seed offset)
  for split in p.splits:
    for method in p.methods:
      label, loss, model = METHODS[method]
      runs.append((f"pretrain/{method}_{split}", f"{label}, {split}", split, loss, model, 0))
  for method, k in _seed_runs(p):
    label, loss, model = METHODS[method]
    runs.append((_seed_stage(method, k), f"{label}, low, seed {p.seed + k}", "low", loss, model,
                 k))
  for size, overrides in p.sizes:
    if not overrides and "low" in p.splits and "scaled_ql" in p.methods:
      continue  # The preset's own size: pretrain/scaled_ql_low is that run.
    runs.append((f"size/{size}", f"Scaled QL, low, size {size}", "low", {}, dict(overrides), 0))
  evaluated = {}

  def evaluate(name: str, label: str, games_played, behaviour: bool) -> None:
    """The eval/NAME stage of training stage NAME, kept in `evaluated` under `label`."""
    evaluated[name] = stages.run(
        f"eval/{name}", dict(checkpoint=name, episodes=p.eval_episodes,
                             max_steps=p.eval_max_steps),
        lambda folder: _evaluate(p, stages.path(name), folder, games_played, behaviour))
    evaluated[name]["label"] = label

  for name, label, split, loss, model, seed_offset in runs:
    config = _pretrain_config(p, data_dir, split, loss, model, seed_offset)
    stages.run(name, dict(config=json.loads(config.to_json())),
               lambda folder, c=config: _train_result(loop.train(c, folder)))
    evaluate(name, label, p.train_games, True)

  # -- Transfer. ------------------------------------------------------------------------------
  if p.finetune_offline_steps or p.finetune_online_env_steps:
    source = "pretrain/scaled_ql_all" if "all" in p.splits else "pretrain/scaled_ql_low"
    backbone = os.path.join(stages.path("transfer"), "backbone")
    stages.run("transfer/export", dict(source=source),
               lambda folder: dict(info=export.export_checkpoint(  # fine-tuning reads Orbax
                   stages.path(source), backbone, overwrite=True, formats=("orbax",))[1]
                                   ["sha256"]))
    for init in ("pretrained", "scratch"):
      for mode, budget, games_played, behaviour in (
          ("offline", p.finetune_offline_steps, (p.heldout_game,), True),
          ("online", p.finetune_online_env_steps, (p.variant[0],), False)):
        if not budget:
          continue
        name = f"transfer/{mode}_{init}"
        c = _finetune_config(p, mode, init, data_dir)
        stages.run(name, dict(config=json.loads(c.to_json())),
                   lambda folder, c=c: _train_result(finetuning.finetune(c, folder, backbone)))
        evaluate(name, f"{mode} fine-tuning, {init}", games_played, behaviour)

  # -- Report. --------------------------------------------------------------------------------
  return write_report(stages, p, evaluated)


def _train_result(result: loop.Result) -> dict:
  return dict(step=result.step, checkpoint_dir=result.checkpoint_dir,
              loss=result.last_metrics.get("loss"))


def _finetune_config(p: Plan, mode: str, init: str, data_dir: str):
  c = configs.load(f"configs/finetune.py:{mode}_cpu")
  with c.unlocked():
    c.finetune.init = init
    c.seed = p.seed
    if mode == "offline":
      c.games = (p.heldout_game,)
      _read_plan_data(c, p, data_dir)
      c.num_steps = p.finetune_offline_steps
    else:
      game, mode_id, difficulty = p.variant
      c.games = (game,)
      c.online.game, c.online.mode, c.online.difficulty = game, mode_id, difficulty
      c.online.env_steps = p.finetune_online_env_steps
      c.online.min_replay_size = min(c.online.min_replay_size, p.finetune_online_env_steps // 2)
      c.num_steps = max(1, p.finetune_online_env_steps * int(c.online.samples_per_insert)
                        // c.batch_size)
    c.checkpoint_every = max(1, min(c.checkpoint_every, c.num_steps))
    c.log_every = max(1, min(c.log_every, c.num_steps))
  return c


def write_report(stages: Stages, p: Plan, evaluated: dict) -> dict:
  """report/: the evaluation report of every network, the claims table, the size fit."""
  out = stages.path("report")
  pooled, folded, seed_rows = _pool_seeds(p, evaluated, os.path.join(out, "seeds"))
  shown = {n: pooled.get(n, e) for n, e in evaluated.items() if n not in folded}
  runs = []
  for name, e in shown.items():
    run = report_lib.load_run(e["results"], e["label"])
    where = name.rsplit("_", 1)[-1] if name.startswith("pretrain/") else (
        "low" if name.startswith("size/") else name.split("/")[-1].split("_")[0])
    for b in run.baselines:  # One behaviour baseline per data split, one random per game set.
      if b.label == "behaviour data":
        b.label = f"behaviour data, {where}"
    runs.append(run)
  paths = report_lib.write_report(runs, out, "Scaled QL at laptop scale")
  claims = claims_table(p, shown)
  fit = size_fit(p, evaluated)  # Seed 0 of Scaled QL low, like the other sizes.
  rows = [["claim", "paper", "here", "holds at this scale?"]] + claims
  md = []
  if seed_rows:
    md += ["", "## Training seeds of the main claim", "",
           "Each network of the pooled rows above, evaluated alone (CIs over its episodes).", "",
           tables.render(seed_rows[0], seed_rows[1:], "markdown")]
  md += ["", "## The paper's claims here", "",
         tables.render(rows[0], rows[1:], "markdown"), ""]
  if fit:
    md += ["## Score against parameters", "", fit["text"], ""]
  with open(paths["markdown"], "a") as f:
    f.write("\n".join(md))
  paths["claims_csv"] = os.path.join(out, "claims.csv")
  results.atomic_write(paths["claims_csv"], results.to_csv(
      [dict(zip(rows[0], r)) for r in rows[1:]]))
  return paths


def _pool_seeds(p: Plan, evaluated: dict, out: str) -> tuple[dict, set, list[list[str]]]:
  """The main claim's networks trained from several seeds, each method's runs pooled into one
  evaluation (`results.pooled`, written under `out`): ({seed 0's stage: the pooled entry},
  the other seeds' stages folded into it, the rows of a table of every seed alone)."""
  pooled, folded, rows = {}, set(), []
  for method in CLAIM_METHODS:
    names = seed_stages(p, method)
    if len(names) < 2 or not all(n in evaluated for n in names):
      continue
    read = [results.read(evaluated[n]["results"]) for n in names]
    agents = [agent for agent, _, _ in read]
    label = f"{METHODS[method][0]}, low, {len(names)} seeds"
    agent = results.pooled(agents, "agent", seed=p.seed)
    folder = os.path.join(out, f"{method}_low")
    checkpoint = dict(read[0][2], path=", ".join(str(c.get("path")) for _, _, c in read))
    baselines = read[0][1]
    results.write(folder, agent, baselines, checkpoint)
    folded.update(names[1:])
    pooled[names[0]] = dict(results=os.path.join(folder, results.RESULTS_FILE), label=label,
                            iqm={e.label: _iqm(e) for e in [agent, *baselines]})
    games_played = [g.game for g in agents[0].games]
    if not rows:
      rows.append(["network", "training seed", "IQM [95% CI]"] + games_played)
    for k, (name, a) in enumerate(zip(names, agents)):
      iqm = _iqm(a)
      rows.append([name, str(p.seed + k),
                   f"{iqm[0]:.3f} [{iqm[1]:.3f}, {iqm[2]:.3f}]" if iqm else "-"]
                  + [f"{a.game(g).mean_return:,.1f}" for g in games_played])
  return pooled, folded, rows


def _get(evaluated, name, label="agent"):
  e = evaluated.get(name)
  return e and e["iqm"].get(label)


def _cmp(a, b) -> tuple[str, str]:
  """('a [lo, hi] vs b [lo, hi]', holds?) for IQM estimates."""
  if not a or not b:
    return "not run", "-"
  text = f"{a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] vs {b[0]:.3f} [{b[1]:.3f}, {b[2]:.3f}]"
  if a[1] > b[2]:
    return text, "yes (CIs apart)"
  if a[0] > b[0]:
    return text, "only the point estimate (CIs overlap)"
  return text, "no"


def claims_table(p: Plan, ev: dict) -> list[list[str]]:
  rows = []
  low = "pretrain/scaled_ql_low"
  for what, other, paper in (
      ("behaviour data", ("pretrain/scaled_ql_low", "behaviour data"),
       "yes: Scaled QL beats the low-quality data it is trained on"),
      ("BC", ("pretrain/bc_low", "agent"), "yes: well above BC on low-quality data")):
    here, holds = _cmp(_get(ev, low), _get(ev, *other))
    rows.append([f"Scaled QL > {what} (low-quality split, IQM)", paper, here, holds])
  for a, b, claim, paper in (
      ("pretrain/scaled_ql_all", "pretrain/mse_cql_all", "C51 + CQL > MSE + CQL",
       "yes: MSE scales worse (Fig. 6)"),
      ("pretrain/scaled_ql_all", "pretrain/c51_all", "CQL > offline C51 (alpha 0)",
       "yes: CQL is needed offline"),
      ("pretrain/hl_gauss_cql_all", "pretrain/scaled_ql_all", "HL-Gauss + CQL > C51 + CQL",
       "yes (Farebrother et al. 2024, same setting)"),
      ("transfer/offline_pretrained", "transfer/offline_scratch",
       "pre-trained > scratch, offline fine-tuning on a held-out game", "yes (Sec. 5.2)"),
      ("transfer/online_pretrained", "transfer/online_scratch",
       "pre-trained > scratch, online fine-tuning on a variant", "yes (Sec. 5.3)")):
    here, holds = _cmp(_get(ev, a), _get(ev, b))
    rows.append([claim, paper, here, holds])
  return rows


def _size_stage(p: Plan, size: str, overrides) -> str:
  if not overrides and "low" in p.splits and "scaled_ql" in p.methods:
    return "pretrain/scaled_ql_low"
  return f"size/{size}"


def size_fit(p: Plan, ev: dict) -> Optional[dict]:
  """IQM against parameter count over the size runs: a power law where the scores allow."""
  from scaled_ql import networks  # pylint: disable=g-import-not-at-top
  points = []
  for size, overrides in p.sizes:
    iqm = _get(ev, _size_stage(p, size, overrides))
    if iqm is None:
      continue
    config = _pretrain_config(p, "", "low", {}, dict(overrides))
    model = networks.build_q_network(config.model, len(config.games))
    points.append((size, networks.count_params(networks.param_shapes(model)), iqm[0]))
  if len(points) < 2:
    return None
  n = np.array([q[1] for q in points], float)
  y = np.array([q[2] for q in points], float)
  lines = [f"- {s}: {int(k):,} parameters, IQM {v:.3f}" for s, k, v in points]
  if np.all(y > 0):
    b, log_a = np.polyfit(np.log(n), np.log(y), 1)
    text = f"power law IQM = {math.exp(log_a):.3g} x N^{b:.3f}"
  else:
    slope, _ = np.polyfit(np.log10(n), y, 1)
    text = (f"no power law (an IQM <= 0 has no logarithm); IQM changes by {slope:+.3f} per "
            f"10x parameters")
  return dict(points=points, text="\n".join(lines + ["", text]))
