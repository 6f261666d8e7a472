"""features.stablehlo, policy.stablehlo: the two functions as `jax.export` serialized StableHLO.

For JAX users who do not want this library (nor Flax): `jax.export.deserialize(bytes)` gives
an `Exported` whose `.call(...)` runs the function, parameters included, on any batch size (the
batch dimension is symbolic, "b"). Lowered for CPU, CUDA and TPU where this JAX can (CPU
alone otherwise; the platforms are recorded). Compatibility is time-limited: JAX promises to
run a serialized function for at least 6 months after it was written, and a JAX at most 6
months older than the one that wrote it can read it (the jax.export backward/forward
compatibility window); re-export from the Orbax parameters or model.safetensors after that.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax import export as jax_export  # `jax.export` alone needs JAX >= 0.4.36.

from scaled_ql.export import functions

FEATURES_FILE = "features.stablehlo"
POLICY_FILE = "policy.stablehlo"
PLATFORMS = ("cpu", "cuda", "tpu")


def _inputs(with_game: bool):
  batch, = jax_export.symbolic_shape("b")
  observation = jax.ShapeDtypeStruct((batch, 84, 84, 4), jnp.uint8)
  return (observation, jax.ShapeDtypeStruct((batch,), jnp.int32)) if with_game else (
      observation,)


def _export(fn: Callable, args) -> tuple[bytes, tuple[str, ...]]:
  """Serialized `fn` lowered for every platform of PLATFORMS this JAX lowers to, else CPU."""
  try:
    exported = jax_export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
  except Exception:  # pylint: disable=broad-except  (a platform this jaxlib cannot lower for)
    exported = jax_export.export(jax.jit(fn), platforms=("cpu",))(*args)
  return bytes(exported.serialize()), tuple(exported.platforms)


def write(out_dir: str, info: Mapping[str, Any], tree: Mapping[str, Any]) -> dict:
  """Writes features.stablehlo (and policy.stablehlo with heads) into out_dir; returns what the
  description records: {file: {platforms, inputs, outputs}} and the JAX version."""
  written = {}
  data, platforms = _export(functions.make_features(info, tree["backbone"]), _inputs(False))
  with open(os.path.join(out_dir, FEATURES_FILE), "wb") as f:
    f.write(data)
  written[FEATURES_FILE] = dict(platforms=list(platforms), inputs=["observation"],
                                outputs=["features"])
  if "heads" in tree:
    policy = functions.make_policy(info, tree["backbone"], tree["heads"])
    data, platforms = _export(policy, _inputs(True))
    with open(os.path.join(out_dir, POLICY_FILE), "wb") as f:
      f.write(data)
    written[POLICY_FILE] = dict(platforms=list(platforms), inputs=["observation", "game_id"],
                                outputs=["q_values", "action"])
  return dict(files=written, jax=jax.__version__)
