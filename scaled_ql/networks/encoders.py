"""Convolutional encoders: observation stacks in, feature maps [B, H, W, C] out.

- `ResNet`: ResNet-18/34/50/101 (He et al. 2016) with GroupNorm instead of BatchNorm (no batch
  statistics, so the Q-function of one state never depends on the rest of the batch) and a
  channel-width multiplier. The ImageNet stem (7x7/2 conv, 3x3/2 max-pool) and the four stages
  (strides 1, 2, 2, 2) take an 84x84 input to a 3x3 map.
- `NatureCNN`: the DQN encoder (Mnih et al. 2015): 84x84 -> 7x7x64.
- `ImpalaCNN`: the IMPALA encoder (Espeholt et al. 2018), 3 sections of 16/32/32 channels: 11x11x32.

All take float inputs (the Q-network scales uint8 frames) and compute in `dtype`, with float32
parameters.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from scaled_ql.networks import conv

# depth -> (block kind, blocks per stage).
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
ENCODERS = ("resnet", "nature", "impala")


def _group_norm(channels: int, dtype: Any, name: str | None = None, zero_init: bool = False):
  """GroupNorm with up to 32 groups (Wu & He 2018), fewer when `channels` is not a multiple."""
  groups = math.gcd(32, channels)
  return nn.GroupNorm(
      num_groups=groups, dtype=dtype, name=name,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions; the residual branch's last norm starts at zero (Goyal et al. 2017)."""
  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), (s, s), use_bias=False, dtype=self.dtype,
                                         name=name)
    y = nn.relu(_group_norm(self.channels, self.dtype)(conv(self.channels, 3, self.stride, "conv1")(x)))
    y = _group_norm(self.channels, self.dtype, zero_init=True)(conv(self.channels, 3, 1, "conv2")(y))
    if x.shape[-1] != self.channels or self.stride != 1:
      x = _group_norm(self.channels, self.dtype, name="proj_norm")(
          conv(self.channels, 1, self.stride, "proj_conv")(x))
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, as in ResNet v1.5), 1x1 expand by 4."""
  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = 4 * self.channels
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), (s, s), use_bias=False, dtype=self.dtype,
                                         name=name)
    y = nn.relu(_group_norm(self.channels, self.dtype)(conv(self.channels, 1, 1, "conv1")(x)))
    y = nn.relu(_group_norm(self.channels, self.dtype)(conv(self.channels, 3, self.stride, "conv2")(y)))
    y = _group_norm(out, self.dtype, zero_init=True)(conv(out, 1, 1, "conv3")(y))
    if x.shape[-1] != out or self.stride != 1:
      x = _group_norm(out, self.dtype, name="proj_norm")(conv(out, 1, self.stride, "proj_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-{18,34,50,101} body with GroupNorm; `width` multiplies every channel count."""
  depth: int = 50
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.depth not in RESNET_LAYOUTS:
      raise ValueError(f"model.depth={self.depth} is not a ResNet depth; choose one of "
                       f"{sorted(RESNET_LAYOUTS)}.")
    kind, stages = RESNET_LAYOUTS[self.depth]
    block = BasicBlock if kind == "basic" else BottleneckBlock
    base = max(1, int(round(64 * self.width)))
    x = nn.Conv(base, (7, 7), (2, 2), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(_group_norm(base, self.dtype, name="stem_norm")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for stage, num_blocks in enumerate(stages):
      for i in range(num_blocks):
        stride = 2 if (stage > 0 and i == 0) else 1
        x = block(base * 2**stage, stride, self.dtype, name=f"stage{stage + 1}_block{i + 1}")(x)
    return x


class NatureCNN(nn.Module):
  """DQN's encoder (Mnih et al. 2015): 32x8x8/4, 64x4x4/2, 64x3x3/1, VALID padding, ReLU.

  The layers are `conv.Conv`: `flax.linen.Conv`'s function and parameters, with each pass in
  the form XLA:CPU runs fastest (space-to-depth for the strided layers, chunked weight
  gradients), which makes the CPU update step about 1.5x faster.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, (c, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(conv.Conv(c, k, s, dtype=self.dtype, name=f"conv{i + 1}")(x))
    return x


class ImpalaCNN(nn.Module):
  """IMPALA's deep encoder (Espeholt et al. 2018): per section conv, max-pool/2, 2 residual blocks."""
  channels: Sequence[int] = (16, 32, 32)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for s, c in enumerate(self.channels):
      x = nn.Conv(c, (3, 3), dtype=self.dtype, name=f"section{s + 1}_conv")(x)
      x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
      for b in range(2):
        y = nn.Conv(c, (3, 3), dtype=self.dtype, name=f"section{s + 1}_res{b + 1}_conv1")(nn.relu(x))
        y = nn.Conv(c, (3, 3), dtype=self.dtype, name=f"section{s + 1}_res{b + 1}_conv2")(nn.relu(y))
        x = x + y
    return nn.relu(x)


def make_encoder(name: str, depth: int = 50, width: float = 1.0,
                 dtype: Any = jnp.float32) -> nn.Module:
  """The encoder named by `model.encoder` (and `model.depth`, `model.width` for ResNets)."""
  if name == "resnet":
    if depth not in RESNET_LAYOUTS:
      raise ValueError(f"model.depth={depth!r} is not a ResNet depth; choose one of "
                       f"{sorted(RESNET_LAYOUTS)}.")
    if not width > 0:
      raise ValueError(f"model.width={width!r} must be positive.")
    return ResNet(depth=depth, width=width, dtype=dtype)
  if name == "nature":
    return NatureCNN(dtype=dtype)
  if name == "impala":
    return ImpalaCNN(dtype=dtype)
  raise ValueError(f"model.encoder={name!r} is not an encoder; choose one of {ENCODERS}.")
