r"""Exports a pre-trained backbone as a self-contained artifact for downstream teams.

  python -m launch.export --workdir=runs/demo --out=runs/demo/backbone
  python -m launch.export --workdir=runs/demo/checkpoints/1500 --out=/tmp/b1500 --noheads

--workdir is a pre-training workdir (its newest checkpoint), its checkpoints/ directory or one
step directory. The artifact (see scaled_ql/export.py) holds the backbone's parameters, the
heads unless --noheads, and backbone.json (architecture, games and action counts, step,
dataset, parameter counts, SHA-256). Load it with `scaled_ql.load_backbone(OUT)`; fine-tune
from it with `python -m launch.finetune --backbone=OUT`.
"""
from __future__ import annotations

import os

from absl import app, flags

from launch import common
from scaled_ql import evaluation, export, networks

_WORKDIR = flags.DEFINE_string("workdir", None, "Pre-training workdir, its checkpoints/ "
                               "directory, or one step directory.")
_OUT = flags.DEFINE_string("out", None, "Artifact directory to write (default WORKDIR/backbone).")
_HEADS = flags.DEFINE_bool("heads", True, "Also export the pre-training heads.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing artifact at --out.")


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (a pre-training workdir or checkpoint).")
  with common.input_errors():  # evaluation.CheckpointError is a ValueError.
    ckpt = evaluation.load(_WORKDIR.value)
  out = _OUT.value or os.path.join(ckpt.workdir or os.path.dirname(ckpt.checkpoint_dir),
                                   "backbone")
  config = ckpt.config
  dataset = {k[len("data."):]: v for k, v in config.items() if k.startswith("data.") and k in (
      "data.data_dir", "data.runs", "data.checkpoint_range")}
  model_config = {k: getattr(ckpt.model, k) for k in (*networks.BACKBONE_FIELDS, "num_atoms")}
  model_config["dtype"] = config.get("model.dtype", "float32")
  with common.input_errors(FileExistsError):
    export.write_artifact(
        out, model_config=model_config, params=ckpt.params, games=ckpt.games,
        loss_kind=ckpt.loss_kind, step=ckpt.step, include_heads=_HEADS.value, dataset=dataset,
        source=os.path.join(ckpt.checkpoint_dir, str(ckpt.step)),
        v_range=(ckpt.v_min, ckpt.v_max), overwrite=_OVERWRITE.value)
  info = export.read_info(out)
  print(f"exported step {info['step']} of {info['source']}\n  -> {out}\n"
        f"  backbone: {info['architecture']['encoder']} "
        f"({info['num_backbone_params']:,} parameters), features {info['feature_dim']}; heads: "
        + (f"{len(info['games'])} games ({info['num_head_params']:,} parameters)"
           if info["has_heads"] else "not exported")
        + f"\n  games: {', '.join(g['name'] for g in info['games'])}\n"
        f"  load: scaled_ql.load_backbone({out!r})", flush=True)


if __name__ == "__main__":
  common.run(main)
