"""The reproduction's stages, run in order (`reproduce`): data, pre-training (every group and
size, every seed), evaluation, baselines, transfer, report. Each is cached in its folder of the
work directory (`stages.Stages`); rerun the same call to resume."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
from typing import Callable, Optional, Sequence

from scaled_ql import configs, errors, export, games, run_meta
from scaled_ql.evaluation import baselines as baselines_lib
from scaled_ql.evaluation import job as eval_job
from scaled_ql.evaluation import restore, results
from scaled_ql.reproduce import plans as plan_lib
from scaled_ql.reproduce import report as report_lib
from scaled_ql.reproduce.plans import METHODS, Plan
from scaled_ql.reproduce.stages import Stages
from scaled_ql.reproduce.workers import Job, Workers
from scaled_ql.train import finetuning, logged_agent, loop

BOOTSTRAP_REPS = 2000


def reproduce(workdir: str, p: Plan, log: Callable[[str], None] = print,
              rerun_changed: bool = False, workers: int = 1) -> dict:
  """Runs (or resumes) every stage of plan `p` in `workdir`; returns the report's paths.
  `workers` > 1: independent jobs (a game's data, a network's training and evaluation, a
  baseline, a transfer arm) side by side, each on one core (`workers`)."""
  with errors.input_checks():
    plan_lib.check(p)
  pool = Workers(workers, log)
  stages = Stages(workdir, log, rerun_changed=rerun_changed,
                  provenance=pool.provenance(run_meta.provenance()))
  prov = stages.provenance
  log(f"reproduce: {len(p.train_games)} training games {', '.join(p.train_games)}, held-out "
      f"{p.heldout_game}, variant {p.variant[0]} mode {p.variant[1]} difficulty {p.variant[2]}; "
      f"{plan_lib.num_networks(p)} networks ({p.claim_seeds} seeds for the main claim, "
      f"{p.seeds} for the rest); {pool.n} job(s) at a time; estimated "
      f"{plan_lib.estimate_seconds(p, pool.n) / 60:.0f} min on a 2-core CPU; JAX {prov['jax']}, "
      f"XLA:CPU {prov['xla_cpu_runtime']}, code {prov['code']}")
  data_dir = stages.path("data")
  agent = configs.load(f"configs/agent.py:{p.agent_preset}")
  all_games = plan_lib.data_games(p)

  def job(label: str, fn, args: tuple, names: Sequence[str]) -> Job:
    done = stages.done(*names)
    here = done or pool.n == 1
    return Job(label, fn, (stages if here else stages.spec(), *args),
               stages.path(os.path.join("logs", label + ".log")), done)

  # -- Data: the games side by side. ----------------------------------------------------------
  data = stages.run("data", dict(games=all_games, agent=json.loads(agent.to_json()),
                                 checkpoints=p.agent_checkpoints,
                                 steps=p.agent_steps_per_checkpoint, seed=p.seed),
                    lambda folder: _make_data(p, agent, folder, all_games, pool))
  data_sha = data["sha256"]

  # -- Pre-training and evaluation: every group and size, every seed. ------------------------
  networks = {}  # stage name -> config
  for group in p.groups:
    method, split = group
    _, loss, model = METHODS[method]
    for k, name in enumerate(plan_lib.group_stages(p, group)):
      networks[name] = _pretrain_config(p, data_dir, split, loss, model, k)
  for size, overrides in p.sizes:
    for k, name in enumerate(plan_lib.size_stages(p, size, overrides)):
      networks.setdefault(name, _pretrain_config(p, data_dir, "low", {}, dict(overrides), k))
  evaluated = dict(zip(networks, pool.map([
      job(name, _network_job, (p, name, c, data_sha, tuple(p.train_games)),
          (name, f"eval/{name}"))
      for name, c in networks.items()])))

  # -- Baselines (each once per game set and protocol) and transfer. ------------------------
  baselines = [("random", "random", p.train_games, {}), ("constant", "constant", p.train_games, {})]
  baselines += [(f"behaviour_{split}", "behaviour", p.train_games,
                 dict(checkpoints=list(_split_checkpoints(p, split))))
                for split in sorted({s for _, s in p.groups})]
  transfer_jobs = []  # (key, job)
  if p.finetune_offline_steps or p.finetune_online_env_steps:
    source = "pretrain/scaled_ql_all" if ("scaled_ql", "all") in p.groups \
        else "pretrain/scaled_ql_low"
    backbone = os.path.join(stages.path("transfer"), "backbone")
    stages.run("transfer/export", dict(source=source, data=data_sha),
               lambda folder: dict(info=export.export_checkpoint(  # fine-tuning reads Orbax
                   stages.path(source), backbone, overwrite=True, formats=("orbax",))[1]
                                   ["sha256"]))
    if p.finetune_offline_steps:
      baselines += [("heldout_random", "random", (p.heldout_game,), {}),
                    ("heldout_behaviour", "behaviour", (p.heldout_game,), dict(checkpoints=None))]
    if p.finetune_online_env_steps:
      game, mode, difficulty = p.variant
      variant = dict(mode=mode, difficulty=difficulty)
      baselines += [("variant_random", "random", (game,), variant),
                    ("variant_constant", "constant", (game,), variant)]
      # Zero-shot: the pre-trained network on the variant before any fine-tuning.
      name = "eval/transfer/online_zero_shot"
      transfer_jobs.append(("online_zero_shot", job(name, _zero_shot_job,
                                                    (p, source, data_sha), (name,))))
    for mode_name, budget, game_list, played in (
        ("offline", p.finetune_offline_steps, (p.heldout_game,), {}),
        ("online", p.finetune_online_env_steps, (p.variant[0],),
         dict(mode=p.variant[1], difficulty=p.variant[2]))):
      for init in ("pretrained", "scratch") if budget else ():
        for k in range(p.seeds):
          name = plan_lib.seed_stage(f"transfer/{mode_name}_{init}", k)
          c = _finetune_config(p, mode_name, init, data_dir, networks[source].model, k)
          transfer_jobs.append((f"{mode_name}_{init}", job(
              name, _network_job, (p, name, c, data_sha, game_list, played, backbone),
              (name, f"eval/{name}"))))
  done = pool.map([job(f"baselines/{name}", _baseline_job,
                       (p, name, kind, tuple(game_list), data_dir, data_sha, kw),
                       (f"baselines/{name}",))
                   for name, kind, game_list, kw in baselines] + [j for _, j in transfer_jobs])
  base = {name: path for (name, *_), path in zip(baselines, done)}
  transfer = {}
  for (key, _), path in zip(transfer_jobs, done[len(baselines):]):
    transfer.setdefault(key, []).append(path)

  # -- Report. --------------------------------------------------------------------------------
  return report_lib.write(stages, p, evaluated, base, transfer)


def _open(stages) -> Stages:
  """The stages of a job: this process's, or (in a worker process) opened from their spec."""
  return stages if isinstance(stages, Stages) else Stages.from_spec(stages)


def _network_job(stages, p: Plan, name: str, config, data_sha: str, game_list,
                 played: Optional[dict] = None, backbone: Optional[str] = None) -> str:
  """Trains network `name` (pre-training; with a `backbone`, fine-tuning from it) and evaluates
  it on `game_list` (`played`: the ALE mode and difficulty): its results.json."""
  stages = _open(stages)
  trained = stages.run(name, dict(config=json.loads(config.to_json()), data=data_sha),
                       lambda folder: _train_result(
                           loop.train(config, folder) if backbone is None
                           else finetuning.finetune(config, folder, backbone)))
  return stages.run(
      f"eval/{name}", dict(params=trained["params_sha256"], episodes=p.eval_episodes,
                           max_steps=p.eval_max_steps, games=list(game_list)),
      lambda folder: _evaluate_agent(p, stages.path(name), folder, game_list,
                                     **(played or {})))["results"]


def _baseline_job(stages, p: Plan, name: str, kind: str, game_list, data_dir: str,
                  data_sha: str, kw: dict) -> str:
  stages = _open(stages)
  return stages.run(
      f"baselines/{name}", dict(kind=kind, games=list(game_list), episodes=p.eval_episodes,
                                max_steps=p.eval_max_steps, data=data_sha, **kw),
      lambda folder: _baseline(p, kind, game_list, folder, data_dir, **kw))["results"]


def _zero_shot_job(stages, p: Plan, source: str, data_sha: str) -> str:
  stages = _open(stages)
  game, mode, difficulty = p.variant
  return stages.run(
      "eval/transfer/online_zero_shot", dict(source=source, variant=list(p.variant),
                                             episodes=p.eval_episodes,
                                             max_steps=p.eval_max_steps, data=data_sha),
      lambda folder: _evaluate_agent(p, stages.path(source), folder, (game,), mode=mode,
                                     difficulty=difficulty))["results"]


def _make_data(p: Plan, agent, folder: str, all_games, pool: Workers) -> dict:
  logs = os.path.join(os.path.dirname(folder), "logs", "data")
  made = pool.map([Job(f"data/{g}", _data_job, (p, agent, folder, g),
                       os.path.join(logs, f"{g}.log")) for g in all_games])
  return dict(segments={g: s for m in made for g, s in m.items()},
              sha256=split_digests(folder, all_games))


def _data_job(p: Plan, agent, folder: str, game: str) -> dict:
  """One game's logged-agent run (a rerun keeps a finished one): {game: its segments}."""
  segments = logged_agent.make_agent_datasets(
      agent, folder, (game,), (1,), checkpoints_per_run=p.agent_checkpoints,
      steps_per_checkpoint=p.agent_steps_per_checkpoint, seed=p.seed, skip_existing=True)
  return {g: [dataclasses.asdict(s) for s in segs] for (g, _), segs in segments.items()}


def split_digests(data_dir: str, game_list) -> dict:
  """{game: {split: SHA-256 over the split's record files}} of the plan's logged-agent data."""
  out = {}
  for g in game_list:
    info = games.get_game(g)
    root = os.path.join(data_dir, logged_agent.DATASET_NAME, f"{info.ale_name}_run_1")
    by_split = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*.tfrecord-*"))):
      split = os.path.basename(path).split(".tfrecord-")[0].split("-")[-1]
      digest = by_split.setdefault(split, hashlib.sha256())
      with open(path, "rb") as f:
        digest.update(f.read())
    if not by_split:
      raise ValueError(f"no record files under {root}.")
    out[info.name] = {s: d.hexdigest() for s, d in sorted(by_split.items())}
  return out


def _split_checkpoints(p: Plan, split: str):
  return range(p.low_range[0], p.low_range[1] + 1) if split == "low" \
      else range(p.agent_checkpoints)


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
    c.num_steps = p.steps(split)
    c.checkpoint_every = max(1, min(c.checkpoint_every, c.num_steps))
    c.log_every = max(1, min(c.log_every, c.num_steps))
    _read_plan_data(c, p, data_dir)
    c.data.checkpoint_range = p.low_range if split == "low" else ()
    for k, v in loss.items():
      c.loss[k] = v
    for k, v in model.items():
      c.model[k] = v
  return c


def _finetune_config(p: Plan, mode: str, init: str, data_dir: str, model,
                     seed_offset: int = 0):
  """`model`: the exported network's architecture, which fine-tuning takes from the artifact;
  set here too, so the stage's recorded settings name the network that is trained."""
  c = configs.load(f"configs/finetune.py:{mode}_cpu")
  with c.unlocked():
    for k, v in model.items():
      c.model[k] = v
    c.finetune.init = init
    c.seed = p.seed + seed_offset
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
      start, share = dict((arm, (s, f)) for arm, s, f in p.online_schedule)[init]
      c.online.replay = "local"  # In-process replay: the same run on both stacks.
      c.online.epsilon_start = start
      c.online.epsilon_decay_steps = int(share * p.finetune_online_env_steps)
      c.num_steps = max(1, p.finetune_online_env_steps * int(c.online.samples_per_insert)
                        // c.batch_size)
    c.checkpoint_every = max(1, min(c.checkpoint_every, c.num_steps))
    c.log_every = max(1, min(c.log_every, c.num_steps))
  return c


def _train_result(result: loop.Result) -> dict:
  params = restore.load(result.checkpoint_dir).params
  return dict(step=result.step, checkpoint_dir=result.checkpoint_dir,
              params_sha256=export.params_digest(params))


def _protocol(p: Plan, mode=None, difficulty=None) -> dict:
  """How every policy of the plan is played: the agents' and the baselines' episodes alike."""
  return dict(epsilon=eval_job.Request.epsilon, envs_per_game=min(4, p.eval_episodes),
              seed=p.seed, max_steps_per_episode=p.eval_max_steps, mode=mode,
              difficulty=difficulty)


def _evaluate_agent(p: Plan, checkpoint: str, out: str, game_list, mode=None,
                    difficulty=None) -> dict:
  eval_job.evaluate(eval_job.Request(
      checkpoint=checkpoint, games=tuple(game_list), episodes=p.eval_episodes, out=out,
      bootstrap_reps=BOOTSTRAP_REPS, **_protocol(p, mode, difficulty)), verbose=False)
  return dict(results=os.path.join(out, results.RESULTS_FILE))


def _baseline(p: Plan, kind: str, game_list, out: str, data_dir: str, checkpoints=None,
              mode=None, difficulty=None) -> dict:
  protocol = _protocol(p, mode, difficulty)
  if kind == "random":
    e = baselines_lib.random_policy(game_list, p.eval_episodes, reps=BOOTSTRAP_REPS, **protocol)
  elif kind == "constant":
    e = baselines_lib.constant_action(game_list, p.eval_episodes, reps=BOOTSTRAP_REPS,
                                      cache_dir=os.path.join(out, "cache"), **protocol)
  else:
    e = baselines_lib.behaviour_data(data_dir, game_list, runs=(1,), checkpoints=checkpoints,
                                     reps=BOOTSTRAP_REPS, seed=p.seed,
                                     max_steps_per_episode=p.eval_max_steps)
  results.write(out, e)
  return dict(results=os.path.join(out, results.RESULTS_FILE))
