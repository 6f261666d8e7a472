"""Parameter counts of a config's Q-network, part by part, without allocating it (shapes from
`jax.eval_shape`, so even the 80M-parameter model costs no memory or compile)."""
from __future__ import annotations

from scaled_ql import games as games_lib
from scaled_ql import networks

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


