r"""Fine-tunes a pre-trained backbone: offline on unseen games, or online on game variants.

  python -m launch.export --workdir=runs/demo --out=runs/demo/backbone
  python -m launch.finetune --config=configs/finetune.py:offline_cpu --backbone=runs/demo/backbone \
      --workdir=runs/ft_space_invaders --config.data.data_dir=runs/ft_data
  python -m launch.finetune --config=configs/finetune.py:offline_cpu --backbone=runs/demo/backbone \
      --workdir=runs/ft_space_invaders_scratch --config.data.data_dir=runs/ft_data \
      --config.finetune.init=scratch
  python -m launch.finetune --config=configs/finetune.py:online_cpu --backbone=runs/demo/backbone \
      --workdir=runs/ft_freeway_m1d1

The job is `scaled_ql.train.finetune` (heads, backbone, then the pre-training loop; online:
emulators and a replay, `--config.online.replay=local` (default, one process) or `reverb`
(server and actor processes, pinned stack), see scaled_ql/train/online.py). Rerun to resume.
"""
from absl import app, flags

from scaled_ql import app as app_lib
from scaled_ql import errors, train
from scaled_ql.train import finetuning

_CONFIG = app_lib.config_flag(help_text="configs/finetune.py:PRESET.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, results.")
_BACKBONE = flags.DEFINE_string("backbone", None, "Backbone artifact (launch.export); the same "
                                "as --config.finetune.backbone.")
_DISTRIBUTED = app_lib.distributed_flags()


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None or not workdir:
    raise app.UsageError("--config=configs/finetune.py:PRESET and --workdir are required.")
  backbone = _BACKBONE.value or config.finetune.backbone
  with errors.input_checks():  # Before JAX starts: its CPU runtime is the artifact's encoder's.
    info = finetuning.check(config, backbone, workdir)
  app_lib.start_jax(_DISTRIBUTED, info["architecture"]["encoder"])
  train.finetune(config, workdir, backbone, info)


if __name__ == "__main__":
  app_lib.run(main)
