"""scaled_ql.evaluation, launch.evaluate and launch.report: scores, aggregates, rollouts in the real
emulator, checkpoints of a real (tiny) pre-training run, and the files and tables they write."""
import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaled_ql import data, evaluation, losses, networks
from scaled_ql import games as games_lib
from scaled_ql.evaluation import policy as policy_lib
from scaled_ql.evaluation import report, scores, tables

GAMES = ("pong", "breakout", "freeway")
UP, NOOP = 1, 0  # Freeway's minimal actions are (NOOP, UP, DOWN).


# -- Scores and aggregates. ----------------------------------------------------------------------

def test_normalization_against_hand_computed_values():
  # (score - random) / (human - random) with the published references.
  assert evaluation.normalize("pong", -20.7) == pytest.approx(0.0)
  assert evaluation.normalize("pong", 14.6) == pytest.approx(1.0)
  assert evaluation.normalize("pong", 0.0) == pytest.approx(20.7 / 35.3)
  assert evaluation.normalize("breakout", 16.1) == pytest.approx(0.5)  # (16.1-1.7)/28.8
  assert evaluation.normalize("double_dunk", -17.5) == pytest.approx(0.5)  # 1.1 / 2.2
  assert evaluation.normalize("freeway", 59.2) == pytest.approx(2.0)
  np.testing.assert_allclose(evaluation.normalize("Freeway", [0.0, 14.8, 29.6]), [0, 0.5, 1])
  with pytest.raises(ValueError, match="carnival.*no published"):
    evaluation.normalize("carnival", 100.0)


def test_game_score_summarises_returns():
  s = evaluation.game_score("freeway", [1.0, 2.0, 3.0], [10, 20, 30], truncated=1)
  assert (s.episodes, s.mean_return, s.min_return, s.max_return) == (3, 2.0, 1.0, 3.0)
  assert s.stderr_return == pytest.approx(1.0 / np.sqrt(3))
  assert s.mean_length == 20 and s.truncated == 1
  assert s.normalized == pytest.approx(2.0 / 29.6)
  assert evaluation.game_score("pooyan", [5.0]).normalized is None


def _returns(seed=0):
  rng = np.random.default_rng(seed)
  names = ("pong", "breakout", "freeway", "qbert", "seaquest", "boxing", "enduro", "hero")
  return {g: rng.uniform(-5, 40, int(rng.integers(2, 6))) for g in names}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # arch, about rliable's RandomState.
def test_aggregates_equal_rliable_called_directly():
  from rliable import library, metrics
  returns = _returns()
  agg = evaluation.aggregate(returns, reps=300, seed=3)
  columns = [evaluation.normalize(g, r) for g, r in returns.items()]
  matrix = np.array([[c.mean() for c in columns]])
  np.testing.assert_allclose(evaluation.score_matrix(returns), matrix)
  assert agg.iqm.value == pytest.approx(metrics.aggregate_iqm(matrix))
  assert agg.median.value == pytest.approx(metrics.aggregate_median(matrix))
  assert agg.mean.value == pytest.approx(metrics.aggregate_mean(matrix))
  # IQM of 8 games by hand: the mean of the middle 4.
  assert agg.iqm.value == pytest.approx(np.sort(matrix[0])[2:6].mean())

  def fn(*cols):
    m = np.array([[np.mean(c) for c in cols]])
    return np.array([metrics.aggregate_iqm(m), metrics.aggregate_median(m),
                     metrics.aggregate_mean(m)])
  np.random.seed(3)  # rliable 1.2 resamples with the global np.random here.
  _, intervals = library.get_interval_estimates({"x": columns}, fn, reps=300,
                                                random_state=np.random.RandomState(3))
  assert evaluation.aggregate(returns, reps=300, seed=3) == agg  # Reproducible for a seed.
  low, high = intervals["x"]
  for i, m in enumerate(("iqm", "median", "mean")):
    est = getattr(agg, m)
    assert (est.low, est.high) == (low[i], high[i])  # The same bits.
    assert est.low <= est.value <= est.high
  assert agg.games == tuple(returns) and agg.excluded == ()
  assert agg.episodes == min(len(r) for r in returns.values())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_bootstrap_gives_rliables_bits_for_any_shape():
  """`scores._bootstrap` is rliable's `get_interval_estimates` computed with numpy: the same
  point estimates and CI ends, bit for bit, for matrices of runs x games and for per-game
  episode lists of unequal lengths, with ties, one run, one game, one episode, one replication;
  and it leaves the global np.random alone (rliable 1.2 draws from it)."""
  from rliable import library, metrics

  def rliable_metrics(m):
    return np.array([metrics.aggregate_iqm(m), metrics.aggregate_median(m),
                     metrics.aggregate_mean(m)])

  def rliable_metrics_of_episodes(*cols):
    return rliable_metrics(np.array([[np.mean(c) for c in cols]]))

  rng = np.random.default_rng(7)
  cases = [np.array([[0.5]]), [np.array([2.0])], np.ones((3, 4)), [np.zeros(3), np.ones(1)]]
  for trial in range(40):
    if trial % 2:
      case = rng.normal(size=(int(rng.integers(1, 6)), int(rng.integers(1, 11)))) * 50
    else:
      case = [rng.normal(size=int(rng.integers(1, 30))) * 3
              for _ in range(int(rng.integers(1, 9)))]
    cases.append([np.round(c) for c in case] if trial % 3 == 0 and isinstance(case, list)
                 else np.round(case) if trial % 3 == 0 else case)
  for k, case in enumerate(cases):
    reps, confidence, seed = (1, 7, 200)[k % 3], (0.95, 0.9)[k % 2], 1000 + k
    matrix = isinstance(case, np.ndarray)
    np.random.seed(seed)
    points, intervals = library.get_interval_estimates(
        {"x": case}, rliable_metrics if matrix else rliable_metrics_of_episodes, reps=reps,
        confidence_interval_size=confidence, random_state=np.random.RandomState(seed))
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    ours = scores._bootstrap(case, reps, confidence, seed)
    assert np.array_equal(np.random.get_state()[1], before)
    expected = [(float(points["x"][i]), float(intervals["x"][0][i]), float(intervals["x"][1][i]))
                for i in range(3)]
    assert [(e.value, e.low, e.high) for e in ours] == expected, (k, case)


def test_evaluation_scores_need_no_rliable(repo):
  """Aggregating imports neither rliable nor what it imports (arch, pandas, scipy.stats)."""
  code = ("import sys; from scaled_ql import evaluation; "
          "a = evaluation.aggregate({'pong': [1.0, 3.0], 'breakout': [2.0]}, reps=50); "
          "assert a.iqm.low <= a.iqm.high; "
          "print(sorted(m for m in ('rliable', 'arch', 'pandas', 'scipy.stats') "
          "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_aggregates_over_seeds_resample_runs_as_rliable_does():
  """Several trained agents: IQM over the [runs, games] matrix of per-run mean HNS, CIs from
  rliable's StratifiedBootstrap over runs, which sees seed-to-seed variation and not the
  spread of one agent's episodes."""
  from rliable import library, metrics
  runs = [_returns(seed) for seed in (1, 2, 3)]
  games = tuple(runs[0])
  runs = [{g: r.get(g, runs[0][g]) for g in games} for r in runs]  # Same games in every run.
  agg = evaluation.aggregate_runs(runs, reps=300, seed=3)
  matrix = np.array([[evaluation.normalize(g, r[g]).mean() for g in games] for r in runs])
  # IQM of 3 runs x 8 games by hand: the mean of the middle 12 of the 24 scores.
  assert agg.iqm.value == pytest.approx(np.sort(matrix.ravel())[6:18].mean())
  assert agg.mean.value == pytest.approx(matrix.mean())
  assert (agg.runs, agg.games, agg.reps) == (3, games, 300)

  def fn(m):
    return np.array([metrics.aggregate_iqm(m), metrics.aggregate_median(m),
                     metrics.aggregate_mean(m)])
  np.random.seed(3)
  _, intervals = library.get_interval_estimates({"x": matrix}, fn, reps=300,
                                                random_state=np.random.RandomState(3))
  low, high = intervals["x"]
  assert [(e.low, e.high) for e in (agg.iqm, agg.median, agg.mean)] == list(zip(low, high))
  assert "3 runs (training seeds)" in agg.note()
  # Three seeds whose per-game means agree, each with widely spread episodes: no seed variance
  # (a zero-width CI), where the episodes' bootstrap of one of them is wide.
  spread = {g: np.array([0.0, 40.0, 10.0, 30.0]) for g in ("pong", "breakout", "freeway")}
  same = [{g: np.roll(v, k) for g, v in spread.items()} for k in range(3)]
  by_runs = evaluation.aggregate_runs(same, reps=200)
  assert by_runs.iqm.low == pytest.approx(by_runs.iqm.high)
  by_episodes = evaluation.aggregate(spread, reps=200)
  assert by_episodes.iqm.high - by_episodes.iqm.low > 0.1
  with pytest.raises(ValueError, match="different games"):
    evaluation.aggregate_runs([spread, {"pong": [1.0]}])


def test_pooled_seeds_keep_every_episode_and_round_trip(tmp_path):
  def rollouts(seed):
    return evaluation.from_rollouts(evaluation.run_episodes(
        None, ["freeway", "pong"], 2, envs_per_game=2, max_steps_per_episode=20, seed=seed),
        "agent", reps=50)
  runs = [rollouts(s) for s in (0, 1)]
  pooled = evaluation.pooled(runs, "agent", reps=50)
  assert len(pooled.episodes) == 8 and pooled.game("freeway").episodes == 4
  assert pooled.game("pong").mean_return == pytest.approx(
      np.mean([e.episode_return for r in runs for e in r.episodes if e.game == "pong"]))
  assert pooled.aggregates.runs == 2 and pooled.settings["runs"] == 2
  evaluation.write(str(tmp_path), pooled)
  back, _, _ = evaluation.read(str(tmp_path))
  assert back == pooled
  assert any("2 trained agents (seeds)" in n for n in tables.notes([pooled]))


def test_games_without_reference_scores_are_left_out_of_aggregates_and_said_so():
  returns = _returns()
  with_extra = dict(returns, carnival=np.array([500.0, 700.0]), pooyan=np.array([10.0]))
  a, b = (evaluation.aggregate(r, reps=100, seed=1) for r in (returns, with_extra))
  assert b.excluded == ("carnival", "pooyan") and b.games == a.games
  assert (b.iqm, b.median, b.mean) == (a.iqm, a.median, a.mean)
  assert "carnival, pooyan" in b.note()
  assert evaluation.aggregate({"carnival": [1.0]}, reps=10) is None


# -- The policy. -----------------------------------------------------------------------------

def test_action_values_per_loss_kind():
  logits = jnp.zeros((1, 18, 3)).at[0, 2, 2].set(5.0).at[0, 4, 0].set(7.0)
  support = jnp.array([-1.0, 0.0, 1.0])
  q = evaluation.action_values("c51", logits, support)
  assert int(jnp.argmax(q[0])) == 2  # Mass on the +1 atom, not the largest logit.
  assert int(jnp.argmax(evaluation.action_values("mse", logits[..., :1] + 0))) == 4
  with pytest.raises(ValueError, match="no policy"):
    evaluation.action_values("sarsa", logits)


def test_greedy_policy_is_legal_for_every_game_in_one_batch():
  model = networks.build_q_network(dict(encoder="nature", spatial_features=2, feature_dim=8,
                                        num_atoms=51), 3)
  params = networks.init_params(model, jax.random.PRNGKey(0))
  # Push freeway's (head 2) illegal slots 3..17 far above its legal ones: still never chosen.
  bias = params["head"]["bias"].reshape(3, 18, 51)
  params["head"]["bias"] = bias.at[2, 3:, -1].set(100.0).reshape(3, 18 * 51)
  games = ("freeway", "pong", "breakout")
  greedy = evaluation.make_greedy_policy(model, params, loss_kind="c51", head_games=GAMES,
                                         games=games)
  obs = np.random.default_rng(0).integers(0, 256, (12, 84, 84, 4), dtype=np.uint8)
  game_index = np.arange(12) % 3
  actions = greedy(obs, game_index)
  limits = np.array([3, 6, 4])[game_index]
  assert actions.shape == (12,) and np.all(actions < limits) and np.all(actions >= 0)
  with pytest.raises(ValueError, match="no head"):
    policy_lib.head_indices(GAMES, ["space_invaders"])


@pytest.mark.parametrize("heads, batch", [(GAMES, 12), (GAMES + ("qbert", "seaquest"), 3)])
def test_policy_takes_each_examples_own_head_as_the_network_does(heads, batch):
  # The policy uses the head's block_size=1 path, which applies only each example's head
  # (one-hot over the heads when there are at most as many heads as examples, gathered kernels
  # otherwise): it must equal applying every head and picking the example's own.
  model = networks.build_q_network(dict(encoder="nature", spatial_features=2, feature_dim=8,
                                        num_atoms=51), len(heads))
  params = networks.init_params(model, jax.random.PRNGKey(1))
  rng = np.random.default_rng(1)
  obs = rng.integers(0, 256, (batch, 84, 84, 4), dtype=np.uint8)
  game_id = rng.integers(0, len(heads), batch).astype(np.int32)
  logits = model.apply({"params": params}, obs, jnp.asarray(game_id), 1).logits
  # The heads see the unit-norm features times the network's scale (sqrt(D)).
  features = model.apply({"params": params}, obs, method="features") * model.head_scale()
  every_head = (jnp.einsum("bd,gdk->bgk", features, params["head"]["kernel"])
                + params["head"]["bias"][None])
  expected = every_head[jnp.arange(batch), jnp.asarray(game_id)]
  np.testing.assert_allclose(logits.reshape(batch, -1), expected, rtol=1e-5, atol=1e-5)
  greedy = evaluation.make_greedy_policy(model, params, loss_kind="c51", head_games=heads,
                                         games=heads)
  q = np.asarray(evaluation.action_values("c51", logits, losses.make_support(-10.0, 10.0, 51)))
  legal = games_lib.legal_action_mask(heads)[game_id]
  np.testing.assert_array_equal(greedy(obs, game_id), np.where(legal, q, -np.inf).argmax(-1))


# -- Rollouts in the emulator. --------------------------------------------------------------------

def _returns_of(rollouts, game):
  return [e.episode_return for e in rollouts.of(game)]


def test_freeway_always_up_scores_and_noop_does_not_deterministically():
  kwargs = dict(envs_per_game=2, seed=7, max_steps_per_episode=250, epsilon=0.0)
  up = evaluation.run_episodes(evaluation.fixed_action_policy(UP), ["freeway"], 2, **kwargs)
  again = evaluation.run_episodes(evaluation.fixed_action_policy(UP), ["freeway"], 2, **kwargs)
  noop = evaluation.run_episodes(evaluation.fixed_action_policy(NOOP), ["freeway"], 2, **kwargs)
  assert all(r > 0 for r in _returns_of(up, "freeway"))
  assert _returns_of(noop, "freeway") == [0.0, 0.0]
  assert up.episodes == again.episodes  # Same seed: identical episodes, seeds included.
  assert [e.length for e in up.episodes] == [250, 250] and all(e.truncated for e in up.episodes)
  assert up.settings.max_episode_frames == 1000 and up.settings.cut_short


def test_the_constant_baseline_finds_freeways_best_held_action_once(tmp_path):
  """Holding UP is Freeway's best constant action (NOOP and DOWN never cross); the result is
  the UP rollout's own episodes, cached per protocol, and a damaged cache is recomputed."""
  kwargs = dict(envs_per_game=2, seed=7, max_steps_per_episode=250, epsilon=0.0)
  cache = str(tmp_path / "cache")
  best = evaluation.constant_action(["freeway"], 2, reps=50, cache_dir=cache, **kwargs)
  up = evaluation.run_episodes(evaluation.fixed_action_policy(UP), ["freeway"], 2, **kwargs)
  assert best.label == "best constant action"
  assert best.settings["best"]["freeway"]["action"] == "UP"
  means = best.settings["best"]["freeway"]["mean_returns"]
  assert list(means) == ["NOOP", "UP", "DOWN"] and means["NOOP"] == means["DOWN"] == 0.0
  assert [e.episode_return for e in best.episodes] == _returns_of(up, "freeway")
  assert best.games[0].top_action_share == 1.0 and best.games[0].top_action == UP
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].startswith("freeway-")
  again = evaluation.constant_action(["freeway"], 2, reps=50, cache_dir=cache, **kwargs)
  assert again.to_dict() == best.to_dict()
  other = evaluation.constant_action(["freeway"], 2, reps=50, cache_dir=cache,
                                     **dict(kwargs, max_steps_per_episode=200))
  assert len(os.listdir(cache)) == 2 and other.games[0].mean_length == 200  # Its own protocol.
  with open(os.path.join(cache, files[0]), "w") as f:
    f.write("{not json")
  assert evaluation.constant_action(["freeway"], 2, reps=50, cache_dir=cache,
                                    **kwargs).to_dict() == best.to_dict()


def test_the_top_action_share_counts_the_policys_own_choices():
  """A policy playing UP, UP, UP, NOOP in turn takes UP in 3 of 4 steps; steps of episodes that
  are not recorded (past an env's quota) are not counted; the random policy has no share."""
  step = {"n": 0}

  def cycle(observation, game_index):
    step["n"] += 1
    return np.full(len(observation), NOOP if step["n"] % 4 == 0 else UP, np.int64)

  played = evaluation.run_episodes(cycle, ["freeway"], 1, envs_per_game=1,
                                   max_steps_per_episode=40, epsilon=0.0)
  assert played.action_counts == {"freeway": [10, 30, 0]}
  score = evaluation.from_rollouts(played, "agent", reps=20).games[0]
  assert (score.top_action_share, score.top_action) == (0.75, UP)
  assert "UP 75%" in tables.game_table(evaluation.from_rollouts(played, "agent", reps=20))
  random = evaluation.random_policy(["freeway"], 1, reps=20, envs_per_game=1,
                                    max_steps_per_episode=40)
  assert random.games[0].top_action_share is None


def test_game_variants_are_played_and_recorded():
  # Always-UP crosses Freeway's default road ~22 times in 3,000 steps; mode 1's traffic
  # knocks the chicken back far more often.
  kwargs = dict(envs_per_game=1, seed=0, max_steps_per_episode=3000, epsilon=0.0)
  default = evaluation.run_episodes(evaluation.fixed_action_policy(UP), ["freeway"], 1, **kwargs)
  mode1 = evaluation.run_episodes(evaluation.fixed_action_policy(UP), ["freeway"], 1, mode=1,
                                  difficulty=0, **kwargs)
  assert _returns_of(default, "freeway")[0] >= 15 > 2 * _returns_of(mode1, "freeway")[0]
  assert (mode1.settings.mode, mode1.settings.difficulty) == (1, 0)
  assert default.settings.mode is None
  result = evaluation.from_rollouts(mode1, "agent", reps=100)
  assert any("variant mode 1, difficulty 0" in n for n in evaluation.notes([result]))
  with pytest.raises(ValueError, match="no mode 99"):
    evaluation.run_episodes(None, ["freeway"], 1, mode=99)


def test_episodes_depend_on_the_seed_not_on_the_batch_neighbours():
  kwargs = dict(envs_per_game=2, max_steps_per_episode=120)
  alone = evaluation.run_episodes(None, ["breakout"], 3, seed=1, **kwargs)
  mixed = evaluation.run_episodes(None, ["pong", "breakout"], 3, seed=1, **kwargs)
  other = evaluation.run_episodes(None, ["breakout"], 3, seed=2, **kwargs)
  assert alone.episodes == mixed.of("breakout")
  assert [e.env_seed for e in alone.episodes] != [e.env_seed for e in other.episodes]
  # Quotas: 3 episodes over 2 envs = 2 + 1, whatever order they finish in.
  assert [(e.env, e.index) for e in alone.episodes] == [(0, 0), (0, 1), (1, 0)]
  assert alone.settings.epsilon == 1.0  # No greedy policy: uniformly random.


def test_game_without_reference_scores_is_played_reported_and_excluded():
  played = evaluation.run_episodes(evaluation.fixed_action_policy(1), ["freeway", "carnival"], 2,
                                   envs_per_game=2, max_steps_per_episode=100)
  result = evaluation.from_rollouts(played, "agent", reps=50)
  assert [g.game for g in result.games] == ["freeway", "carnival"]
  assert result.game("carnival").episodes == 2 and result.game("carnival").normalized is None
  assert result.aggregates.games == ("freeway",) and result.aggregates.excluded == ("carnival",)
  text = evaluation.game_table(result)
  cells = text.splitlines()[-1].split()  # No HNS; then its top action (FIRE every step).
  assert cells[0] == "carnival" and cells[-3:] == ["-", "FIRE", "100%"]
  said = " ".join(evaluation.notes([result]))
  assert "not in the normalized aggregates" in said and "carnival" in said
  assert "cut short at 100 agent steps" in said and "agent 4 of 4" in said


@pytest.mark.parametrize("kwargs, match", [
    (dict(episodes_per_game=0), "episodes per game must be a positive"),
    (dict(envs_per_game=0), "envs per game must be a positive"),
    (dict(epsilon=1.5), "epsilon must be in"),
    (dict(games=["pongg"]), "unknown game 'pongg'. Did you mean pong"),
    (dict(games=["pong", "pong"]), "without repeats"),
])
def test_bad_rollout_input_fails_before_any_env(kwargs, match):
  args = dict(games=["pong"], episodes_per_game=1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    evaluation.run_episodes(evaluation.fixed_action_policy(0), **args)


def test_results_round_trip(tmp_path):
  played = evaluation.run_episodes(None, ["freeway"], 2, envs_per_game=2,
                                   max_steps_per_episode=20)
  agent = evaluation.from_rollouts(played, "agent", reps=50)
  paths = evaluation.write(str(tmp_path), agent, checkpoint=dict(step=3))
  back, baselines, checkpoint = evaluation.read(str(tmp_path))
  assert back == agent and baselines == [] and checkpoint == dict(step=3)
  rows = list(csv.DictReader(open(paths["episodes"])))
  assert len(rows) == 2 and rows[0]["game"] == "freeway" and "env_seed" in rows[0]
  (tmp_path / "results.json").write_text("{}")
  with pytest.raises(ValueError, match="not a scaled_ql evaluation result"):
    evaluation.read(str(tmp_path))


# -- A real pre-training run, evaluated and reported through the launch scripts. -------------------

def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


def _launch(repo, module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=repo, env=_env(),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(repo, tmp_path_factory):
  """20 steps of the tiny preset on a 3-game emulator dataset, evaluated every 10 steps."""
  root = tmp_path_factory.mktemp("evalrun")
  for i, game in enumerate(GAMES):
    data.generate_run(str(root / "data"), game, 1, num_checkpoints=1, steps_per_checkpoint=150,
                      seed=i)
  result = _launch(repo, "launch.pretrain", "--config=configs/pretrain.py:tiny",
                   f"--workdir={root / 'run'}", f"--config.data.data_dir={root / 'data'}",
                   "--config.num_steps=20", "--config.data.pool_frames_per_game=400",
                   "--config.eval_every=10", "--config.eval.max_steps_per_episode=30",
                   "--config.eval.episodes_per_game=1", "--config.eval.envs_per_game=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "eval at step 10: IQM" in result.stdout
  return root / "run"


def test_periodic_evaluation_logged_during_pretraining(workdir):
  records = [json.loads(line) for line in open(workdir / "eval.jsonl")]
  assert [r["step"] for r in records] == [10, 20]
  assert {"eval/iqm", "eval/hns/pong", "eval/return/freeway"} <= set(records[0])
  assert any("events" in f for f in os.listdir(workdir / "tensorboard"))


def test_checkpoint_loads_and_plays_like_the_periodic_evaluation(workdir):
  ckpt = evaluation.load(str(workdir))
  assert (ckpt.games, ckpt.step, ckpt.loss_kind) == (GAMES, 20, "c51")
  assert evaluation.load(str(workdir / "checkpoints" / "10")).step == 10
  result = evaluation.evaluate_during_training(ckpt.model, ckpt.params, GAMES, loss_kind="c51",
                                               episodes_per_game=1, envs_per_game=1,
                                               max_steps_per_episode=30, reps=100)
  last = [json.loads(line) for line in open(workdir / "eval.jsonl")][-1]
  assert evaluation.scalars(result)["eval/iqm"] == pytest.approx(last["eval/iqm"])


def test_checkpoint_errors(workdir, tmp_path):
  with pytest.raises(evaluation.CheckpointError, match="does not exist"):
    evaluation.load(str(tmp_path / "missing"))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(evaluation.CheckpointError, match="holds no checkpoint"):
    evaluation.load(str(tmp_path / "empty"))
  # Metadata that disagrees with the stored parameters: another game set, another action layout.
  for change, match in ((dict(games=["pong", "breakout"]), "the head has 3 games"),
                        (dict(model={"num_atoms": 21}), r"head/\w+ has shape .* 21 atoms")):
    copy = tmp_path / f"copy_{len(os.listdir(tmp_path))}"
    shutil.copytree(workdir / "checkpoints" / "20", copy / "checkpoints" / "20")
    meta_file = copy / "checkpoints" / "20" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta.update({k: dict(meta[k], **v) if isinstance(v, dict) else v for k, v in change.items()})
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(evaluation.CheckpointError, match=match):
      evaluation.load(str(copy))


def test_launch_evaluate_and_report(repo, workdir, tmp_path):
  result = _launch(repo, "launch.evaluate", f"--checkpoint={workdir}", "--episodes=2",
                   "--envs_per_game=2", "--max_steps_per_episode=40", "--bootstrap_reps=100",
                   "--baselines=random,constant,behaviour",
                   f"--baseline_cache={tmp_path / 'cache'}")
  assert result.returncode == 0, result.stderr[-3000:]
  out = workdir / "eval"
  for name in ("results.json", "per_game.csv", "aggregates.csv", "episodes.csv"):
    assert (out / name).exists(), name
  assert "IQM [95% CI]" in result.stdout and "cut short at 40 agent steps" in result.stdout
  rows = list(csv.DictReader(open(out / "per_game.csv")))
  assert {(r["policy"], r["game"]) for r in rows} == {
      (p, g) for p in ("agent", "random", "best constant action", "behaviour data")
      for g in GAMES}
  agent, baselines, info = evaluation.read(str(workdir))
  assert info["step"] == 20 and [b.label for b in baselines] == [
      "random", "best constant action", "behaviour data"]
  assert "top action (share of steps)" in result.stdout
  assert "best constant action: pong" in result.stdout
  # The behaviour data's episodes are cut at the agent's cap.
  assert all(g.mean_length <= 40 for g in baselines[2].games)
  assert len(os.listdir(tmp_path / "cache")) == len(GAMES)
  assert len(agent.episodes) == 6 and agent.settings["epsilon"] == 0.001

  second = tmp_path / "second"  # Another evaluated run, written in-process (no workdir logs).
  played = evaluation.run_episodes(evaluation.fixed_action_policy(1), ["freeway", "pong"], 1,
                                   envs_per_game=1, max_steps_per_episode=20)
  evaluation.write(str(second), evaluation.from_rollouts(played, "agent", reps=50))

  report_dir = tmp_path / "report"
  result = _launch(repo, "launch.report", f"--runs={workdir},{second}", "--names=full,short",
                   f"--out={report_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("report.md", "per_game.csv", "aggregates.csv", "per_game_normalized.png",
               "aggregates.png", "learning_curves.png"):
    assert (report_dir / name).stat().st_size > 0, name
  md = (report_dir / "report.md").read_text()
  assert ("| game | random ref | human ref | full return | full HNS | short return | short HNS "
          "| random return | random HNS | best constant action return | best constant action HNS "
          "| behaviour data return | behaviour data HNS |") in md
  assert "evaluation IQM during pre-training from eval.jsonl (full: 1 episode(s)" in md
  assert "| full | " in md and "c51, CQL alpha 0.1" in md
  assert {r["policy"] for r in csv.DictReader(open(report_dir / "aggregates.csv"))} == {
      "full", "short", "random", "best constant action", "behaviour data"}
  run = report.load_run(str(workdir))
  assert run.name == "run" and len(run.history) == 4 and len(run.evals) == 2


def test_launch_evaluate_bad_input_is_one_clear_line(repo, workdir):
  """A game the checkpoint has no head for (another game set) fails before any rollout."""
  result = _launch(repo, "launch.evaluate", f"--checkpoint={workdir}",
                   "--games=pong,space_invaders", f"--out={workdir}/bad")
  assert result.returncode == 1, result.stderr[-3000:]
  assert ("error: --games: ['space_invaders'] not in the checkpoint's game list "
          "['pong', 'breakout', 'freeway']") in result.stderr
  assert "Traceback" not in result.stderr and not (workdir / "bad").exists()


def test_tables_render_markdown():
  ev = evaluation.Evaluation("a", [evaluation.game_score("pong", [0.0])], None, {})
  md = tables.comparison_table([ev], "markdown").splitlines()
  assert md[0] == "| game | random ref | human ref | a return | a HNS |"
  assert md[2] == "| pong | -20.7 | 14.6 | 0.0 | 0.586 |"
  assert "No aggregate for a" in " ".join(tables.notes([ev]))
  assert scores.DEFAULT_BOOTSTRAP_REPS >= 1000


def test_report_shows_each_distinct_baseline_once_and_needs_results(tmp_path):
  def ev(label, score):
    return evaluation.Evaluation(label, [evaluation.game_score("pong", [score])], None, {})
  runs = [report.Run(name, "", ev(name, 1.0), [ev("random", r)], {}, None, [], [], {})
          for name, r in (("a", -20.0), ("b", -20.0), ("c", -19.0))]
  assert [e.label for e in report.policies(runs)] == ["a", "b", "c", "random", "random (c)"]
  with pytest.raises(FileNotFoundError, match="launch.evaluate"):
    report.load_run(str(tmp_path))
