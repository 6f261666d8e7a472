"""Bad input, as one exception type the jobs raise and the apps print as one line.

A job (`scaled_ql.train.pretrain`, `evaluation.job.evaluate`, ...) checks everything a user can
get wrong before long work starts and raises `InputError` naming the file, game or field and how
to fix it. `launch/` apps (through `scaled_ql.app.run`) print an `InputError` as one
`error: ...` line; every other exception keeps its traceback, because it is a bug.
"""
from __future__ import annotations

import contextlib


class InputError(ValueError):
  """Bad input (config value, dataset, checkpoint, artifact), named in the message."""


@contextlib.contextmanager
def input_checks(*kinds: type):
  """Inside the block, ValueError, FileNotFoundError (and `kinds`) are bad input: re-raised as
  InputError (the original as its cause). Wrap checks only, never the work itself."""
  try:
    yield
  except InputError:
    raise
  except (ValueError, FileNotFoundError, *kinds) as e:
    raise InputError(str(e)) from e
