r"""Pre-trains the multi-game Q-network on offline data (Scaled Q-Learning).

  python -m launch.pretrain --config=configs/pretrain.py:demo --workdir=runs/demo \
      --config.data.data_dir=runs/demo/data

The same command in the same workdir resumes from the newest checkpoint. Multi-host: run the
same command on every host with --coordinator_address/--num_processes/--process_id (or the
JAX_* environment variables, or --distributed_auto on TPU pods and SLURM); see launch/*.sh.

The job itself (checks, data, train state, loop) is `launch.training.train`.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from launch import common, training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, results.")
_DISTRIBUTED = common.define_distributed_flags()


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None or not workdir:
    raise app.UsageError("--config=configs/pretrain.py:PRESET and --workdir are required.")
  common.start_jax(_DISTRIBUTED, config.model.encoder)
  training.train(config, workdir)


if __name__ == "__main__":
  common.run(main)
