"""Network shapes, dtypes, feature norm, per-game heads, gradients and bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from scaled_ql import games, losses, networks

SMALL_MODELS = {
    "nature": dict(encoder="nature"),
    "impala": dict(encoder="impala"),
    "resnet18_narrow": dict(encoder="resnet", depth=18, width=0.25),
    "resnet50_narrow": dict(encoder="resnet", depth=50, width=0.125),
}


def small_model(name, num_games=3, num_atoms=11, dtype="float32"):
  cfg = dict(SMALL_MODELS[name], spatial_features=4, feature_dim=16, num_atoms=num_atoms,
             dtype=dtype)
  return networks.build_q_network(cfg, num_games)


def observations(batch, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, size=(batch, 84, 84, 4), dtype=np.uint8))


@pytest.mark.parametrize("preset", ["tiny", "paper_resnet34", "paper_resnet50", "paper_resnet101"])
def test_preset_output_shapes_and_dtypes(preset):
  """Every preset's forward pass, shape-checked without allocating (eval_shape)."""
  config = load_config("configs/pretrain.py", preset)
  model = networks.build_q_network(config.model, len(config.games))
  params = networks.param_shapes(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  assert params["head"]["kernel"].shape == (len(config.games), config.model.feature_dim,
                                            18 * config.model.num_atoms)
  obs = jax.ShapeDtypeStruct((8, 84, 84, 4), jnp.uint8)
  gid = jax.ShapeDtypeStruct((8,), jnp.int32)
  out = jax.eval_shape(lambda p, o, g: model.apply({"params": p}, o, g), params, obs, gid)
  assert out.logits.shape == (8, 18, config.model.num_atoms)
  assert out.logits.dtype == jnp.float32
  assert out.features.shape == (8, config.model.feature_dim)


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_forward_unit_norm_features_and_finite_gradients(name):
  model = small_model(name)
  # Jitted, forward and gradients in one program: not one program per op (a ResNet-50 has
  # hundreds), nor a second compile of the forward pass.
  params = jax.jit(lambda key: networks.init_params(model, key))(jax.random.PRNGKey(0))
  obs, gid = observations(6), jnp.array([0, 0, 1, 1, 2, 2])
  legal = jnp.asarray(games.legal_action_mask(["pong", "breakout", "freeway"]))[gid]
  support = losses.make_support(-10, 10, 11)
  target = jnp.asarray(np.random.default_rng(1).normal(size=(6, 18, 11)), jnp.float32)

  def loss_fn(p):
    out = model.apply({"params": p}, obs, gid, block_size=2)
    return losses.scaled_ql_loss("c51", out.logits, target, jnp.zeros(6, jnp.int32), jnp.ones(6),
                                 jnp.full(6, 0.97), legal, support, cql_alpha=0.1).loss, out

  grads, out = jax.jit(jax.grad(loss_fn, has_aux=True))(params)
  assert out.logits.shape == (6, 18, 11) and out.logits.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(out.features, axis=-1), 1.0, rtol=1e-5)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  # Every part of the backbone learns from the loss (no part is accidentally detached).
  for part in ("torso", "spatial_embedding", "projection", "head"):
    assert networks.count_params(grads[part]) > 0
    assert float(sum(jnp.abs(g).sum() for g in jax.tree_util.tree_leaves(grads[part]))) > 0


def test_each_example_uses_its_own_games_head_and_blocking_is_exact():
  model = small_model("nature", num_games=4)
  params = networks.init_params(model, jax.random.PRNGKey(1))
  # Give each game's head distinct values.
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["head"]["bias"] = jax.random.normal(jax.random.PRNGKey(2), params["head"]["bias"].shape)
  obs = observations(8, seed=3)
  gid = jnp.array([3, 3, 0, 0, 2, 2, 1, 1])
  blocked = model.apply({"params": params}, obs, gid, block_size=2)
  single = model.apply({"params": params}, obs, gid, block_size=1)
  np.testing.assert_allclose(blocked.logits, single.logits, rtol=1e-5, atol=1e-6)
  kernel, bias = params["head"]["kernel"], params["head"]["bias"]
  # The heads see the unit-norm features times sqrt(D) (D = 16 here).
  manual = jnp.einsum("bd,bdk->bk", 4.0 * single.features, kernel[gid]) + bias[gid]
  np.testing.assert_allclose(single.logits.reshape(8, -1), manual, rtol=1e-5, atol=1e-5)


def test_heads_see_the_unit_norm_features_times_sqrt_d():
  """Initial logits of unit-ish scale (the fan-in init's assumption), whatever D; the
  unscaled form (feature_scale=1) gives logits sqrt(D) x smaller."""
  obs, gid = observations(16, seed=7), jnp.zeros(16, jnp.int32)
  stds = []
  for dim in (16, 256):
    cfg = dict(SMALL_MODELS["nature"], spatial_features=4, feature_dim=dim, num_atoms=11)
    model = networks.build_q_network(cfg, 1)
    assert model.head_scale() == pytest.approx(dim ** 0.5)
    params = networks.init_params(model, jax.random.PRNGKey(0))
    out = model.apply({"params": params}, obs, gid)
    np.testing.assert_allclose(jnp.linalg.norm(out.features, axis=-1), 1.0, rtol=1e-5)
    unscaled = model.clone(feature_scale=1.0).apply({"params": params}, obs, gid)
    np.testing.assert_allclose(out.logits, unscaled.logits * dim ** 0.5, rtol=1e-4, atol=1e-5)
    stds.append(float(jnp.std(out.logits)))
  assert all(0.5 < s < 1.5 for s in stds), stds


def test_examples_are_independent_of_the_rest_of_the_batch():
  """GroupNorm, not BatchNorm: Q(s) must not depend on which other states share the batch."""
  model = small_model("resnet18_narrow")
  params = networks.init_params(model, jax.random.PRNGKey(0))
  obs = observations(4, seed=5)
  gid = jnp.array([0, 1, 2, 0])
  full = model.apply({"params": params}, obs, gid).logits
  alone = model.apply({"params": params}, obs[2:3], gid[2:3]).logits
  np.testing.assert_allclose(full[2:3], alone, rtol=1e-5, atol=1e-5)


def test_spatial_embedding_is_a_learned_kernel_summed_over_height_and_width():
  module = networks.SpatialEmbedding(num_features=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 6))
  params = module.init(jax.random.PRNGKey(1), x)
  kernel = np.asarray(params["params"]["kernel"])
  assert kernel.shape == (5, 4, 6, 3)
  got = np.asarray(module.apply(params, x))
  want = np.einsum("bhwc,hwcf->cbf", np.asarray(x, np.float64), kernel)
  assert got.shape == (6, 2, 3)  # Channel-major.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_projection_is_nn_dense_over_the_flattened_channel_feature_embedding():
  """Same parameters (names, shapes, initial values) and function as nn.Dense applied to the
  batch-major [B, C*F] embedding, so checkpoints from before the channel-major layout load."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 3))  # [C, B, F]
  flat = jnp.transpose(x, (1, 0, 2)).reshape(5, 18)
  ours, dense = networks.Projection(features=7), nn.Dense(7)
  params = ours.init(jax.random.PRNGKey(1), x)
  reference = dense.init(jax.random.PRNGKey(1), flat)
  jax.tree.map(np.testing.assert_array_equal, params, reference)
  params = jax.tree.map(lambda p: p + 0.1, params)  # A nonzero bias too.
  np.testing.assert_allclose(ours.apply(params, x), dense.apply(params, flat), rtol=1e-5,
                             atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs_close():
  f32, bf16 = small_model("resnet18_narrow"), small_model("resnet18_narrow", dtype="bfloat16")
  params = networks.init_params(f32, jax.random.PRNGKey(0))
  networks.check_param_shapes(networks.param_shapes(bf16), params)
  obs, gid = observations(2), jnp.array([0, 1])
  a = f32.apply({"params": params}, obs, gid)
  b = bf16.apply({"params": params}, obs, gid)
  assert b.logits.dtype == jnp.float32 and b.features.dtype == jnp.float32
  assert not np.array_equal(np.asarray(a.features), np.asarray(b.features))  # really bf16.
  np.testing.assert_allclose(a.features, b.features, atol=3e-2)
  # The backbone's activations are bfloat16 inside.
  jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply({"params": p}, obs, gid))(params))
  assert "bf16[2,21,21,16]" in jaxpr


def test_bad_model_configs_name_the_field():
  base = dict(encoder="resnet", depth=34, spatial_features=4, feature_dim=8, num_atoms=51)
  with pytest.raises(ValueError, match="model.encoder='vit'"):
    networks.build_q_network(dict(base, encoder="vit"), 3)
  with pytest.raises(ValueError, match="model.depth=42"):
    networks.build_q_network(dict(base, depth=42), 3)
  with pytest.raises(ValueError, match="model.feature_dim"):
    networks.build_q_network(dict(base, feature_dim=0), 3)
  with pytest.raises(ValueError, match="model.dtype"):
    networks.build_q_network(dict(base, dtype="float16"), 3)
  with pytest.raises(ValueError, match="unknown preset 'paper_resnet152'"):
    load_config("configs/pretrain.py", "paper_resnet152")


def test_head_game_count_mismatch_is_reported():
  trained = networks.param_shapes(small_model("nature", num_games=3))
  wanted = networks.param_shapes(small_model("nature", num_games=5))
  with pytest.raises(ValueError, match="head has 3 games but the config lists 5 games"):
    networks.check_param_shapes(wanted, trained, source="checkpoint")
  other = networks.param_shapes(small_model("impala", num_games=3))
  with pytest.raises(ValueError, match="checkpoint: .*another architecture"):
    networks.check_param_shapes(other, trained, source="checkpoint")


def test_bad_observations_and_game_ids_are_rejected_with_the_field_named():
  model = small_model("nature")
  params = networks.init_params(model, jax.random.PRNGKey(0))
  apply = lambda o, g, **kw: model.apply({"params": params}, o, g, **kw)
  gid = jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match="observation must be uint8.*float32"):
    apply(jnp.zeros((2, 84, 84, 4), jnp.float32), gid)
  with pytest.raises(ValueError, match=r"observation must have shape \[batch, 84, 84, 4\].*\(2, 84, 84\)"):
    apply(jnp.zeros((2, 84, 84), jnp.uint8), gid)
  with pytest.raises(ValueError, match="observation must have shape.*\\(2, 84, 84, 3\\)"):
    apply(jnp.zeros((2, 84, 84, 3), jnp.uint8), gid)
  with pytest.raises(ValueError, match="game_id must have shape"):
    apply(observations(2), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"game_id must lie in \[0, 3\)"):
    apply(observations(2), jnp.array([0, 7]))
  with pytest.raises(ValueError, match="not constant within blocks"):
    apply(observations(2), jnp.array([0, 1]), block_size=2)
  with pytest.raises(ValueError, match="not a multiple of the game block size"):
    apply(observations(2), jnp.array([0, 0]), block_size=4)
