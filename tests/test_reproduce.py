"""`launch.reproduce` end to end at test size: every stage, every report file, the claims table
judged over seeds, cached stages on a rerun, the same bytes after a kill midway through the data
stage, stages made under another stack refused, jobs side by side in worker processes, and bad
plans refused before any work."""
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from scaled_ql import errors, evaluation, reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_REVERB = importlib.util.find_spec("reverb") is not None
# The end-to-end run strings together jobs that are each tested on both stacks; it runs on the
# pinned stack only, to keep `make test` within its time budget.
e2e = pytest.mark.skipif(not HAS_REVERB, reason="the end-to-end reproduce run is tested on the "
                         "pinned stack (its jobs are tested one by one here)")
REPORT_FILES = ("report.md", "claims.csv", "per_game.csv", "aggregates.csv", "seeds.csv",
                "aggregates.png", "per_game_normalized.png")


def _plan(**kwargs):
  return reproduce.plan("test", **kwargs)


def _launch(workdir, *flags, wait=True):
  """`launch.reproduce --budget=test` in a subprocess: the app picks XLA:CPU's runtime for the
  plan's encoder as a user's run does (a test process has started JAX with the default)."""
  cmd = [sys.executable, "-m", "launch.reproduce", "--budget=test", f"--workdir={workdir}",
         *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
  if not HAS_REVERB:
    pytest.skip("the end-to-end reproduce run is tested on the pinned stack")
  workdir = str(tmp_path_factory.mktemp("reproduce"))
  result = _launch(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  paths = {k: os.path.join(workdir, "report", f) for k, f in (
      ("markdown", "report.md"), ("per_game_csv", "per_game.csv"),
      ("aggregates_csv", "aggregates.csv"), ("claims_csv", "claims.csv"),
      ("seeds_csv", "seeds.csv"), ("aggregates", "aggregates.png"),
      ("per_game", "per_game_normalized.png"))}
  return workdir, paths, result.stdout.splitlines()


def _digest(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


@e2e
def test_every_stage_and_report_file(reproduced):
  workdir, paths, log = reproduced
  for kind in ("markdown", "per_game_csv", "aggregates_csv", "claims_csv", "seeds_csv",
               "aggregates", "per_game"):
    assert os.path.getsize(paths[kind]) > 0, kind
  stages = ["data", "pretrain/scaled_ql_low", "pretrain/scaled_ql_low_seed1", "pretrain/bc_low",
            "pretrain/bc_low_seed1", "pretrain/scaled_ql_all", "size/s", "baselines/random",
            "baselines/constant", "baselines/behaviour_low", "baselines/behaviour_all",
            "transfer/offline_pretrained", "transfer/offline_scratch",
            "eval/transfer/online_zero_shot", "transfer/online_scratch",
            "eval/pretrain/scaled_ql_low"]
  for stage in stages:
    assert os.path.exists(os.path.join(workdir, stage, reproduce.STAGE_FILE)), stage
  assert not os.path.exists(os.path.join(workdir, "pretrain/bc_all"))  # No claim needs it.
  assert any(line.startswith("reproduce: 2 training games") and "estimated" in line
             for line in log)
  # Data: a SHA-256 per split; every stage records the stack it was made under.
  data = json.load(open(os.path.join(workdir, "data", reproduce.STAGE_FILE)))
  assert sorted(data["result"]["sha256"]["boxing"]) == [f"checkpoint_{i:02d}" for i in range(5)]
  assert set(data["provenance"]) == {"jax", "jaxlib", "xla_cpu_runtime", "cpu_cores", "code"}
  # Two workers (the default), each job on one core: the stages say so.
  assert data["provenance"]["cpu_cores"] == 1
  assert any(line.startswith("[pretrain/bc_low] running on core ") for line in log)
  assert os.path.getsize(os.path.join(workdir, "logs", "pretrain", "bc_low.log")) > 0
  assert os.path.exists(os.path.join(workdir, "pretrain/scaled_ql_low", "provenance.json"))
  # Fine-tuning trains the exported network: its stages record that architecture, not the
  # fine-tuning preset's own.
  model_of = lambda stage: json.load(open(os.path.join(workdir, stage, reproduce.STAGE_FILE)))[
      "settings"]["config"]["model"]
  for stage in ("transfer/offline_pretrained", "transfer/online_scratch"):
    assert model_of(stage) == model_of("pretrain/scaled_ql_all"), stage
  md = open(paths["markdown"]).read()
  assert "Made with JAX" in md and "XLA:CPU runtime classic, 1 CPU core(s) per job" in md
  assert "| claim | paper | here | holds at this scale? |" in md
  assert "the main claim's groups from 2 training seeds, every other network from 1" in md
  claims = {line.split(" | ")[0][2:]: line for line in md.splitlines()
            if line.startswith("| ") and " | " in line}
  # Judged over seeds where a side has several; single networks are not tested.
  assert "(2 vs 2 seeds)" in claims["Scaled QL > BC (low-quality split)"] \
      or "CIs" in claims["Scaled QL > BC (low-quality split)"]
  assert "one network each: not tested" in \
      claims["pre-trained > scratch, offline fine-tuning on a held-out game"]
  assert "Scaled QL > best constant action (all data)" in claims
  assert "online fine-tuning improves the pre-trained network (end > zero-shot)" in claims
  assert "behaviour data, low" in md and "best constant action" in md
  assert "## Every network alone" in md and "| pretrain/scaled_ql_low_seed1 | 1 |" in md
  assert "| Scaled QL (C51 + CQL), low, 2 seeds | 2 | 2 x 1 |" in md  # games, seeds x episodes
  assert "## Score against parameters" in md and "## Transfer" in md
  pooled, _, _ = evaluation.read(os.path.join(workdir, "report/pooled/scaled_ql_low"))
  assert pooled.aggregates.runs == 2
  iqm = pooled.aggregates.iqm
  assert f"{iqm.value:.3f} [{iqm.low:.3f}, {iqm.high:.3f}] vs" in \
      claims["Scaled QL > BC (low-quality split)"]
  # Every policy's episodes share the evaluation's cap, the behaviour data's included.
  behaviour, _, _ = evaluation.read(os.path.join(workdir, "baselines/behaviour_all"))
  assert behaviour.settings["max_steps_per_episode"] == 30
  assert all(g.mean_length <= 30 for g in behaviour.games)
  with open(paths["claims_csv"]) as f:
    assert f.readline().startswith("claim,paper,here,holds at this scale?")


@e2e
def test_a_rerun_keeps_finished_stages_and_other_settings_are_refused(reproduced):
  workdir, _, _ = reproduced
  result = _launch(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[data] done before: kept" in result.stdout and "running" not in result.stdout
  # A work directory moved elsewhere resumes there: its stages keep paths relative to it.
  moved = workdir + "_moved"
  shutil.copytree(workdir, moved)
  result = _launch(moved)
  assert result.returncode == 0 and "running" not in result.stdout, result.stdout[-3000:]
  assert f"report: {moved}" in result.stdout
  assert workdir + os.sep not in open(os.path.join(moved, "data", reproduce.STAGE_FILE)).read()
  result = _launch(workdir, "--seed=1")
  assert result.returncode == 1
  assert "data was made with other settings" in result.stderr and "seed" in result.stderr
  if len(os.sched_getaffinity(0)) > 1:  # One job at a time uses every core: other bits.
    result = _launch(workdir, "--workers=1")
    assert result.returncode == 1
    assert "cpu_cores: 1 there, " in result.stderr and "--rerun_changed" in result.stderr


@e2e
def test_a_run_killed_midway_through_its_data_gives_the_same_bytes(reproduced, tmp_path):
  """The test plan in a subprocess, killed while its data stage is midway through a game-run,
  then rerun: the same dataset hashes, parameters and report files as the uninterrupted run."""
  whole, _, _ = reproduced
  workdir = str(tmp_path / "killed")
  process = _launch(workdir, wait=False)
  staging = os.path.join(workdir, "data", "scaled_ql_agent", ".agent-Boxing_run_1",
                         "progress.json")
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not os.path.exists(staging):
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(workdir, "data", "scaled_ql_agent", "Boxing_run_1"))
  result = _launch(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "logs", "data", "boxing.log")) as f:  # Boxing's worker.
    assert "played again from its start" in f.read()

  def results_of(root, name):
    return json.load(open(os.path.join(root, name, reproduce.STAGE_FILE)))["result"]
  assert results_of(workdir, "data")["sha256"] == results_of(whole, "data")["sha256"]
  for name in ("pretrain/scaled_ql_low", "pretrain/bc_low_seed1", "pretrain/scaled_ql_all",
               "size/s", "transfer/offline_pretrained"):
    assert results_of(workdir, name)["params_sha256"] == \
        results_of(whole, name)["params_sha256"], name
  for name in REPORT_FILES:
    assert _digest(os.path.join(workdir, "report", name)) == \
        _digest(os.path.join(whole, "report", name)), name


def test_a_stage_made_under_another_stack_is_refused_or_made_again(tmp_path):
  made = dict(jax="0.4.34", jaxlib="0.4.34", xla_cpu_runtime="classic", cpu_cores=2,
              code="sha256:0")
  calls = []
  reproduce.Stages(str(tmp_path), log=lambda _: None, provenance=made).run(
      "s", dict(a=1), lambda folder: calls.append(folder) or dict(x=1))
  for change in (dict(xla_cpu_runtime="thunk"), dict(jax="0.7.0"), dict(code="sha256:1")):
    now = dict(made, **change)
    key, value = next(iter(change.items()))
    stages = reproduce.Stages(str(tmp_path), log=lambda _: None, provenance=now)
    with pytest.raises(errors.InputError, match=f"another stack or code.*{key}: "
                       f"'{made[key]}' there, '{value}' now.*--rerun_changed"):
      stages.run("s", dict(a=1), lambda folder: calls.append(folder) or dict(x=2))
  assert len(calls) == 1
  stages = reproduce.Stages(str(tmp_path), log=lambda _: None, rerun_changed=True,
                            provenance=dict(made, xla_cpu_runtime="thunk"))
  assert stages.run("s", dict(a=1), lambda folder: calls.append(folder) or dict(x=2)) == \
      dict(x=2)
  assert len(calls) == 2
  saved = json.load(open(tmp_path / "s" / reproduce.STAGE_FILE))
  assert saved["provenance"]["xla_cpu_runtime"] == "thunk" and saved["done"]


def _cores_and_square(x):
  return sorted(os.sched_getaffinity(0)), os.getpid(), x * x


def _bad_input(name):
  raise errors.InputError(f"no such thing: {name}")


def _crash():
  print("about to fail")
  raise RuntimeError("boom")


def test_workers_run_jobs_one_core_each_and_report_failures(tmp_path):
  from scaled_ql.reproduce import workers
  pool = workers.Workers(2, log=lambda _: None)
  jobs = [workers.Job(f"j{i}", _cores_and_square, (i,), str(tmp_path / f"j{i}.log"))
          for i in range(5)]
  out = pool.map(jobs)
  assert [o[2] for o in out] == [0, 1, 4, 9, 16]  # In the jobs' order.
  if len(os.sched_getaffinity(0)) > 1:
    assert pool.n == 2 and pool.provenance(dict(cpu_cores=2)) == dict(cpu_cores=1)
    assert all(len(o[0]) == 1 for o in out) and {o[1] for o in out} != {os.getpid()}
  # A job that is done runs here; bad input keeps its kind and message; a crash shows its log.
  assert pool.map([workers.Job("d", _cores_and_square, (3,), "", done=True)])[0][1] == \
      os.getpid()
  with pytest.raises(errors.InputError, match="bad: no such thing: x"):
    pool.map([workers.Job("bad", _bad_input, ("x",), str(tmp_path / "bad.log"))])
  with pytest.raises(workers.WorkerError, match="(?s)crash failed .*boom.*about to fail"):
    pool.map([workers.Job("crash", _crash, (), str(tmp_path / "crash.log"))])
  with pytest.raises(errors.InputError, match="--workers must be a whole number"):
    workers.Workers(0)


@pytest.mark.parametrize("change,message", [
    (dict(train_games=("boxing", "breakoutt")), "unknown game 'breakoutt'"),
    (dict(agent_steps_per_checkpoint=1), "less than one step"),
    (dict(variant=("breakout", 99, 0)), "breakout has no variant mode 99"),
    (dict(agent_checkpoints=3), "no low-quality split"),
    (dict(train_games=("boxing",)), "at least 2 training games"),
])
def test_bad_plans_fail_before_any_work(tmp_path, change, message):
  p = dataclasses.replace(_plan(), **change)
  with pytest.raises(errors.InputError, match=message):
    reproduce.reproduce(str(tmp_path / "w"), p, log=lambda _: None)
  assert not os.path.exists(tmp_path / "w" / "data")


def test_the_games_options_replace_the_presets_games():
  second = reproduce.plan("default", train_games="second", main_claim_only=True)
  assert second.train_games == reproduce.SECOND_GAMES
  assert set(second.groups) == set(reproduce.MAIN_GROUPS) and not second.sizes
  assert second.finetune_online_env_steps == 0 and second.finetune_offline_steps == 0
  default = reproduce.plan("default")
  assert (second.agent_steps_per_checkpoint, second.steps("low"), second.claim_seeds) == \
      (default.agent_steps_per_checkpoint, default.steps("low"), default.claim_seeds)
  assert default.steps("all") == 6_000 and default.steps("low") == 2_000
  assert not set(reproduce.SECOND_GAMES) & set(reproduce.TRAIN_GAMES)
  custom = reproduce.plan("quick", train_games="Boxing,pong", heldout_game="Alien",
                          variant=reproduce.parse_variant("boxing:0:1"))
  assert custom.train_games == ("boxing", "pong") and custom.heldout_game == "alien"
  assert custom.variant == ("boxing", 0, 1)
  with pytest.raises(ValueError, match="unknown game 'boxingg'"):
    reproduce.plan("quick", train_games="boxingg,pong")
  with pytest.raises(ValueError, match="GAME:MODE:DIFFICULTY"):
    reproduce.parse_variant("qbert:1")


def test_the_app_refuses_bad_games_before_any_work(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "launch.reproduce", "--budget=test", "--games=boxing,pongg",
       f"--workdir={tmp_path / 'w'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "pongg" in result.stderr
  assert not os.path.exists(tmp_path / "w" / "data")


def test_presets_make_the_data_they_use_and_fit_their_budgets():
  """quick fine-tunes nothing, so it makes no held-out data; default does; the printed estimates
  stay within the stated budgets with the default 2 workers (40 min, 2.5 h), every network
  shares one encoder (the process picks XLA:CPU's runtime once), the seed counts are the plan's,
  and the ablations share the main claim's split (their Scaled QL arm is its networks)."""
  quick, default = reproduce.plan("quick"), reproduce.plan("default")
  assert reproduce.data_games(quick) == quick.train_games
  assert reproduce.data_games(default) == default.train_games + (default.heldout_game,)
  assert reproduce.estimate_seconds(quick, workers=2) <= 40 * 60
  assert reproduce.estimate_seconds(default, workers=2) <= 150 * 60
  assert reproduce.estimate_seconds(default, workers=1) > \
      reproduce.estimate_seconds(default, workers=2)
  assert reproduce.estimate_seconds(reproduce.plan("default", scale=2)) > \
      reproduce.estimate_seconds(default)
  assert reproduce.encoder(default) == "nature"
  assert (default.claim_seeds, default.seeds) == (5, 3)
  assert set(default.groups) == set(reproduce.ALL_GROUPS)
  assert {s for m, s in default.groups if m in reproduce.plans.ABLATIONS} == {"low"}
  assert ("scaled_ql", "all") in default.groups
  for p in (quick, default):
    reproduce.check(dataclasses.replace(p, finetune_online_env_steps=0))


@pytest.mark.parametrize("budget,scale", [("quick", 1.0), ("default", 1.0), ("default", 3.0)])
def test_offline_pools_hold_a_whole_game_run(budget, scale):
  """The offline stages never refresh their pools: each pool must hold a whole game-run of the
  plan's data (default's held-out Alien run of 30k steps once met fine-tuning's 20k-frame pool
  and stopped the run), at every --scale."""
  from scaled_ql.reproduce import run
  p = reproduce.plan(budget, scale=scale)
  run_frames = p.agent_checkpoints * p.agent_steps_per_checkpoint
  c = run._pretrain_config(p, "/data", "all", {}, {})
  assert c.data.pool_frames_per_game >= run_frames
  if p.finetune_offline_steps:
    f = run._finetune_config(p, "offline", "scratch", "/data", {})
    assert f.data.pool_frames_per_game >= run_frames


def test_online_arms_explore_by_their_schedules():
  """Scratch explores from epsilon 1.0 over the first 20% of its budget; pre-trained from 0.3
  over 10%: the from-scratch arm is not a greedy random network."""
  from scaled_ql.reproduce import run
  p = reproduce.plan("default")
  scratch = run._finetune_config(p, "online", "scratch", "/data", {})
  pretrained = run._finetune_config(p, "online", "pretrained", "/data", {})
  assert scratch.online.epsilon_decay_steps == 2_000 and scratch.online.epsilon == 0.01
  assert pretrained.online.epsilon_decay_steps == 1_000
  assert (scratch.online.epsilon_start, pretrained.online.epsilon_start) == (1.0, 0.3)
  assert scratch.online.replay == pretrained.online.replay == "local"



def test_online_curves_average_each_tenth_over_the_seeds_that_have_it(tmp_path):
  """A tenth of the budget where no episode of any seed ended is left out (NaN, no warning);
  the others are each seed's mean return there, averaged over the seeds with one."""
  import warnings  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scaled_ql.reproduce import report  # pylint: disable=g-import-not-at-top
  from scaled_ql.train import online_log  # pylint: disable=g-import-not-at-top
  p = dataclasses.replace(reproduce.plan("test"), seeds=2, finetune_online_env_steps=1000)
  stages = reproduce.Stages(str(tmp_path / "w"), log=lambda _: None, provenance={})
  returns = {("pretrained", 0): [(50, 1.0), (60, 3.0), (950, 10.0)],
             ("pretrained", 1): [(40, 5.0)],
             ("scratch", 0): [(150, 2.0)], ("scratch", 1): []}
  for (init, k), points in returns.items():
    folder = stages.path(reproduce.plans.seed_stage(f"transfer/online_{init}", k))
    os.makedirs(folder)
    online_log.append_returns(folder, points)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    curves = report.online_curve_values(stages, p)
    assert report.online_curves(stages, p, str(tmp_path / "c.png")) == str(tmp_path / "c.png")
  assert curves["pretrained"][0] == 3.5 and curves["pretrained"][9] == 10.0
  assert np.isnan(curves["pretrained"][1:9]).all()
  assert curves["scratch"][1] == 2.0 and np.isnan(np.delete(curves["scratch"], 1)).all()
  assert os.path.getsize(tmp_path / "c.png") > 0
