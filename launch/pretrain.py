r"""Pre-trains the multi-game Q-network on offline data (Scaled Q-Learning).

  python -m launch.pretrain --config=configs/pretrain.py:demo --workdir=runs/demo \
      --config.data.data_dir=runs/demo/data --config.games=road_runner

The same command in the same workdir resumes from the newest checkpoint. Multi-host: run the
same command on every host with --coordinator_address/--num_processes/--process_id (or the
JAX_* environment variables, or --distributed_auto on TPU pods and SLURM); see launch/*.sh.
The job is `scaled_ql.train.pretrain`.
"""
from absl import app, flags

from scaled_ql import app as app_lib
from scaled_ql import train

_CONFIG = app_lib.config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, results.")
_DISTRIBUTED = app_lib.distributed_flags()


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None or not workdir:
    raise app.UsageError("--config=configs/pretrain.py:PRESET and --workdir are required.")
  app_lib.start_jax(_DISTRIBUTED, config.model.encoder)
  train.pretrain(config, workdir)


if __name__ == "__main__":
  app_lib.run(main)
