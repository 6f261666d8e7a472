"""Model FLOPs of an update step, from the network's layer shapes, and the matmul peak that MFU
is taken against (measured in the same process, so machine load and clocks divide out).

Model FLOPs = 2 x the multiply-adds of every matmul and convolution the architecture defines
(what the paper's model computes, not what XLA executes: padding taps on SAME borders are not
counted, nor folded or fused forms). One C51 + CQL update = the online forward F, its backward
2F less the first layer's input gradient (nothing needs it), and the target network's forward F.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # JAX 0.4.3x+: jax.extend.core; older: jax.core.
  from jax.extend.core import ClosedJaxpr, Jaxpr  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover
  from jax.core import ClosedJaxpr, Jaxpr  # pylint: disable=g-import-not-at-top


def conv_flops(eqn) -> float:
  """2 x the multiply-adds of a (forward) convolution, counting only the kernel taps that fall
  inside the input, not on SAME padding (as XLA's cost analysis counts)."""
  p = eqn.params
  lhs, kernel, out = (v.aval.shape for v in (*eqn.invars[:2], eqn.outvars[0]))
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  taps = 1
  for i, (stride, (low, _), dilation) in enumerate(
      zip(p["window_strides"], p["padding"], p["rhs_dilation"])):
    size, k, n = lhs[lhs_spec[2 + i]], kernel[rhs_spec[2 + i]], out[out_spec[2 + i]]
    offsets = np.arange(n)[:, None] * stride + np.arange(k)[None, :] * dilation - low
    taps *= int(np.sum((offsets >= 0) & (offsets < size)))
  batch_and_features = out[out_spec[0]] * out[out_spec[1]]
  return 2.0 * batch_and_features * taps * kernel[rhs_spec[1]]


def jaxpr_flops(jaxpr) -> list[float]:
  """FLOPs (2 x multiply-adds) of every dot_general and convolution, in program order,
  nested jaxprs (jit, custom_vjp, ...) included."""
  flops = []
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      depth = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      flops.append(2.0 * np.prod(eqn.outvars[0].aval.shape) * depth)
    elif name == "conv_general_dilated":
      flops.append(conv_flops(eqn))
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, ClosedJaxpr):
          flops += jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, Jaxpr):
          flops += jaxpr_flops(sub)
  return flops


def update_flops(model, params, observation, game_id, block_size: int) -> float:
  """Model FLOPs of one C51 + CQL update (module docstring): 4 forwards less the first
  layer's input gradient."""
  jaxpr = jax.make_jaxpr(lambda p, x, g: model.apply({"params": p}, x, g, block_size))(
      params, observation, game_id)
  forward = jaxpr_flops(jaxpr.jaxpr)
  return 4 * sum(forward) - forward[0]


def forward_flops(model, params, observation, game_id, block_size: int) -> float:
  """Model FLOPs of one forward pass."""
  jaxpr = jax.make_jaxpr(lambda p, x, g: model.apply({"params": p}, x, g, block_size))(
      params, observation, game_id)
  return float(sum(jaxpr_flops(jaxpr.jaxpr)))


_matmuls: dict[Any, Any] = {}


def matmul_seconds(size: int, dtype=jnp.float32, repeats: int = 1) -> float:
  """Best of 3 timings of `repeats` chained size x size matmuls in `dtype` (one jitted call;
  a chain keeps launch overhead out of an accelerator's figure). The rate is
  2 * size^3 * repeats / this."""
  key = (size, jnp.dtype(dtype).name, repeats)
  if key not in _matmuls:
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.random((size, size), np.float32) / size, dtype)

    def chain(x, y):
      for _ in range(repeats):
        x = jnp.matmul(x, y)
      return x

    _matmuls[key] = (jax.jit(chain), a)
  f, a = _matmuls[key]
  jax.block_until_ready(f(a, a))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_rate(size: int, dtype=jnp.float32, repeats: int = 1) -> float:
  """FLOP/s of `matmul_seconds`."""
  return 2.0 * size**3 * repeats / matmul_seconds(size, dtype, repeats)
