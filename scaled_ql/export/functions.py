"""The two functions every open-format export holds, as plain JAX functions of their inputs.

- features(observation uint8 [B, 84, 84, 4]) -> unit-norm features float32 [B, D]: the backbone.
- policy(observation uint8 [B, 84, 84, 4], game_id int32 [B]) -> (q_values float32 [B, 18],
  action int32 [B]): the greedy multi-game policy. game_id indexes the artifact's game list
  (its head order); the 18 action slots index each game's minimal action set; slots past a
  game's action count are illegal and hold the lowest float32, -3.4028235e38 (`ILLEGAL_Q`), so
  the action, the argmax over the row (first maximum on ties), is always legal. Not -inf:
  tf2onnx turns a select into multiplies by 0/1 and adds, where 0 * -inf is NaN. Q is what `evaluation.policy` maximises for
  the loss kind (the mean of the return distribution for C51 / HL-Gauss, the network's scalar
  for MSE, the logit for BC).

The parameters are closed over (constants of the exported program), so each function is a
self-contained program of its inputs only, with the batch size free. The head is applied by a
per-example gather of its game's kernel rather than through `MultiGameHead`, whose choice
between its two paths depends on the concrete batch size: the same multiply-adds, one program
for every batch size.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scaled_ql import games as games_lib
from scaled_ql import losses, networks
from scaled_ql.evaluation import policy as policy_lib

# The Q-value of an illegal action slot in every exported policy (module docstring).
ILLEGAL_Q = float(np.finfo(np.float32).min)


def make_features(info: Mapping[str, Any], backbone: Any) -> Callable:
  """features(observation) of an artifact's description and backbone parameters."""
  module = networks.build_backbone(info["architecture"])
  backbone = jax.tree_util.tree_map(jnp.asarray, backbone)

  def features(observation):
    return module.apply({"params": backbone}, observation)

  return features


def make_policy(info: Mapping[str, Any], backbone: Any, heads: Any) -> Callable:
  """policy(observation, game_id) -> (q_values, action); see the module docstring."""
  features = make_features(info, backbone)
  names = [g["name"] for g in info["games"]]
  legal = jnp.asarray(games_lib.legal_action_mask(names))
  loss_kind, atoms = info["loss_kind"], int(info["num_atoms"])
  support = losses.value_support(loss_kind, info["v_min"], info["v_max"], atoms)
  scale = float(info["feature_scale"]) or float(info["feature_dim"]) ** 0.5  # 0: sqrt(D).
  kernel, bias = jnp.asarray(heads["kernel"]), jnp.asarray(heads["bias"])

  def policy(observation, game_id):
    x = features(observation) * scale
    logits = jnp.einsum("bd,bdk->bk", x, kernel[game_id]) + bias[game_id]
    logits = logits.reshape(-1, games_lib.MAX_ACTIONS, atoms)
    q = jnp.where(legal[game_id], policy_lib.action_values(loss_kind, logits, support),
                  ILLEGAL_Q)
    return q, jnp.argmax(q, axis=-1).astype(jnp.int32)

  return policy
