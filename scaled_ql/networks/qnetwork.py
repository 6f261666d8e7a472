"""The multi-game Q-network of Scaled Q-Learning (Kumar et al. 2023, Fig. 3).

observation [B, 84, 84, 4] uint8 -> encoder feature map [B, H, W, C]
  -> learned spatial embedding: a (H, W, C, F) kernel multiplied with the map and summed over H
     and W, giving C*F features (instead of global pooling, which discards where things are),
     kept channel-major [C, B, F]
  -> dense projection of the C*F features to D, ReLU (the "penultimate layer" of a DQN)
  -> feature normalization: divided by its L2 norm (unit-norm shared features)
  -> times sqrt(D) into the heads (`MultiGameQNetwork.feature_scale`, below)
  -> multi-game head: one linear layer per game, kept as ONE parameter [G, D, 18 * atoms] so that a
     batch blocked by game is a single batched matmul. Logits come out as [B, 18, atoms] float32.

Why the heads see sqrt(D) x the unit-norm features. [SQL] (Kumar et al. 2023, sec. 4 and
Fig. 3) normalizes the shared features and puts a linear layer per game on top; it states no
scale, head initialisation or temperature. Unit-norm features have per-coordinate second
moment 1/D where the head's fan-in initialisation assumes ~1, and, more importantly, a logit
sum_d W_d f_d then moves by at most lr * |f|_1 <= lr * sqrt(D) per Adam step (each weight moves
~lr). A 51-atom softmax must open logit gaps of several units to put most of its mass on the
target atoms: at lr 2e-4 on a controlled task (tests/test_learning.py) C51 + CQL had not
learned after 3,000 updates where an MSE head on the same features needed 70. Multiplying the
normalized features by a fixed sqrt(D) keeps the features' direction normalized (what the
normalization is for: no growth of the feature norm, [SQL] after DR3, Kumar et al. 2022) and
gives them unit RMS per coordinate, the scale the initialisation assumes; it is the fixed
"scale layer" after L2 normalization of NormFace (Wang et al. 2017, sec. 3.3), whose analysis
is the same: softmax on unit-norm features cannot reach confident outputs without one.
Equivalently: the head's kernel initialised sqrt(D) x larger and trained at a sqrt(D) x
larger step. With it C51 + CQL learns that task in 950 updates; `feature_scale=1` restores
the unscaled form.

The 18 action slots are indices into each game's minimal action set (see `scaled_ql.games`);
slots past a game's action count are illegal and the losses and policies mask them. The network
itself never masks: masking is where argmax / max / logsumexp / softmax is taken.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaled_ql.frames import OBSERVATION_SHAPE, STACK_SIZE
from scaled_ql.games import MAX_ACTIONS
from scaled_ql.networks.encoders import make_encoder


class QNetworkOutput(NamedTuple):
  logits: jax.Array  # [B, MAX_ACTIONS, num_atoms] float32.
  features: jax.Array  # [B, feature_dim] float32, unit L2 norm.


def check_observation(observation, name: str = "observation") -> None:
  """Raises a ValueError naming the field unless `observation` is uint8 [B, 84, 84, 4]."""
  if observation.dtype != jnp.uint8:
    raise ValueError(f"{name} must be uint8 frames (0..255), got dtype {observation.dtype}.")
  if observation.ndim != 4 or tuple(observation.shape[1:]) != OBSERVATION_SHAPE:
    raise ValueError(f"{name} must have shape [batch, {', '.join(map(str, OBSERVATION_SHAPE))}] "
                     f"(84x84 frames, {STACK_SIZE} stacked), got {tuple(observation.shape)}.")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class SpatialEmbedding(nn.Module):
  """Learned spatial embedding: [B, H, W, C] -> [C, B, num_features], channel-major.

  Per channel, the [B, H*W] map times that channel's [H*W, F] kernel: one matmul batched over
  channels, whose natural output is channel-major. `Projection` takes it as it is; the
  batch-major [B, C*F] would cost a transpose of the whole embedding each way (about 3% of a
  Nature-CNN update step on CPU).
  """
  num_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, w, c = x.shape[-3:]
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=(0, 1), out_axis=3, batch_axis=2)
    kernel = self.param("kernel", init, (h, w, c, self.num_features), jnp.float32)
    return jnp.einsum("bhwc,hwcf->cbf", x.astype(self.dtype), kernel.astype(self.dtype))


class Projection(nn.Module):
  """`nn.Dense(features)` of the flattened (channel, feature) embedding, from `SpatialEmbedding`'s
  channel-major [C, B, F]: per channel [B, F] x [F, D], summed over channels (the same
  multiply-adds). Parameters as nn.Dense over [B, C*F]: kernel [C*F, D], bias [D]."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, _, f = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (c * f, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    per_channel = jax.lax.dot_general(
        x.astype(self.dtype), kernel.astype(self.dtype).reshape(c, f, self.features),
        (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    return (per_channel.sum(0) + bias).astype(self.dtype)


class MultiGameHead(nn.Module):
  """Per-game linear heads stored as one [G, D, A * K] kernel and one [G, A * K] bias.

  `block_size` says how the batch is laid out: consecutive blocks of `block_size` examples share
  one game, so each block is one matmul with its game's kernel. The pre-training sampler blocks
  batches by game; with block_size=1 any mix of games works (each example through its own
  game's head), which also serves per-game counts that differ by one (batch 512 over 40 games)
  and the evaluation policy's batches of mixed games.
  """
  num_games: int
  num_atoms: int
  num_actions: int = MAX_ACTIONS

  @nn.compact
  def __call__(self, features, game_id, block_size: int = 1):
    batch, dim = features.shape
    out = self.num_actions * self.num_atoms
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=1, out_axis=2, batch_axis=0)
    kernel = self.param("kernel", init, (self.num_games, dim, out), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_games, out), jnp.float32)
    if batch % block_size:
      raise ValueError(f"batch size {batch} is not a multiple of the game block size {block_size}.")
    blocks = game_id.reshape(batch // block_size, block_size)
    if _is_concrete(blocks):
      if not bool(jnp.all(blocks == blocks[:, :1])):
        raise ValueError(f"game_id is not constant within blocks of {block_size} examples.")
      if bool(jnp.any((game_id < 0) | (game_id >= self.num_games))):
        raise ValueError(f"game_id must lie in [0, {self.num_games}) (the head has "
                         f"{self.num_games} games), got values {jnp.unique(game_id).tolist()}.")
    if block_size == 1 and self.num_games <= batch:
      # Any mix of games, at most as many heads as examples: the features spread one-hot over
      # the heads, times all kernels as one plain matmul [B, G * D] x [G * D, A * K]. The
      # multiply-adds of applying every head to every example (about 2% of a ResNet-34's
      # forward pass with 40 games), but as one matmul (~2.4x faster on CPU than a batched
      # einsum and a pick), and no per-example copy of the kernel.
      one_hot = jax.nn.one_hot(game_id, self.num_games, dtype=features.dtype)
      spread = features[:, None, :] * one_hot[:, :, None]
      y = spread.reshape(batch, self.num_games * dim) @ kernel.reshape(self.num_games * dim, out)
      y = y + bias[game_id]
    elif block_size == 1:
      # More heads than examples (40 games, a small evaluation batch): each example's own
      # kernel, gathered (B x D x A K multiply-adds).
      y = jnp.einsum("bd,bdk->bk", features, kernel[game_id]) + bias[game_id]
    else:
      block_game = blocks[:, 0]
      x = features.reshape(batch // block_size, block_size, dim)
      y = jnp.einsum("nbd,ndk->nbk", x, kernel[block_game]) + bias[block_game][:, None, :]
    return y.reshape(batch, self.num_actions, self.num_atoms)


class Backbone(nn.Module):
  """The shared part of the Q-network: encoder + spatial embedding + projection + feature norm.

  uint8 [B, 84, 84, 4] -> unit-norm float32 features [B, feature_dim]. Its parameters are the
  Q-network's parameters without `head` (same names), which is what `launch.export` writes and
  `scaled_ql.load_backbone` returns.
  """
  encoder: str = "resnet"
  depth: int = 50
  width: float = 1.0
  spatial_features: int = 96
  feature_dim: int = 128
  dtype: Any = jnp.float32  # Compute dtype of the backbone; parameters stay float32.

  def setup(self):
    self.torso = make_encoder(self.encoder, self.depth, self.width, self.dtype)
    self.spatial_embedding = SpatialEmbedding(self.spatial_features, self.dtype)
    self.projection = Projection(self.feature_dim, dtype=self.dtype)

  def features(self, observation):
    """uint8 [B, 84, 84, 4] -> unit-norm float32 features [B, D]."""
    check_observation(observation)
    x = observation.astype(self.dtype) / 255.0
    x = self.spatial_embedding(self.torso(x))
    x = nn.relu(self.projection(x)).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, 1e-6)

  def __call__(self, observation):
    return self.features(observation)


class MultiGameQNetwork(Backbone):
  """The `Backbone` and per-game C51 heads (parameter `head`), which see the unit-norm
  features times `head_scale()`."""
  num_games: int = 1
  num_atoms: int = 51
  # The features' scale into the heads: None = sqrt(feature_dim) (see the module docstring);
  # 1.0 = the plain unit-norm features. The backbone's own output stays unit-norm.
  feature_scale: float | None = None

  def setup(self):
    super().setup()
    self.head = MultiGameHead(self.num_games, self.num_atoms)

  def head_scale(self) -> float:
    """The factor on the unit-norm features going into the heads."""
    return self.feature_scale if self.feature_scale is not None else self.feature_dim ** 0.5

  def __call__(self, observation, game_id, block_size: int = 1) -> QNetworkOutput:
    if game_id.shape != observation.shape[:1]:
      raise ValueError(f"game_id must have shape [batch]={observation.shape[:1]}, "
                       f"got {tuple(game_id.shape)}.")
    features = self.features(observation)
    logits = self.head(features * self.head_scale(), game_id, block_size)
    return QNetworkOutput(logits, features)
