r"""Prints the parameter count of each part of a config's Q-network, without allocating it.

  python -m launch.model_summary --config=configs/pretrain.py:paper_resnet101

Shapes come from `jax.eval_shape`, so even the 80M-parameter model costs no memory or compile.
"""
from absl import app
from ml_collections import config_flags

from launch import common
from scaled_ql import games as games_lib
from scaled_ql import networks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.",
                                          lock_config=True)

# Parameter counts stated by Kumar et al. 2023 for the 40-game models.
PAPER_PARAMS = {34: 31e6, 50: 60e6, 101: 79e6}


def summarize(config) -> list[tuple[str, int]]:
  """(part, parameter count) rows: encoder stages, spatial embedding, projection, head, total."""
  game_list = games_lib.get_games(config.games)
  model = networks.build_q_network(config.model, len(game_list))
  shapes = networks.param_shapes(model)
  rows = []
  torso = shapes["torso"]
  groups: dict[str, int] = {}
  for name, sub in torso.items():
    group = name.split("_")[0] if name.startswith("stage") else name
    group = "stem" if name.startswith("stem") else group
    groups[group] = groups.get(group, 0) + networks.count_params(sub)
  order = lambda g: (g != "stem", g)  # stem first, then stages / convs in order.
  rows += [(f"encoder/{g}", groups[g]) for g in sorted(groups, key=order)]
  rows.append(("encoder (total)", networks.count_params(torso)))
  for part in ("spatial_embedding", "projection", "head"):
    rows.append((part, networks.count_params(shapes[part])))
  rows.append(("total", networks.count_params(shapes)))
  return rows


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/pretrain.py:PRESET is required.")
  rows = summarize(config)
  m = config.model
  arch = (f"ResNet-{m.depth} x{m.width:g}" if m.encoder == "resnet" else m.encoder) + (
      f", F={m.spatial_features}, D={m.feature_dim}, {m.num_atoms} atoms, "
      f"{len(config.games)} games x 18 action slots")
  print(f"Q-network: {arch}")
  width = max(len(r[0]) for r in rows)
  for name, count in rows:
    print(f"  {name:<{width}}  {count:>13,d}  ({count / 1e6:7.2f}M)")
  total = rows[-1][1]
  paper = PAPER_PARAMS.get(m.depth) if m.encoder == "resnet" and len(config.games) == 40 else None
  if paper:
    print(f"  paper (Kumar et al. 2023, ResNet-{m.depth}, 40 games): ~{paper / 1e6:.0f}M; "
          f"this model / paper = {total / paper:.3f}")


if __name__ == "__main__":
  common.run(main)
