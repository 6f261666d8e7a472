"""A VALID convolution whose forward and backward passes each take XLA:CPU's fastest form.

XLA:CPU hands every convolution to Eigen, whose speed depends heavily on the convolution's shape.
Measured on this project's 2-core AVX-512 machine at batch 256, as a fraction of the same run's
float32 matmul rate (`python -m benchmarks.learner` prints whole-step figures):

- forward of DQN's first layer (8x8/4 on 4 channels): 0.15. Re-expressed by space-to-depth as
  a 2x2/1 convolution over 64 channels of 21x21 blocks: 0.34, the regrouping included. Layers
  with many input channels are faster as they are (4x4/2 on 32 channels: 0.61 vs 0.51).
- input gradient of a strided layer (an input-dilated convolution): 0.13. Through
  space-to-depth it is the transposed convolution of a 2x2/1 layer: 0.54. For a stride-1 layer
  (3x3 on 64 channels) Eigen's transposed convolution also runs over the zero border (0.42);
  one matmul into per-tap patches, overlap-added, skips it (0.55).
- weight gradient (a contraction over batch x height x width into a small kernel, which Eigen
  runs on one thread): 0.17-0.29. Summed over chunks of about 32 examples, whose operands stay
  in cache, and for strided layers taken in the space-to-depth form: 0.22-0.40.
- bias gradient: XLA:CPU's reduction over batch x height x width is 2x slower than a matmul of
  the same numbers with a vector of ones.

Tried and dropped (slower on the whole update step): patches + one matmul per layer (im2col, in
channels-last, channels-first and batch-minor layouts: building the patch matrix costs more
than Eigen's convolution saves); the "shift" form (one matmul over all kernel taps, then a
shifted sum) for the first layer; patches for the strided input gradient; weight gradients as
grouped convolutions or on pre-transposed operands.

`conv2d` is one `jax.custom_vjp` computing `lax.conv_general_dilated` (VALID, NHWC input, HWIO
kernel) with each of its three passes in its measured-best form. Every form sums the same
products; only the order of floating-point additions differs. `Conv` is a drop-in
`flax.linen.Conv` for such layers: same parameter names, shapes, initialisers and dtype
handling, so checkpoints written with `flax.linen.Conv` load unchanged.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Forward passes take the space-to-depth form below this many input channels.
_FEW_CHANNELS = 16
# Weight gradients are summed over batch chunks of about this many examples.
_WEIGHT_GRAD_CHUNK = 32


def _conv(x, kernel, stride: int):
  return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                  dimension_numbers=_DIMENSIONS)


def space_to_depth(x, block: int):
  """[B, H, W, C] -> [B, H/block, W/block, block*block*C], channels ordered (row, column, c)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def kernel_space_to_depth(kernel, block: int):
  """[k, k, C, O] -> [k/block, k/block, block*block*C, O], matching `space_to_depth`."""
  k, _, c, o = kernel.shape
  n = k // block
  kernel = kernel.reshape(n, block, n, block, c, o).transpose(0, 2, 1, 3, 4, 5)
  return kernel.reshape(n, n, block * block * c, o)


def _blockable(kernel, stride: int) -> bool:
  return stride > 1 and kernel.shape[0] % stride == 0


def _conv_space_to_depth(x, kernel, stride: int):
  """The strided VALID convolution as a stride-1 one over space-to-depth blocks."""
  k = kernel.shape[0]
  oh, ow = ((n - k) // stride + 1 for n in x.shape[1:3])
  # Rows and columns past the last window never reach the output.
  x = x[:, :(oh - 1) * stride + k, :(ow - 1) * stride + k]
  return _conv(space_to_depth(x, stride), kernel_space_to_depth(kernel, stride), 1)


def _input_grad_by_patches(grad, kernel):
  """Input gradient of a stride-1 VALID convolution: one matmul of the output gradient into
  per-tap patches [B, OH, OW, k, k, C], each tap's patch then added at its offset."""
  b, oh, ow, o = grad.shape
  k, _, c, _ = kernel.shape
  patches = (grad.reshape(-1, o) @ kernel.reshape(-1, o).T).reshape(b, oh, ow, k, k, c)
  return sum(jnp.pad(patches[:, :, :, i, j], ((0, 0), (i, k - 1 - i), (j, k - 1 - j), (0, 0)))
             for i in range(k) for j in range(k))


def _forward(x, kernel, stride: int):
  if _blockable(kernel, stride) and kernel.shape[2] < _FEW_CHANNELS:
    return _conv_space_to_depth(x, kernel, stride)
  return _conv(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, kernel, stride: int):
  """VALID 2-D convolution of x [B, H, W, C] with kernel [k, k, C, O]: [B, OH, OW, O].

  Equals `lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", ("NHWC", "HWIO",
  "NHWC"))` up to the order of floating-point additions, in value and in gradients.
  """
  return _forward(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride: int):
  return _forward(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride: int, residuals, grad):
  x, kernel = residuals
  # Both gradients are linear in `grad`: transposes of the convolution in the chosen form.
  # XLA drops the input gradient where nothing uses it (the first layer's).
  form = _conv_space_to_depth if _blockable(kernel, stride) else _conv
  if stride == 1:
    grad_x = _input_grad_by_patches(grad, kernel)
  else:
    (grad_x,) = jax.linear_transpose(lambda v: form(v, kernel, stride), x)(grad)
  batch = x.shape[0]
  chunks = max(1, batch // _WEIGHT_GRAD_CHUNK)
  bounds = [batch * i // chunks for i in range(chunks + 1)]
  grad_kernel = None
  for start, stop in zip(bounds[:-1], bounds[1:]):
    (part,) = jax.linear_transpose(
        lambda w, start=start, stop=stop: form(x[start:stop], w, stride), kernel)(
            grad[start:stop])
    grad_kernel = part if grad_kernel is None else grad_kernel + part
  return grad_x, grad_kernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@jax.custom_vjp
def add_bias(y, bias):
  """y + bias over the last axis, whose bias gradient is a matmul with a vector of ones."""
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, grad):
  rows = grad.reshape(-1, grad.shape[-1])
  return grad, jnp.ones((rows.shape[0],), grad.dtype) @ rows


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
  """`flax.linen.Conv` with VALID padding and a square kernel and stride, computed by `conv2d`.

  The parameters (`kernel` [k, k, C, features] and `bias` [features], float32), their
  initialisers and the dtype handling (inputs and parameters cast to `dtype`) are those of
  `flax.linen.Conv(features, (k, k), (s, s), padding="VALID")`.
  """
  features: int
  kernel_size: int
  strides: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = add_bias(y, bias.astype(self.dtype))
    return y
