"""`python -m benchmarks --what=sampler,eval,...`: the named benchmarks, in order."""
import importlib

from absl import app, flags

from benchmarks import NAMES, common

# Every benchmark module is imported before flags are parsed, so each one's flags are known.
MODULES = {name: importlib.import_module(f"benchmarks.{name}") for name in NAMES}

_WHAT = flags.DEFINE_string("what", "sampler",
                            f"Benchmark(s) to run, comma-separated: {', '.join(NAMES)}, or all.")


def main(argv):
  del argv
  names = [w.strip() for w in _WHAT.value.split(",") if w.strip()]
  if names == ["all"]:
    names = list(NAMES)
  unknown = [w for w in names if w not in MODULES]
  if unknown or not names:
    raise app.UsageError(f"--what={_WHAT.value!r}: choose from {', '.join(NAMES)} "
                         f"(comma-separated) or all.")
  for name in names:
    MODULES[name].run()


if __name__ == "__main__":
  common.run(main)
