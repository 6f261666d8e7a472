"""What a training run shows and logs: the progress bar, TensorBoard scalars, metrics.jsonl,
and the loss curve printed at the end."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import tqdm

METRICS_LOG = "metrics.jsonl"


class ScalarWriter:
  """TensorBoard scalars (tensorboardX event files, written by its own thread): the interface
  of clu's writers (write_scalars, flush, close) without TensorFlow, so a run from in-memory or
  emulator data needs none. `logdir` None writes nothing (processes other than 0)."""

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(logdir, flush_secs=10)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(name, float(value), int(step))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def metric_writer(logdir: str) -> ScalarWriter:
  """TensorBoard scalars from process 0; other processes write nothing."""
  return ScalarWriter(logdir if jax.process_index() == 0 else None)


def progress(total, initial: int = 0, desc: str = "train", unit: str = "step"):
  """A console progress bar with rate and ETA, on process 0 only."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stdout, mininterval=1.0,
                   smoothing=0.05)


def append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def print_curve(history: list[dict], rows: int = 12) -> None:
  """The loss curve of a run as a table (at most `rows` evenly spaced rows)."""
  if not history:
    return
  picks = sorted(set(np.linspace(0, len(history) - 1, min(rows, len(history))).astype(int)))
  print(f"\n{'step':>8} {'loss':>8} {'td':>8} {'cql':>8} {'Q(s,a)':>8} {'lse Q':>8} "
        f"{'steps/s':>8} {'wait':>6}")
  for h in (history[i] for i in picks):
    print(f"{h['step']:>8} {h['loss']:>8.4f} {h['td_loss']:>8.4f} {h['cql_penalty']:>8.4f} "
          f"{h['q_data']:>8.3f} {h['q_logsumexp']:>8.3f} {h['steps_per_second']:>8.1f} "
          f"{h['data_wait_fraction']:>6.1%}")


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS_LOG)
