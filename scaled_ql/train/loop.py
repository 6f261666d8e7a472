"""The training job shared by pre-training and fine-tuning (offline and online).

`train(config, workdir)` reads top to bottom in phases: start-up and checks (everything a user
can get wrong raises `errors.InputError` here, before long work) -> mesh -> data -> model,
optimizer and state (restored onto any device count, or initialised) -> update step -> loop
(progress bar, TensorBoard, metrics.jsonl, checkpoints with the data stream's state, the NaN
guard, periodic evaluation).

Where batches come from, and what happens at start and after each step, is a `Hooks` object:
`OfflineData` (the default: the offline sampler over config.data) or online fine-tuning's
(`scaled_ql.train.online`: batches from a Reverb replay, parameters published to actors).

The loop never waits on the device except where it must: metrics are read from the device
(one `jax.device_get`) every `config.log_every` steps and at checkpoints, not every step
(so a non-finite loss is caught within `log_every` steps, and never checkpointed), and the
next host batch is prepared by the data stream's thread while a step runs; the update is
dispatched asynchronously. `Result.host_syncs` counts the reads.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator, NamedTuple, Optional, Protocol

import jax
import numpy as np

from scaled_ql import (checkpoints, errors, games, learner, losses, networks, parallel,
                       run_meta)
from scaled_ql.data.batch import Batch
from scaled_ql.evaluation import report
from scaled_ql.train import metrics as metrics_lib
from scaled_ql.train import periodic
from scaled_ql.train.offline import OfflineData


class BatchStream(Protocol):
  """Host-local batches; their state is saved with every checkpoint and restored on resume.
  StopIteration ends the run there, with a checkpoint."""

  def __next__(self) -> Batch: ...
  def state_dict(self) -> dict: ...
  def load_state_dict(self, state: dict) -> None: ...
  def close(self) -> None: ...


class Hooks(Protocol):
  """What a job adds to the loop: its data, and calls at start and after each update."""

  def check(self, config, names: tuple[str, ...]) -> None:
    """Raises ValueError / FileNotFoundError for bad input, before anything starts."""

  def batches(self, config, names: tuple[str, ...], host: int, hosts: int,
              counts: tuple[int, ...]) -> tuple[BatchStream, int]:
    """(this host's batch stream, the learner's block size)."""

  def on_start(self, step: int, state: learner.TrainState) -> None:
    """Once the state is restored or initialised, before the first update."""

  def on_step(self, step: int, state: learner.TrainState) -> None:
    """After every update (dispatched, not necessarily finished)."""


class Result(NamedTuple):
  step: int  # The last step trained (and checkpointed).
  checkpoint_dir: str
  host_syncs: int  # Device-to-host reads of metrics by the loop (log points and checkpoints).
  last_metrics: dict  # The last metrics read ({} when no step ran).


def train(config, workdir: str, *, what: str = "pre-training", hooks: Optional[Hooks] = None,
          initial_params: Any = None, heads_only: bool = False,
          meta_extra: Optional[dict] = None) -> Result:
  """The training job of `config` in `workdir`; the same call in the same workdir resumes.

  hooks: data and callbacks (default `OfflineData()`). initial_params: parameters replacing
  parts of the random initialisation of a fresh run (`learner.create_train_state`); unused on
  resume. heads_only: a frozen backbone. meta_extra: more run metadata stored with every
  checkpoint, which a resume must match.
  """
  hooks = hooks if hooks is not None else OfflineData()
  # -- Start-up and checks. --------------------------------------------------------------------
  with errors.input_checks():
    names = games.canonical_names(config.games)
    with config.unlocked():
      config.games = names
    losses.check_loss_config(config.loss.kind, config.model.num_atoms, config.loss.cql_alpha,
                             config.loss.n_step, config.loss.gamma)
    periodic.check_eval_config(config)
    for field in ("num_steps", "log_every", "checkpoint_every"):
      if config[field] < 1:
        raise ValueError(f"config.{field} must be >= 1, got {config[field]}.")
    model = networks.build_q_network(config.model, len(names))
    hooks.check(config, names)
    host, hosts = jax.process_index(), jax.process_count()
    mesh = parallel.make_mesh(config.parallel.model_axis_size)
    parallel.check_batch_divides(config.batch_size, mesh, hosts, len(names))
    counts = parallel.split_counts(config.batch_size // hosts, len(names),
                                   list(config.data.game_weights))
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    save_interval_steps=config.checkpoint_every,
                                    max_to_keep=config.keep_checkpoints)
    meta = run_meta.build(config, meta_extra)
    if ckpt.all_steps():
      run_meta.check_resume_compatible(ckpt.read_meta(ckpt.all_steps()[-1]), meta, workdir)
    if host == 0:
      run_meta.write_config(workdir, config)
      run_meta.write_provenance(workdir)

    # -- Data. ----------------------------------------------------------------------------------
    batches, block_size = hooks.batches(config, names, host, hosts, counts)

  # -- Model, optimizer, train state: restored (any device count) or initialised. ------------
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

  # -- Update step. ----------------------------------------------------------------------------
  update = learner.jit_update(
      learner.make_update_fn(model, optimizer, config.loss, games.legal_action_mask(names),
                             config.target_update_period, block_size), mesh, shardings)
  hooks.on_start(start, state)
  if host == 0:
    print(f"{what} {networks.count_params(abstract.params):,} parameters"
          f"{' (backbone frozen)' if heads_only else ''} on {len(names)} "
          f"game{'s' if len(names) > 1 else ''}, {jax.device_count()} devices x {hosts} hosts, "
          f"batch {config.batch_size} ({'/'.join(map(str, counts))} per game per host), "
          f"steps {start} -> {config.num_steps}", flush=True)

  # -- Loop. ---------------------------------------------------------------------------------
  writer = metrics_lib.metric_writer(os.path.join(workdir, "tensorboard"))
  bar = metrics_lib.progress(config.num_steps, initial=start)
  clock = _Clock()
  syncs, cache = [0], {}

  def read(step_metrics, step) -> dict:
    """The metrics of `step` on the host (the loop's only device read, once per step at most);
    finite or raises."""
    if cache.get("step") == step:
      return dict(cache["values"])
    syncs[0] += 1
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    cache.update(step=step, values=dict(values))
    if not all(np.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in values.items())
          + f". Stopping; the newest checkpoint in {ckpt.directory} holds finite parameters.")
    return values

  def save(step, state, step_metrics, force: bool) -> None:
    read(step_metrics, step)  # Never a checkpoint of non-finite parameters.
    host_states = parallel.allgather_json(batches.state_dict())
    ckpt.save(step, state, {"hosts": host_states}, meta, force=force)

  step, saved, step_metrics, values = start, start, None, {}
  try:
    while step < config.num_steps:
      # The data stream prepares batches ahead in its own thread (offline: the Prefetcher), so
      # this is a queue read while the previous step runs on the device. It is taken here, not
      # earlier, so that the stream's state saved at a checkpoint is that of the batches used.
      host_batch = _next(batches, clock)
      if host_batch is None:
        break
      step += 1
      with jax.transfer_guard_device_to_host("disallow"):  # Dispatch only: no hidden reads.
        state, step_metrics = update(state, parallel.global_batch(host_batch, mesh))
      hooks.on_step(step, state)
      last = step == config.num_steps
      bar.update()
      clock.steps += 1
      if step % config.log_every == 0 or last:
        values = read(step_metrics, step)
        bar.set_postfix(loss=f"{values['loss']:.4f}", cql=f"{values['cql_penalty']:.3f}",
                        refresh=False)
        values.update(clock.window())
        writer.write_scalars(step, values)
        if host == 0:
          metrics_lib.append_jsonl(metrics_lib.metrics_path(workdir), dict(step=step, **values))
      if step % config.checkpoint_every == 0 or last:
        save(step, state, step_metrics, force=last)
        saved = step
      if config.eval_every and (step % config.eval_every == 0 or last):
        t = time.time()
        summary = periodic.evaluate(config, model, state.params, names, step, workdir, writer)
        if summary:
          bar.write(summary)
        clock.pause(time.time() - t)  # Evaluation time is not training time (steps/s).
    if saved != step:  # Stopped by the data: keep the last step's parameters.
      save(step, state, step_metrics, force=True)
      values = read(step_metrics, step)
  finally:
    bar.close()
    batches.close()
    writer.close()
    ckpt.wait()
    ckpt.close()
  if host == 0 and os.path.exists(metrics_lib.metrics_path(workdir)):
    # The whole run's curve, across resumes (a rerun after a crash may repeat some steps).
    metrics_lib.print_curve(report.read_jsonl(metrics_lib.metrics_path(workdir)))
    print(f"done: step {step}; checkpoints in {ckpt.directory}; TensorBoard logs "
          f"in {os.path.join(workdir, 'tensorboard')}; scalars in "
          f"{metrics_lib.metrics_path(workdir)}; {syncs[0]} metric reads from the device in "
          f"{step - start} steps", flush=True)
  return Result(step, ckpt.directory, syncs[0], values)


class _Clock:
  """Steps/s and the fraction of time spent waiting for data, per logging window."""

  def __init__(self):
    self.start, self.wait, self.steps = time.time(), 0.0, 0

  def pause(self, seconds: float) -> None:
    self.start += seconds

  def window(self) -> dict:
    elapsed = max(time.time() - self.start, 1e-9)
    out = dict(steps_per_second=self.steps / elapsed, data_wait_fraction=self.wait / elapsed)
    self.start, self.wait, self.steps = time.time(), 0.0, 0
    return out


def _next(batches: Iterator[Batch], clock: _Clock) -> Optional[Batch]:
  """The next host batch (None when the stream ends), timed as data wait."""
  t = time.time()
  try:
    return next(batches)
  except StopIteration:  # The data ended (online: the actors' env-step budget is spent).
    return None
  finally:
    clock.wait += time.time() - t
