"""`launch.reproduce` end to end at test size: every stage, every report file, the claims table,
cached stages on a rerun, and bad plans refused before any work."""
import dataclasses
import importlib.util
import os
import shutil

import pytest

from scaled_ql import errors, evaluation, reproduce


HAS_REVERB = importlib.util.find_spec("reverb") is not None
# The end-to-end run strings together jobs that are each tested on both stacks; it runs on the
# pinned stack only, to keep `make test` within its time budget.
pytestmark = pytest.mark.skipif(not HAS_REVERB, reason="the end-to-end reproduce run is tested "
                                "on the pinned stack (its jobs are tested one by one here)")


def _plan(**kwargs):
  """The test plan; without Reverb (the current stack) its online transfer stage is left out."""
  p = reproduce.plan("test", **kwargs)
  return p if HAS_REVERB else dataclasses.replace(p, finetune_online_env_steps=0)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reproduce"))
  log = []
  paths = reproduce.reproduce(workdir, _plan(), log=log.append)
  return workdir, paths, log


def test_every_stage_and_report_file(reproduced):
  workdir, paths, log = reproduced
  for kind in ("markdown", "per_game_csv", "aggregates_csv", "claims_csv", "aggregates",
               "per_game", "curves"):
    assert os.path.getsize(paths[kind]) > 0, kind
  stages = ["data", "pretrain/scaled_ql_low", "pretrain/bc_all", "size/s",
            "transfer/offline_pretrained", "eval/pretrain/scaled_ql_low"]
  for stage in stages + (["transfer/online_scratch"] if HAS_REVERB else []):
    assert os.path.exists(os.path.join(workdir, stage, reproduce.STAGE_FILE)), stage
  assert any(line.startswith("reproduce: 2 training games") and "estimated" in line
             for line in log)
  md = open(paths["markdown"]).read()
  assert "| claim | paper | here | holds at this scale? |" in md
  assert "Scaled QL > behaviour data (low-quality split, IQM)" in md
  assert "behaviour data, low" in md and "behaviour data, all" in md
  assert "## Score against parameters" in md
  # The main claim's methods on the low split, trained from 2 seeds (the test plan's
  # claim_seeds): judged on both runs, each seed also shown alone.
  assert os.path.exists(os.path.join(workdir, "pretrain/bc_low_seed1", reproduce.STAGE_FILE))
  assert "Scaled QL (C51 + CQL), low, 2 seeds" in md and "BC, low, 2 seeds" in md
  assert "## Training seeds of the main claim" in md and "| pretrain/scaled_ql_low_seed1 |" in md
  assert "2 trained agents (seeds)" in md
  assert "| Scaled QL (C51 + CQL), low, 2 seeds | 2 | 2 x 1 |" in md  # games, seeds x episodes
  pooled, _, _ = evaluation.read(os.path.join(workdir, "report/seeds/scaled_ql_low"))
  assert pooled.aggregates.runs == 2
  iqm = pooled.aggregates.iqm
  claim = next(line for line in md.splitlines() if line.startswith("| Scaled QL > BC"))
  assert f"{iqm.value:.3f} [{iqm.low:.3f}, {iqm.high:.3f}] vs" in claim
  with open(paths["claims_csv"]) as f:
    assert f.readline().startswith("claim,paper,here,holds at this scale?")


def test_a_rerun_keeps_finished_stages_and_other_settings_are_refused(reproduced):
  workdir, _, _ = reproduced
  log = []
  reproduce.reproduce(workdir, _plan(), log=log.append)
  assert "[data] done before: kept" in log and not any("running" in line for line in log)
  # A work directory moved elsewhere resumes there: its stages keep paths relative to it.
  moved = workdir + "_moved"
  shutil.copytree(workdir, moved)
  log = []
  paths = reproduce.reproduce(moved, _plan(), log=log.append)
  assert not any("running" in line for line in log), log
  assert paths["markdown"].startswith(moved) and os.path.getsize(paths["markdown"]) > 0
  assert workdir + os.sep not in open(os.path.join(moved, "data", reproduce.STAGE_FILE)).read()
  with pytest.raises(errors.InputError, match="data was made with other settings.*seed"):
    reproduce.reproduce(workdir, _plan(seed=1), log=log.append)


@pytest.mark.parametrize("change,message", [
    (dict(train_games=("boxing", "breakoutt")), "unknown game 'breakoutt'"),
    (dict(agent_steps_per_checkpoint=1), "less than one step"),
    (dict(variant=("breakout", 99, 0)), "breakout has no variant mode 99"),
    (dict(agent_checkpoints=3), "no low-quality split"),
])
def test_bad_plans_fail_before_any_work(tmp_path, change, message):
  p = dataclasses.replace(_plan(), **change)
  with pytest.raises(errors.InputError, match=message):
    reproduce.reproduce(str(tmp_path / "w"), p, log=lambda _: None)
  assert not os.path.exists(tmp_path / "w" / "data")


def test_presets_make_the_data_they_use_and_fit_their_budgets():
  """quick fine-tunes nothing, so it makes no held-out data; default does; the printed estimates
  stay within the stated budgets (30 min, 2 h), and every network shares one encoder (the
  process picks XLA:CPU's runtime once)."""
  quick, default = reproduce.plan("quick"), reproduce.plan("default")
  assert reproduce.data_games(quick) == quick.train_games
  assert reproduce.data_games(default) == default.train_games + (default.heldout_game,)
  assert reproduce.estimate_seconds(quick) <= 30 * 60
  assert reproduce.estimate_seconds(default) <= 120 * 60
  assert reproduce.estimate_seconds(reproduce.plan("default", scale=2)) > \
      reproduce.estimate_seconds(default)
  assert reproduce.encoder(default) == "nature"
  for p in (quick, default):
    reproduce.check(dataclasses.replace(p, finetune_online_env_steps=0))


@pytest.mark.parametrize("budget,scale", [("quick", 1.0), ("default", 1.0), ("default", 3.0)])
def test_offline_pools_hold_a_whole_game_run(budget, scale):
  """The offline stages never refresh their pools: each pool must hold a whole game-run of the
  plan's data (default's held-out Alien run of 30k steps once met fine-tuning's 20k-frame pool
  and stopped the run), at every --scale."""
  p = reproduce.plan(budget, scale=scale)
  run_frames = p.agent_checkpoints * p.agent_steps_per_checkpoint
  c = reproduce._pretrain_config(p, "/data", "all", {}, {})
  assert c.data.pool_frames_per_game >= run_frames
  if p.finetune_offline_steps:
    f = reproduce._finetune_config(p, "offline", "scratch", "/data")
    assert f.data.pool_frames_per_game >= run_frames
