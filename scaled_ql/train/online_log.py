"""The episode returns of an online fine-tuning run: WORKDIR/online_returns.jsonl.

One JSON line per finished episode, {"env_step": E, "return": R}, E the run's env-step count
when it ended (both replay backends; with Reverb's actor processes, an actor's own steps times
the number of actors, the clock of its epsilon schedule). The file is kept across resumes: a
resumed run first drops the lines of episodes that ended after the env-step count of the
checkpoint it resumes from (their steps are played again). `read_online_returns(workdir)` is
what reports and comparisons read.
"""
from __future__ import annotations

import json
import os

RETURNS_FILE = "online_returns.jsonl"


def returns_path(workdir: str) -> str:
  return os.path.join(workdir, RETURNS_FILE)


def append_returns(workdir: str, returns) -> None:
  """Appends (env_step, return) pairs."""
  if not returns:
    return
  with open(returns_path(workdir), "a") as f:
    for env_step, value in returns:
      f.write(json.dumps({"env_step": int(env_step), "return": float(value)}) + "\n")


def read_online_returns(workdir: str) -> list[tuple[int, float]]:
  """[(env_step, return)] of every episode a run finished, in the order they ended ([] when
  none). A line cut by a kill is skipped."""
  path = returns_path(workdir)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
        out.append((int(record["env_step"]), float(record["return"])))
      except (ValueError, KeyError, TypeError):
        continue
  return out


def truncate_returns(workdir: str, env_steps: int) -> None:
  """Keeps the episodes that ended at or before `env_steps` (a resume from that count)."""
  path = returns_path(workdir)
  if not os.path.exists(path):
    return
  kept = [r for r in read_online_returns(workdir) if r[0] <= env_steps]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for env_step, value in kept:
      f.write(json.dumps({"env_step": env_step, "return": value}) + "\n")
  os.replace(tmp, path)
