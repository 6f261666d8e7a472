r"""Exports a pre-trained backbone as a self-contained artifact for downstream teams.

  python -m launch.export --workdir=runs/demo --out=runs/demo/backbone
  python -m launch.export --workdir=runs/demo/checkpoints/1500 --out=/tmp/b1500 --noheads
  python -m launch.export --workdir=runs/demo --out=/tmp/b --formats=safetensors,card

--workdir is a training workdir (its newest checkpoint), its checkpoints/ directory or one
step directory. The artifact (scaled_ql/export/) holds backbone.json (architecture, games and
action counts, step, dataset, parameter counts, SHA-256) and, per --formats: the Orbax
parameters (orbax), model.safetensors (safetensors), features.onnx / policy.onnx (onnx),
features.stablehlo / policy.stablehlo (stablehlo) and a model card README.md (card). The
default writes every format this installation can and says in one line what it left out and
why (ONNX needs the pinned stack). Load it with `scaled_ql.load_backbone(OUT)`, or without
JAX as the card says; fine-tune from it with `python -m launch.finetune --backbone=OUT`. The
job is `scaled_ql.export.export_checkpoint`.
"""
from absl import app, flags

from scaled_ql import app as app_lib
from scaled_ql import export

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir, its checkpoints/ directory, "
                               "or one step directory.")
_OUT = flags.DEFINE_string("out", None, "Artifact directory to write (default WORKDIR/backbone).")
_HEADS = flags.DEFINE_bool("heads", True, "Also export the pre-training heads.")
_POLICY = flags.DEFINE_bool("policy", None, "Also export the greedy policy (ONNX, StableHLO); "
                            "needs the heads. Default: when the heads are exported.")
_FORMATS = flags.DEFINE_list("formats", None, f"Formats to write, from "
                             f"{','.join(export.FORMATS)} (default: all this installation "
                             f"can write).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing artifact at --out.")


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (a pre-training workdir or checkpoint).")
  app_lib.configure_jax()
  out, info = export.export_checkpoint(_WORKDIR.value, _OUT.value, heads=_HEADS.value,
                                       overwrite=_OVERWRITE.value, formats=_FORMATS.value,
                                       policy=_POLICY.value, note=lambda s: print(s, flush=True))
  print(f"exported step {info['step']} of {info['source']}\n  -> {out}\n"
        f"  backbone: {info['architecture']['encoder']} "
        f"({info['num_backbone_params']:,} parameters), features {info['feature_dim']}; heads: "
        + (f"{len(info['games'])} games ({info['num_head_params']:,} parameters)"
           if info["has_heads"] else "not exported")
        + f"\n  games: {', '.join(g['name'] for g in info['games'])}\n"
        f"  formats: {', '.join(info['formats'])}; policy "
        + ("exported" if info["has_policy"] else "not exported")
        + f"\n  load: scaled_ql.load_backbone({out!r})", flush=True)


if __name__ == "__main__":
  app_lib.run(main)
