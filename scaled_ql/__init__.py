"""scaled-ql: pre-training generalist Atari agents with offline Q-learning (Scaled QL)."""
import jax as _jax

# Random numbers that do not depend on how an array is sharded: a model initialised on 1 device
# and on a (data, model) mesh of 8 gets the same parameters, so runs are comparable across
# device counts and restarts on other meshes. (JAX's default from 0.5.0 on.)
_jax.config.update("jax_threefry_partitionable", True)


def load_backbone(path: str, *, with_heads: bool = False):
  """The pre-trained backbone exported by `launch.export`: see `scaled_ql.export.load_backbone`.

  backbone = scaled_ql.load_backbone("runs/demo/backbone")
  features = backbone.module.apply({"params": backbone.params}, observations)  # [B, D]
  """
  from scaled_ql import export  # pylint: disable=g-import-not-at-top  (keeps `import` light)
  return export.load_backbone(path, with_heads=with_heads)
