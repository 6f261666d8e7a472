"""The training job shared by pre-training and fine-tuning: checks, data, train state (restored
or initialised), the jitted update, and the loop with progress, TensorBoard, checkpoints, the NaN
guard and periodic evaluation. `launch.pretrain` and `launch.finetune` parse flags and call
`train`.

Phases: start-up and checks -> mesh -> data -> model, optimizer and state (restore or init) ->
update step -> loop.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from launch import common
from scaled_ql import checkpoints, data, evaluation, games, learner, losses, networks, parallel
from scaled_ql.evaluation import report


def run_meta(config) -> dict:
  """What the checkpoint's parameters mean; a resume must agree on all of it."""
  return dict(model=common.flatten(config.model.to_dict()), games=list(config.games),
              loss_kind=config.loss.kind)


def check_resume_compatible(saved: dict, current: dict, workdir: str) -> None:
  if saved.get("games") != current["games"]:
    raise ValueError(f"{workdir} holds a checkpoint trained on games {saved.get('games')}, but "
                     f"config.games is {current['games']}. Use another --workdir.")
  diffs = [f"model.{k}: checkpoint {saved.get('model', {}).get(k)!r} vs config {v!r}"
           for k, v in current["model"].items() if saved.get("model", {}).get(k) != v
           and k != "dtype"]
  if saved.get("loss_kind") != current["loss_kind"]:
    diffs.append(f"loss.kind: checkpoint {saved.get('loss_kind')!r} vs config "
                 f"{current['loss_kind']!r}")
  if diffs:
    raise ValueError(f"{workdir} holds a checkpoint of another architecture ("
                     + "; ".join(diffs) + "). Use another --workdir.")
  for key in sorted(set(current) - {"games", "model", "loss_kind"}):  # e.g. "finetune"
    if saved.get(key) != current[key]:
      raise ValueError(f"{workdir} holds a run with {key} {saved.get(key)!r}, but this run has "
                       f"{current[key]!r}. Use another --workdir.")


def make_sources(config, host: int, hosts: int) -> dict:
  """Per game, a deterministic stream of this host's episodes from position `start` on."""
  d = config.data
  checkpoint_ids = (list(range(d.checkpoint_range[0], d.checkpoint_range[1] + 1))
                    if d.checkpoint_range else None)

  def source(game):
    def episodes(start: int):
      return data.read_episodes(d.data_dir, game, runs=list(d.runs) or None,
                                checkpoints=checkpoint_ids, shard_index=host, num_shards=hosts,
                                start=start)
    return episodes

  return {g: source(g) for g in config.games}


# >>> periodic evaluation (issue 5) >>>
def check_eval_config(config) -> None:
  """Bad `config.eval_every` / `config.eval.*` values fail at start-up, naming the field."""
  if config.eval_every < 0:
    raise ValueError(f"config.eval_every must be >= 0 (0 = never), got {config.eval_every}.")
  if config.eval_every:
    e = config.eval
    try:
      evaluation.check_budget(e.episodes_per_game, e.envs_per_game, e.epsilon,
                              e.max_steps_per_episode or None)
    except ValueError as err:
      raise ValueError(f"config.eval: {err}") from err


def game_variant(config) -> dict:
  """{"mode", "difficulty"} an online fine-tuning run plays (None: the ROM's default); both
  None for offline runs."""
  if "online" not in config or config.get("finetune", {}).get("mode") != "online":
    return dict(mode=None, difficulty=None)
  return {k: (None if config.online[k] == -1 else config.online[k]) for k in ("mode", "difficulty")}


def evaluate_periodically(config, model, params, names, step: int, workdir: str, writer) -> str:
  """Plays the current parameters (config.eval) and logs the scores to TensorBoard and
  eval.jsonl. Returns a one-line summary on process 0, '' elsewhere."""
  if jax.process_count() > 1:  # Every process takes part in the gather; process 0 plays.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params)
  if jax.process_index() != 0:
    return ""
  e = config.eval
  result = evaluation.evaluate_during_training(
      model, params, names, loss_kind=config.loss.kind, episodes_per_game=e.episodes_per_game,
      envs_per_game=e.envs_per_game, epsilon=e.epsilon, seed=e.seed,
      max_steps_per_episode=e.max_steps_per_episode or None, v_min=config.loss.v_min,
      v_max=config.loss.v_max, **game_variant(config))
  writer.write_scalars(step, evaluation.scalars(result))
  evaluation.append_jsonl(os.path.join(workdir, evaluation.EVAL_LOG), step, result)
  iqm = (f"IQM {result.aggregates.iqm.value:.3f}" if result.aggregates
         else "no game with reference scores")
  return (f"eval at step {step}: {iqm}; returns "
          + ", ".join(f"{g.game} {g.mean_return:.1f}" for g in result.games))
# <<< periodic evaluation (issue 5) <<<


def offline_batches(config, names, host: int, hosts: int, counts):
  """The offline data of `config.data`: this host's share of every game, game-blocked batches,
  prefetched. Returns a Prefetcher (state_dict / load_state_dict / close) and its block size."""
  for game in names:  # A missing or empty dataset fails here, not in the prefetch thread.
    data.find_sources(config.data.data_dir, game, runs=list(config.data.runs) or None)
  sampler = data.MultiGameSampler(
      make_sources(config, host, hosts), names, config.batch_size // hosts,
      config.data.pool_frames_per_game, n_step=config.loss.n_step, gamma=config.loss.gamma,
      game_weights=counts, refresh_every=config.data.refresh_every,
      refresh_episodes=config.data.refresh_episodes,
      checkpoint_range=tuple(config.data.checkpoint_range) or None, seed=config.seed,
      host_index=host)
  return data.Prefetcher(sampler, depth=config.data.prefetch), sampler.block_size


def train(config, workdir: str, *, what: str = "pre-training", initial_params=None,
          heads_only: bool = False, meta_extra: Optional[dict] = None,
          make_batches: Callable = offline_batches, on_start: Optional[Callable] = None,
          on_step: Optional[Callable] = None) -> None:
  """The training job of `config` in `workdir`: pre-training, and fine-tuning (launch.finetune).

  initial_params: parameters replacing parts of the random initialisation of a fresh run (see
  `learner.create_train_state`); unused on resume. heads_only: a frozen backbone.
  meta_extra: more run metadata stored with every checkpoint. make_batches(config, names,
  host, hosts, counts) -> (batches, block_size): an iterator of host-local Batches with
  state_dict / load_state_dict / close (default: the offline sampler); when it ends
  (StopIteration) the run stops there, with a checkpoint. on_start(step, state) is called once
  the state is restored or initialised, on_step(step, state) after every update (online
  fine-tuning publishes parameters to the actors there).
  """
  # -- Start-up and checks: everything that can be wrong fails here, before long work, as one
  # "error: ..." line (common.input_errors). --------------------------------------------------
  with common.input_errors():
    game_list = games.get_games(config.games)
    names = tuple(g.name for g in game_list)
    losses.check_loss_config(config.loss.kind, config.model.num_atoms, config.loss.cql_alpha,
                             config.loss.n_step, config.loss.gamma)
    check_eval_config(config)  # Periodic evaluation (issue 5).
    model = networks.build_q_network(config.model, len(names))
    if make_batches is offline_batches and not config.data.data_dir:
      raise ValueError("config.data.data_dir is empty: point it at a dataset directory "
                       "(`python -m launch.make_dataset ...` makes one).")
    host, hosts = jax.process_index(), jax.process_count()
    mesh = parallel.make_mesh(config.parallel.model_axis_size)
    parallel.check_batch_divides(config.batch_size, mesh, hosts, len(names))
    counts = parallel.split_counts(config.batch_size // hosts, len(names),
                                   list(config.data.game_weights))
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    save_interval_steps=config.checkpoint_every,
                                    max_to_keep=config.keep_checkpoints)
    meta = dict(run_meta(config), **(meta_extra or {}))
    if ckpt.all_steps():
      check_resume_compatible(ckpt.read_meta(ckpt.all_steps()[-1]), meta, workdir)
    if host == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(common.flatten(config.to_dict()), f, indent=1)

    # -- Data. ----------------------------------------------------------------------------------
    batches, block_size = make_batches(config, names, host, hosts, counts)

  # -- Model, optimizer, train state: restored (any device count) or initialised. ----------
  optimizer = learner.make_optimizer(config.optimizer, heads_only=heads_only)
  abstract = learner.abstract_train_state(model, optimizer)
  shardings = learner.state_shardings(mesh, abstract, config.parallel.min_shard_size)
  restored = ckpt.restore_latest(abstract, shardings)
  if restored is not None:
    state, start = restored.state, restored.step
    batches.load_state_dict(restored.sampler["hosts"][host])
    print(f"resumed from step {start} in {ckpt.directory}", flush=True)
  else:
    state, start = learner.create_train_state(model, optimizer, jax.random.PRNGKey(config.seed),
                                              shardings, initial_params), 0
  update = learner.jit_update(
      learner.make_update_fn(model, optimizer, config.loss, games.legal_action_mask(names),
                             config.target_update_period, block_size), mesh, shardings)
  if on_start is not None:
    on_start(start, state)
  if host == 0:
    print(f"{what} {networks.count_params(abstract.params):,} parameters"
          f"{' (backbone frozen)' if heads_only else ''} on {len(names)} "
          f"game{'s' if len(names) > 1 else ''}, {jax.device_count()} devices x {hosts} hosts, "
          f"batch {config.batch_size} ({'/'.join(map(str, counts))} per game per host), "
          f"steps {start} -> {config.num_steps}", flush=True)

  # -- Loop. ---------------------------------------------------------------------------------
  writer = common.metric_writer(os.path.join(workdir, "tensorboard"))
  bar = common.progress(config.num_steps, initial=start)
  pending, wait, window_start, window_steps = None, 0.0, time.time(), 0

  def check(step_metrics, step):
    values = {k: float(v) for k, v in step_metrics.items()}
    if not all(np.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in values.items())
          + f". Stopping; the newest checkpoint in {ckpt.directory} holds finite parameters.")
    return values

  def save(step, state, metrics, force: bool) -> None:
    check(metrics, step)  # Never a checkpoint of non-finite parameters.
    host_states = parallel.allgather_json(batches.state_dict())
    ckpt.save(step, state, {"hosts": host_states}, meta, force=force)

  step, saved, metrics = start, start, None
  try:
    while step < config.num_steps:
      t = time.time()
      try:
        host_batch = next(batches)
      except StopIteration:  # The data ended (online: the actors' env-step budget is spent).
        break
      step += 1
      batch = parallel.global_batch(host_batch, mesh)
      wait += time.time() - t
      state, metrics = update(state, batch)
      if pending is not None:  # Check the previous step's loss while this one runs.
        values = check(*pending)
        bar.set_postfix(loss=f"{values['loss']:.4f}", cql=f"{values['cql_penalty']:.3f}",
                        refresh=False)
      pending = (metrics, step)
      bar.update()
      window_steps += 1
      if on_step is not None:
        on_step(step, state)
      last = step == config.num_steps
      if step % config.log_every == 0 or last:
        values = check(metrics, step)
        elapsed = time.time() - window_start
        values.update(steps_per_second=window_steps / elapsed, data_wait_fraction=wait / elapsed)
        writer.write_scalars(step, values)
        if host == 0:
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(dict(step=step, **values)) + "\n")
        wait, window_start, window_steps = 0.0, time.time(), 0
      if step % config.checkpoint_every == 0 or last:
        save(step, state, metrics, force=last)
        saved = step
      # >>> periodic evaluation (issue 5) >>>
      if config.eval_every and (step % config.eval_every == 0 or last):
        t = time.time()
        summary = evaluate_periodically(config, model, state.params, names, step, workdir, writer)
        if summary:
          bar.write(summary)
        window_start += time.time() - t  # Evaluation time is not training time (steps/s).
      # <<< periodic evaluation (issue 5) <<<
    if saved != step:  # Stopped by the data: keep the last step's parameters.
      save(step, state, metrics, force=True)
  finally:
    bar.close()
    batches.close()
    writer.flush()
    ckpt.wait()
    ckpt.close()
  if host == 0 and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    # The whole run's curve, across resumes (a rerun after a crash may repeat some steps).
    print_curve(report.read_jsonl(os.path.join(workdir, "metrics.jsonl")))
    print(f"done: step {step}; checkpoints in {ckpt.directory}; TensorBoard logs "
          f"in {os.path.join(workdir, 'tensorboard')}; scalars in "
          f"{os.path.join(workdir, 'metrics.jsonl')}", flush=True)


def print_curve(history: list[dict], rows: int = 12) -> None:
  """The loss curve of this run as a table (at most `rows` evenly spaced rows)."""
  if not history:
    return
  picks = sorted(set(np.linspace(0, len(history) - 1, min(rows, len(history))).astype(int)))
  print(f"\n{'step':>8} {'loss':>8} {'td':>8} {'cql':>8} {'Q(s,a)':>8} {'lse Q':>8} "
        f"{'steps/s':>8} {'wait':>6}")
  for h in (history[i] for i in picks):
    print(f"{h['step']:>8} {h['loss']:>8.4f} {h['td_loss']:>8.4f} {h['cql_penalty']:>8.4f} "
          f"{h['q_data']:>8.3f} {h['q_logsumexp']:>8.3f} {h['steps_per_second']:>8.1f} "
          f"{h['data_wait_fraction']:>6.1%}")

