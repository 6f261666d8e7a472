"""`networks.conv` computes what `flax.linen.Conv` / `lax.conv_general_dilated` compute.

The re-expressed convolutions (space-to-depth, chunked weight gradients) only reorder float
additions, so values and gradients must agree to float32 rounding, and `NatureCNN` must keep
the parameter names, shapes and initial values it had with `flax.linen.Conv` (checkpoints).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from scaled_ql.networks import conv, encoders


def reference_conv(x, kernel, stride):
  return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def assert_close(actual, expected, rtol=2e-5):
  """Equal up to float32 rounding, relative to the largest entry (sums of many products)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  scale = max(np.max(np.abs(expected)), 1e-30)
  np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=rtol)


class ReferenceNatureCNN(nn.Module):
  """NatureCNN as written with flax.linen.Conv before the re-expression."""

  @nn.compact
  def __call__(self, x):
    for i, (c, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(nn.Conv(c, (k, k), (s, s), padding="VALID", name=f"conv{i + 1}")(x))
    return x


# (batch, height, width, in channels, kernel, stride, out channels): DQN's three layers; sizes
# that leave rows and columns past the last window; a 3-blocked stride; chunked weight gradients
# (batch > 32, uneven chunks); few and many channels on each side of the forward's switch.
CASES = [
    (2, 84, 84, 4, 8, 4, 32),
    (3, 20, 20, 32, 4, 2, 64),
    (2, 9, 9, 64, 3, 1, 64),
    (2, 87, 85, 4, 8, 4, 8),
    (1, 23, 22, 5, 6, 3, 7),
    (70, 12, 12, 3, 4, 2, 5),
    (33, 11, 13, 16, 2, 2, 4),
    (65, 7, 6, 2, 3, 1, 3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_{}x{}x{}_k{}s{}_o{}".format(*c))
def test_conv2d_equals_lax_conv_in_value_and_gradients(case):
  b, h, w, c, k, s, o = case
  rng = np.random.default_rng(sum(case))
  x = jnp.asarray(rng.normal(size=(b, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, o)) / np.sqrt(k * k * c), jnp.float32)
  y, vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, s), x, kernel)
  y_ref, vjp_ref = jax.vjp(lambda x, w: reference_conv(x, w, s), x, kernel)
  assert_close(y, y_ref)
  cotangent = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
  for grad, grad_ref in zip(vjp(cotangent), vjp_ref(cotangent)):
    assert_close(grad, grad_ref)
  # Under jit too, where XLA fuses the regrouping into neighbouring operations.
  jit_grads = jax.jit(lambda x, w, g: jax.vjp(lambda x, w: conv.conv2d(x, w, s), x, w)[1](g))(
      x, kernel, cotangent)
  for grad, grad_ref in zip(jit_grads, vjp_ref(cotangent)):
    assert_close(grad, grad_ref)


def test_space_to_depth_regroups_blocks_into_channels():
  x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  y = conv.space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # Channel (row r, column q, channel c) of block (i, j) is pixel (2i + r, 2j + q), channel c.
  np.testing.assert_array_equal(y[1, 1, 2].reshape(2, 2, 3), x[1, 2:4, 4:6])


def test_conv_module_matches_flax_conv_parameters_and_outputs():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 20, 20, 6)), jnp.float32)
  ours, theirs = conv.Conv(16, 4, 2), nn.Conv(16, (4, 4), (2, 2), padding="VALID")
  params = ours.init(jax.random.PRNGKey(3), x)
  ref_params = theirs.init(jax.random.PRNGKey(3), x)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref_params)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  assert_close(ours.apply(params, x), theirs.apply(params, x))
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(3, 9, 9, 16)), jnp.float32)
  grads = jax.grad(lambda p: jnp.sum(ours.apply(p, x) * cotangent))(params)
  ref_grads = jax.grad(lambda p: jnp.sum(theirs.apply(p, x) * cotangent))(params)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    assert_close(a, b)
  half = conv.Conv(16, 4, 2, dtype=jnp.bfloat16).apply(params, x)
  ref_half = nn.Conv(16, (4, 4), (2, 2), padding="VALID", dtype=jnp.bfloat16).apply(params, x)
  assert half.dtype == ref_half.dtype == jnp.bfloat16
  assert_close(half, ref_half, rtol=2e-2)


def test_nature_cnn_keeps_flax_conv_parameters_function_and_gradients():
  """Checkpoints of the flax.linen.Conv NatureCNN load and compute the same function."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(0, 256, (5, 84, 84, 4)), jnp.float32) / 255.0
  ours, reference = encoders.NatureCNN(), ReferenceNatureCNN()
  params = ours.init(jax.random.PRNGKey(7), x)
  ref_params = reference.init(jax.random.PRNGKey(7), x)
  shapes = jax.tree_util.tree_map(jnp.shape, params)
  assert shapes == jax.tree_util.tree_map(jnp.shape, ref_params)
  assert shapes["params"]["conv1"] == {"kernel": (8, 8, 4, 32), "bias": (32,)}
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  # Non-zero biases, so that every ReLU's gradient mask is exercised.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.01 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  target = jnp.asarray(rng.normal(size=(5, 7, 7, 64)), jnp.float32)
  loss = lambda module: jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(module.apply(p, x) * target)))(params)
  (value, grads), (ref_value, ref_grads) = loss(ours), loss(reference)
  assert_close(ours.apply(params, x), reference.apply(params, x))
  assert_close(value, ref_value)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    assert_close(a, b)
