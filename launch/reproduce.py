r"""The paper's claims at laptop scale, in one command: logged-agent data, networks per method
and data split from several training seeds, model sizes, transfer to a held-out game and a game
variant, baselines (random, best constant action, behaviour data), evaluation, and a report with
the table "claim | paper | here | holds at this scale?", every verdict judged over seeds.

  python -m launch.reproduce --workdir=runs/reproduce                 # ~2 h 20 min, 2 cores
  python -m launch.reproduce --workdir=runs/reproduce_quick --budget=quick   # ~30 min
  python -m launch.reproduce --workdir=runs/second --games=second --main_claim_only
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
_GAMES = flags.DEFINE_string(
    "games", "", "Training games instead of the budget's: a comma-separated list, or a named "
    "set (" + "; ".join(k + ": " + ",".join(v) for k, v in reproduce.GAME_SETS.items()) + ").")
_HELDOUT = flags.DEFINE_string("heldout_game", "", "Held-out game of offline fine-tuning.")
_VARIANT = flags.DEFINE_string("variant", "", "Online fine-tuning's variant as GAME:MODE:"
                               "DIFFICULTY (a training game); with --games and no variant "
                               "of one of them, online transfer is left out.")
_MAIN_ONLY = flags.DEFINE_bool("main_claim_only", False, "Train only the main claim's networks "
                               "(Scaled QL and BC on the low split) at the budget's data, "
                               "updates and seeds.")
_WORKERS = flags.DEFINE_integer(
    "workers", 2, "Jobs side by side (a game's data, a network, a baseline, a transfer arm), "
    "each in its own process pinned to one core; 1: one at a time in this process, on every "
    "core. The bits can depend on a job's cores, so a work directory keeps the worker count it "
    "was made with (another one is refused, like another JAX).")
_RERUN = flags.DEFINE_bool("rerun_changed", False, "Make again the stages made under another "
                           "JAX, XLA:CPU runtime or code version (else they are refused).")


def main(argv):
  del argv
  with errors.input_checks():
    plan = reproduce.plan(
        _BUDGET.value, _SCALE.value, _SEED.value, train_games=_GAMES.value or None,
        heldout_game=_HELDOUT.value or None,
        variant=reproduce.parse_variant(_VARIANT.value) if _VARIANT.value else None,
        main_claim_only=_MAIN_ONLY.value)
  app_lib.start_jax(None, reproduce.encoder(plan))
  paths = reproduce.reproduce(_WORKDIR.value, plan, rerun_changed=_RERUN.value,
                              workers=_WORKERS.value)
  print(f"report: {paths['markdown']}", flush=True)


if __name__ == "__main__":
  app_lib.run(main)
