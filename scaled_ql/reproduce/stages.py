"""The stage folders of a reproduction's work directory: settings checked, done markers.

Each stage (data, a network's training, an evaluation, a baseline) has a folder with
`stage.json`: the settings it was made with, whether it is done, its result, and the
provenance of the process that made it (`run_meta.provenance`: JAX and jaxlib versions,
XLA:CPU's runtime, CPU cores, the library's code). A stage whose settings and provenance match
is kept; one made with other settings is refused; one made under another provenance is refused
with what differs, or, where the user asks for it (`rerun_changed`), made again. Results made
under different provenances are therefore never mixed in one report.

Paths inside the work directory are kept in `stage.json` relative to it ("{workdir}/..."), so
a work directory moved or copied elsewhere resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, Optional

from scaled_ql import errors, run_meta

STAGE_FILE = "stage.json"
WORKDIR_TAG = "{workdir}"


class Stages:
  """The stage folders of a work directory (module docstring)."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print,
               rerun_changed: bool = False, provenance: Optional[dict] = None):
    self.workdir, self.log = os.path.abspath(workdir), log
    self.rerun_changed = rerun_changed
    self.provenance = provenance if provenance is not None else run_meta.provenance()
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

  def spec(self) -> tuple:
    """What a worker process needs to open these stages (`from_spec`): picklable."""
    return (self.workdir, self.rerun_changed, self.provenance)

  @classmethod
  def from_spec(cls, spec: tuple) -> "Stages":
    workdir, rerun_changed, provenance = spec
    return cls(workdir, print, rerun_changed=rerun_changed, provenance=provenance)

  def done(self, *names: str) -> bool:
    """Whether every stage of `names` is done (its settings and provenance are not checked)."""
    return all((self.saved(n) or {}).get("done") for n in names)

  def saved(self, name: str) -> Optional[dict]:
    """A stage's stage.json (None when the stage was never started)."""
    marker = os.path.join(self.path(name), STAGE_FILE)
    if not os.path.exists(marker):
      return None
    with open(marker) as f:
      return json.load(f)

  def run(self, name: str, settings: dict, fn: Callable[[str], dict]) -> dict:
    """fn(folder) -> result dict, unless the stage is done with these settings and provenance."""
    folder = self.path(name)
    marker = os.path.join(folder, STAGE_FILE)
    settings = self._portable(settings)
    saved = self.saved(name)
    if saved is not None:
      # Stages written before paths were kept relative hold this work directory's absolute
      # paths: the same settings, unless the directory has moved since.
      before = self._portable(saved.get("settings", {}))
      if before != settings:
        raise errors.InputError(
            f"{folder} was made with other settings ({_diff(before, settings)})"
            f"; use another work directory, or remove that folder to redo the stage.")
      made_under = saved.get("provenance", {})
      if made_under != self.provenance:
        what = _diff(made_under, self.provenance)
        if not self.rerun_changed:
          raise errors.InputError(
              f"{folder} was made under another stack or code ({what}); its results would be "
              f"mixed with this run's. Rerun on the stack it was made with, use another work "
              f"directory, or pass --rerun_changed to make such stages again.")
        self.log(f"[{name}] made under another stack or code ({what}): made again")
        shutil.rmtree(folder)
        saved = None
      elif saved.get("done"):
        self.log(f"[{name}] done before: kept")
        return self._resolve(saved.get("result", {}))
    os.makedirs(folder, exist_ok=True)
    _write_json(marker, dict(settings=settings, provenance=self.provenance, done=False))
    start = time.time()
    self.log(f"[{name}] running")
    result = fn(folder)
    _write_json(marker, dict(settings=settings, provenance=self.provenance, done=True,
                             result=self._portable(result),
                             seconds=round(time.time() - start, 1)))
    self.log(f"[{name}] done in {time.time() - start:.0f}s")
    return result


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
