r"""The paper's claims at laptop scale, in one command: logged-agent data, one network per method
and data split, three model sizes, transfer to a held-out game and a game variant, evaluation,
and a report with the table "claim | paper | here | holds at this scale?".

  python -m launch.reproduce --workdir=runs/reproduce                 # ~2 h on a 2-core CPU
  python -m launch.reproduce --workdir=runs/reproduce_quick --budget=quick   # ~30 min
  python -m launch.reproduce --workdir=runs/reproduce_x4 --scale=4    # 4x data and updates

Every stage is cached in the work directory; rerun the same command to resume. The job is
`scaled_ql.reproduce.reproduce`.
"""
from absl import flags

from scaled_ql import app as app_lib
from scaled_ql import errors, reproduce

_WORKDIR = flags.DEFINE_string("workdir", "runs/reproduce", "Stages and the report.")
_BUDGET = flags.DEFINE_enum("budget", "default", ["test", "quick", "default"],
                            "quick: the main claim only (~30 min); default: every claim.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies the data and update budgets.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data, networks and evaluation.")


def main(argv):
  del argv
  with errors.input_checks():
    plan = reproduce.plan(_BUDGET.value, _SCALE.value, _SEED.value)
  app_lib.start_jax(None, reproduce.encoder(plan))
  paths = reproduce.reproduce(_WORKDIR.value, plan)
  print(f"report: {paths['markdown']}", flush=True)


if __name__ == "__main__":
  app_lib.run(main)
