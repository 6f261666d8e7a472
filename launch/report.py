r"""Renders a comparison report of evaluated runs: Markdown and CSV tables, PNG figures.

  python -m launch.report --runs=runs/scaled_ql,runs/bc --names="Scaled QL,BC" --out=runs/report

Each of --runs is a pre-training workdir that `launch.evaluate` has scored (its eval/
directory), an eval directory, or a results.json. Baselines saved with the results (random
policy, behaviour data: `launch.evaluate --baselines=random,behaviour`) appear beside the runs,
so "Scaled QL vs BC vs the behaviour policy" is this one command. Writes report.md,
per_game.csv, aggregates.csv, per_game_normalized.png, aggregates.png, learning_curves.png into
--out (see scaled_ql.evaluation.report).
"""
from __future__ import annotations

import sys

from absl import flags

from scaled_ql import app as app_lib
from scaled_ql import errors
from scaled_ql.evaluation import report, tables

_RUNS = flags.DEFINE_list("runs", [], "Evaluated runs: workdirs, eval directories or "
                          "results.json files.")
_NAMES = flags.DEFINE_list("names", [], "A name per run (default: the workdir's name).")
_OUT = flags.DEFINE_string("out", None, "Output directory of the report.")
_TITLE = flags.DEFINE_string("title", "Evaluation report", "The report's title.")


def main(argv):
  del argv
  if not _RUNS.value or not _OUT.value:
    sys.exit("error: --runs=DIR[,DIR...] and --out=DIR are required.")
  if _NAMES.value and len(_NAMES.value) != len(_RUNS.value):
    sys.exit(f"error: --names has {len(_NAMES.value)} names for {len(_RUNS.value)} runs.")
  names = _NAMES.value or [None] * len(_RUNS.value)
  with errors.input_checks():
    runs = [report.load_run(path, name) for path, name in zip(_RUNS.value, names)]
    everything = report.policies(runs)
    paths = report.write_report(runs, _OUT.value, _TITLE.value)
  print(tables.comparison_table(everything))
  print("\n" + tables.aggregate_table(everything))
  for note in tables.notes(everything):
    print(f"- {note}")
  print(f"\nwrote {', '.join(paths.values())}")


if __name__ == "__main__":
  app_lib.run(main)
