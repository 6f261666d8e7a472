"""scaled-ql: pre-training generalist Atari agents with offline Q-learning (Scaled QL).

Importing the package changes no global JAX setting; the jobs' settings are
`scaled_ql.app.configure_jax()`, which every launch calls.
"""


def load_backbone(path: str, *, with_heads: bool = False):
  """The pre-trained backbone exported by `launch.export`: see `scaled_ql.export.load_backbone`.

  backbone = scaled_ql.load_backbone("runs/demo/backbone")
  features = backbone.module.apply({"params": backbone.params}, observations)  # [B, D]
  """
  from scaled_ql import export  # pylint: disable=g-import-not-at-top  (keeps `import` light)
  return export.load_backbone(path, with_heads=with_heads)
