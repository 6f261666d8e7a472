r"""Prints the parameter count of each part of a config's Q-network, without allocating it.

  python -m launch.model_summary --config=configs/pretrain.py:paper_resnet101

Shapes come from `jax.eval_shape`, so even the 80M-parameter model costs no memory or compile.
"""
from absl import app

from scaled_ql import app as app_lib
from scaled_ql import errors
from scaled_ql.networks import summary

_CONFIG = app_lib.config_flag()


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/pretrain.py:PRESET is required.")
  with errors.input_checks():
    rows = summary.summarize(config)
  m = config.model
  arch = (f"ResNet-{m.depth} x{m.width:g}" if m.encoder == "resnet" else m.encoder) + (
      f", F={m.spatial_features}, D={m.feature_dim}, {m.num_atoms} atoms, "
      f"{len(config.games)} games x 18 action slots")
  print(f"Q-network: {arch}")
  width = max(len(r[0]) for r in rows)
  for name, count in rows:
    print(f"  {name:<{width}}  {count:>13,d}  ({count / 1e6:7.2f}M)")
  total = rows[-1][1]
  paper = summary.PAPER_PARAMS.get(m.depth) if m.encoder == "resnet" and len(config.games) == 40 \
      else None
  if paper:
    print(f"  paper (Kumar et al. 2023, ResNet-{m.depth}, 40 games): ~{paper / 1e6:.0f}M; "
          f"this model / paper = {total / paper:.3f}")


if __name__ == "__main__":
  app_lib.run(main)
