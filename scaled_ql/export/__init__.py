"""Exports of a pre-trained backbone: what pre-training hands to teams with and without JAX.

An artifact is one self-contained directory (see `job.FORMATS` for what each format adds):
  backbone.json       the description (`artifact`): architecture, games and action counts, step,
                      dataset, parameter counts, SHA-256, the formats written
  params/             Orbax parameters, read by `scaled_ql.load_backbone` (`artifact`)
  model.safetensors   every parameter under a flat name, metadata in the header (`safetensors`)
  features.onnx, policy.onnx            ONNX graphs of the two functions (`onnx`)
  features.stablehlo, policy.stablehlo  `jax.export` serialized StableHLO (`stablehlo`)
  README.md           the model card (`card`)
The two functions (`functions`): the backbone's unit-norm features, and the greedy multi-game
policy (Q-values over the 18 action slots, illegal ones masked, and the greedy action).
`export_checkpoint` is the job (`launch.export`); `load_backbone` reads old and new artifacts.
"""
from scaled_ql.export.artifact import (FORMAT, INFO_FILE, PARAMS_DIR, VERSION, ArtifactError,
                                       LoadedBackbone, load_backbone, params_digest, read_info,
                                       write_artifact)
from scaled_ql.export.job import FORMATS, export_checkpoint, parse_formats

__all__ = [
    "FORMAT", "FORMATS", "INFO_FILE", "PARAMS_DIR", "VERSION", "ArtifactError",
    "LoadedBackbone", "export_checkpoint", "load_backbone", "params_digest", "parse_formats",
    "read_info", "write_artifact",
]
