"""The export job (`launch.export`): a pre-training checkpoint written as an artifact directory
in the formats asked for.

FORMATS, each a set of files in the artifact directory beside backbone.json:
  orbax        params/              Orbax PyTree checkpoint (`scaled_ql.load_backbone`)
  safetensors  model.safetensors    every parameter, flat names, metadata (NumPy alone)
  onnx         features.onnx, policy.onnx        (onnxruntime; pinned stack only, see onnx.py)
  stablehlo    features.stablehlo, policy.stablehlo          (jax.export, without this library)
  card         README.md            the model card (Hugging Face Hub layout)
The default writes every format this installation can; one asked for by name that cannot be
written is an error. The policy (policy.onnx, policy.stablehlo) needs the heads.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from scaled_ql import errors, networks
from scaled_ql.export import artifact, card, onnx, safetensors, stablehlo

FORMATS = ("orbax", "safetensors", "onnx", "stablehlo", "card")


def parse_formats(formats: Optional[Sequence[str] | str]) -> Optional[tuple[str, ...]]:
  """The checked format list of "a,b" or a sequence (None: the default, every available)."""
  if formats is None:
    return None
  if isinstance(formats, str):
    formats = [f for f in formats.split(",") if f.strip()]
  chosen = tuple(dict.fromkeys(f.strip().lower() for f in formats))
  unknown = [f for f in chosen if f not in FORMATS]
  if unknown or not chosen:
    raise errors.InputError(f"--formats={','.join(formats)}: unknown or no format "
                            f"{unknown or ''}; choose from {','.join(FORMATS)}.")
  return chosen


def export_checkpoint(path: str, out: Optional[str] = None, *, heads: bool = True,
                      overwrite: bool = False, formats: Optional[Sequence[str] | str] = None,
                      policy: Optional[bool] = None,
                      note: Callable[[str], None] = lambda line: None) -> tuple[str, dict]:
  """The newest (or named) checkpoint under `path` (a training workdir, its checkpoints/
  directory or a step directory) written as an artifact at `out` (default WORKDIR/backbone).

  `formats`: see the module docstring (None: all this installation can write; a default
  format that cannot be written here is left out with one `note` line saying why).
  `policy`: also write the greedy policy where the formats hold functions (default: when the
  heads are exported). Returns (out, its description). Bad input raises errors.InputError
  before any conversion: an existing artifact without `overwrite`, an unreadable checkpoint,
  an unknown format, a policy without heads, a converter that is not installed.
  """
  from scaled_ql.evaluation import restore  # pylint: disable=g-import-not-at-top

  chosen = parse_formats(formats)
  if out is not None:
    _check_out(out, overwrite)
  with errors.input_checks():  # restore.CheckpointError is a ValueError.
    ckpt = restore.load(path)
  out = out or os.path.join(ckpt.workdir or os.path.dirname(ckpt.checkpoint_dir), "backbone")
  _check_out(out, overwrite)
  has_heads = networks.HEAD in ckpt.params
  policy = heads and has_heads if policy is None else policy
  if policy and not (heads and has_heads):
    raise errors.InputError(
        "the policy (policy.onnx, policy.stablehlo) needs the heads, but "
        + ("--noheads leaves them out" if has_heads else
           f"the checkpoint {ckpt.checkpoint_dir}/{ckpt.step} has none")
        + "; pass --nopolicy to export the features alone.")
  skipped = {}
  onnx_reason = onnx.unavailable() if chosen is None or "onnx" in chosen else None
  if chosen is None:
    chosen = tuple(f for f in FORMATS if f != "onnx" or onnx_reason is None)
    if onnx_reason:
      skipped["onnx"] = onnx_reason
      note(f"note: onnx not written: {onnx_reason}.")
  elif "onnx" in chosen and onnx_reason:
    raise errors.InputError(f"--formats=onnx: {onnx_reason}.")

  config = ckpt.config
  dataset = {k[len("data."):]: v for k, v in config.items() if k in (
      "data.data_dir", "data.runs", "data.checkpoint_range")}
  model_config = {k: getattr(ckpt.model, k) for k in (*networks.BACKBONE_FIELDS, "num_atoms")}
  model_config["feature_scale"] = ckpt.model.feature_scale or 0.0  # None: sqrt(D), stored as 0.
  model_config["dtype"] = config.get("model.dtype", "float32")
  evaluation = card.find_evaluation(ckpt.workdir) if "card" in chosen else None

  def write_open_formats(tmp: str, info: dict, tree: dict) -> None:
    policy_tree = tree if policy else {"backbone": tree["backbone"]}
    if "safetensors" in chosen:
      safetensors.save(os.path.join(tmp, safetensors.FILE), safetensors.flatten(tree),
                       safetensors.metadata(info))
    if "stablehlo" in chosen:
      info["stablehlo"] = stablehlo.write(tmp, info, policy_tree)
    if "onnx" in chosen:
      info["onnx"] = onnx.write(tmp, info, policy_tree)
    if "card" in chosen:  # Last: it lists the files written.
      card.write(tmp, info, evaluation, config)

  with errors.input_checks(FileExistsError):
    artifact.write_artifact(
        out, model_config=model_config, params=ckpt.params, games=ckpt.games,
        loss_kind=ckpt.loss_kind, step=ckpt.step, include_heads=heads, dataset=dataset,
        source=os.path.join(ckpt.checkpoint_dir, str(ckpt.step)),
        v_range=(ckpt.v_min, ckpt.v_max), overwrite=overwrite,
        write_orbax="orbax" in chosen, extra_writer=write_open_formats,
        extra_info=dict(formats=list(chosen), skipped_formats=skipped,
                        has_policy=bool(policy) and any(f in chosen
                                                        for f in ("onnx", "stablehlo"))))
  return out, artifact.read_info(out)


def _check_out(out: str, overwrite: bool) -> None:
  """Refuses an existing, non-empty `out` without `overwrite` (before any work)."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.InputError(f"--out={out} is a file, not a directory.")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise errors.InputError(f"{out} exists and is not empty; choose another --out (or pass "
                            f"--overwrite).")
