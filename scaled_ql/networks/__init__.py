"""Networks: encoders, learned spatial embeddings, feature normalization and multi-game heads."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scaled_ql.networks.encoders import ENCODERS, RESNET_LAYOUTS, ImpalaCNN, NatureCNN, ResNet
from scaled_ql.networks.qnetwork import (OBSERVATION_SHAPE, Backbone, MultiGameHead,
                                         MultiGameQNetwork, Projection, QNetworkOutput,
                                         SpatialEmbedding, check_observation)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


BACKBONE_FIELDS = ("encoder", "depth", "width", "spatial_features", "feature_dim")
HEAD = "head"  # The Q-network's parameter subtree that is per game; the rest is the backbone.


def _backbone_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Checked keyword arguments of `Backbone` from a `config.model` block (fields named)."""
  cfg = dict(model_config)
  encoder = cfg.get("encoder")
  if encoder not in ENCODERS:
    raise ValueError(f"model.encoder={encoder!r} is not an encoder; choose one of {ENCODERS}.")
  depth = cfg.get("depth", 50)
  if encoder == "resnet" and depth not in RESNET_LAYOUTS:
    raise ValueError(f"model.depth={depth!r} is not a ResNet depth; choose one of "
                     f"{sorted(RESNET_LAYOUTS)}.")
  for field in ("spatial_features", "feature_dim"):
    _check_positive(cfg, field)
  width = cfg.get("width", 1.0)
  if not isinstance(width, (int, float)) or width <= 0:
    raise ValueError(f"model.width must be positive, got {width!r}.")
  dtype = cfg.get("dtype", "float32")
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r} is not supported; choose one of {tuple(DTYPES)}.")
  return dict(encoder=encoder, depth=int(depth), width=float(width),
              spatial_features=int(cfg["spatial_features"]), feature_dim=int(cfg["feature_dim"]),
              dtype=DTYPES[dtype])


def _check_positive(cfg: Mapping[str, Any], field: str) -> None:
  value = cfg.get(field)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"model.{field} must be a positive integer, got {value!r}.")


def build_backbone(model_config: Mapping[str, Any]) -> Backbone:
  """The shared backbone of a `config.model` block (no heads); fields checked as below."""
  return Backbone(**_backbone_kwargs(model_config))


def build_q_network(model_config: Mapping[str, Any], num_games: int) -> MultiGameQNetwork:
  """The Q-network described by a `config.model` block, for `num_games` heads.

  Every field is checked here, so a bad config fails with the field's name before any work.
  """
  kwargs = _backbone_kwargs(model_config)
  _check_positive(model_config, "num_atoms")
  if not isinstance(num_games, (int, np.integer)) or num_games < 1:
    raise ValueError(f"the number of games must be a positive integer, got {num_games!r}.")
  scale = model_config.get("feature_scale", 0.0)
  if not isinstance(scale, (int, float)) or scale < 0:
    raise ValueError(f"model.feature_scale must be >= 0 (0 = sqrt(feature_dim)), got {scale!r}.")
  return MultiGameQNetwork(num_games=int(num_games), num_atoms=int(model_config["num_atoms"]),
                           feature_scale=float(scale) or None, **kwargs)


def split_params(params) -> tuple[dict, Any]:
  """(backbone parameters, head parameters) of a Q-network's parameter tree."""
  params = dict(params)
  if HEAD not in params:
    raise ValueError(f"the parameter tree has no {HEAD!r} subtree (keys {sorted(params)}).")
  head = params.pop(HEAD)
  return params, head


def dummy_inputs(batch_size: int = 1):
  """An all-zero observation batch and game ids, for `init` and `eval_shape`."""
  return (jnp.zeros((batch_size, *OBSERVATION_SHAPE), jnp.uint8),
          jnp.zeros((batch_size,), jnp.int32))


def init_params(model: MultiGameQNetwork, rng: jax.Array):
  """Initial parameters of `model` (a pytree of float32 arrays)."""
  return model.init(rng, *dummy_inputs())["params"]


def param_shapes(model: MultiGameQNetwork):
  """The parameter tree as ShapeDtypeStructs, computed without allocating (jax.eval_shape)."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def check_param_shapes(expected, actual, source: str = "parameters") -> None:
  """Raises a ValueError naming the first parameter whose shape differs (or is missing).

  The head's kernel gets its own message: a head trained on a different game list is the
  common case (a checkpoint from another game set, or a config whose game count disagrees).
  """
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_actual = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
  name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
  for path in sorted(set(flat_expected) | set(flat_actual), key=name):
    if path not in flat_actual:
      raise ValueError(f"{source}: parameter {name(path)} is missing.")
    if path not in flat_expected:
      raise ValueError(f"{source}: unexpected parameter {name(path)} (another architecture?).")
    want, got = tuple(flat_expected[path].shape), tuple(flat_actual[path].shape)
    if want == got:
      continue
    if name(path).startswith("head/") and want[1:] == got[1:]:
      raise ValueError(f"{source}: the head has {got[0]} games but the config lists {want[0]} "
                       f"games ({name(path)} {got} vs expected {want}).")
    raise ValueError(f"{source}: parameter {name(path)} has shape {got}, expected {want} "
                     f"(another architecture?).")


__all__ = [
    "BACKBONE_FIELDS", "DTYPES", "ENCODERS", "HEAD", "OBSERVATION_SHAPE", "RESNET_LAYOUTS",
    "Backbone", "ImpalaCNN", "MultiGameHead", "MultiGameQNetwork", "NatureCNN", "Projection",
    "QNetworkOutput", "ResNet", "SpatialEmbedding", "build_backbone", "build_q_network",
    "check_observation", "check_param_shapes", "count_params", "dummy_inputs", "init_params",
    "param_shapes", "split_params",
]
