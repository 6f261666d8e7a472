"""Fine-tuning a pre-trained backbone: offline on unseen games, or online on game variants.

New heads for the target games (or, with finetune.reuse_heads, the artifact's heads for games
it was trained on), the backbone from the artifact (trainable, or frozen with
finetune.freeze_backbone), and then the same job as pre-training (`loop.train`): checkpoints and
automatic resume, TensorBoard, periodic evaluation. Online mode: `scaled_ql.train.online`;
`read_online_returns(workdir)` gives an online run's [(env_step, return)] per finished episode.
The architecture always comes from the artifact, also for init="scratch", so both arms of a
comparison are the same network.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from scaled_ql import errors, export, games, networks
from scaled_ql.train import loop
from scaled_ql.train.online_log import read_online_returns  # noqa: F401  (re-exported)

INITS = ("pretrained", "scratch")
MODES = ("offline", "online")


def check(config, backbone_path: str, workdir: Optional[str] = None) -> dict:
  """Checks the fine-tuning fields, the online settings (`online.check_online_settings`;
  `workdir`: also that it holds no replay of the other backend) and the artifact's description
  (no JAX computation: it runs before JAX starts, whose CPU runtime depends on the artifact's
  encoder). Game names become canonical ("Pong" -> "pong"), so heads are matched by game.
  Returns the description."""
  f = config.finetune
  if f.init not in INITS:
    raise ValueError(f"config.finetune.init={f.init!r}: choose one of {INITS}.")
  if f.mode not in MODES:
    raise ValueError(f"config.finetune.mode={f.mode!r}: choose one of {MODES}.")
  if not backbone_path:
    raise ValueError("no backbone: pass --backbone=ARTIFACT (made by `python -m launch.export`); "
                     "a scratch run needs it too, for the architecture.")
  with config.unlocked():
    config.games = games.canonical_names(config.games)
  if f.mode == "online":
    from scaled_ql.train import online  # pylint: disable=g-import-not-at-top
    online.check_online_settings(config, workdir)
  return export.read_info(backbone_path)


def prepare(config, backbone_path: str, info: dict) -> tuple[Optional[dict], dict]:
  """Loads the artifact (`info`: its description from `check`) and sets config.model to its
  architecture. Returns (initial parameters for `train`, or None for scratch; run metadata)."""
  f = config.finetune
  wants_heads = f.reuse_heads and f.init == "pretrained" and info["has_heads"] and (
      set(config.games) & {g["name"] for g in info["games"]})
  loaded = export.load_backbone(backbone_path, with_heads=bool(wants_heads))
  with config.unlocked():
    for key, value in loaded.model_config.items():
      setattr(config.model, key, value)
    config.finetune.backbone = os.path.abspath(backbone_path)
  meta = dict(finetune=dict(init=f.init, backbone_sha256=info["sha256"],
                            freeze_backbone=bool(f.freeze_backbone), mode=f.mode))
  if f.init == "scratch":
    return None, meta
  initial = dict(loaded.params)
  if wants_heads:
    head_games = loaded.games
    rows = [(i, head_games.index(g)) for i, g in enumerate(config.games) if g in head_games]
    initial[networks.HEAD] = dict(
        rows=np.asarray([r for r, _ in rows], np.int32),
        kernel=loaded.heads["kernel"][[h for _, h in rows]],
        bias=loaded.heads["bias"][[h for _, h in rows]])
    meta["finetune"]["heads_from_backbone"] = [config.games[r] for r, _ in rows]
  return initial, meta


def describe(config, meta: dict) -> str:
  f = meta["finetune"]
  start = (f"pre-trained backbone {config.finetune.backbone}" if f["init"] == "pretrained"
           else "from scratch (random initialisation)")
  reused = f.get("heads_from_backbone")
  new = [g for g in config.games if g not in (reused or [])]
  heads = ", ".join(([f"from the backbone for {', '.join(reused)}"] if reused else [])
                    + ([f"new for {', '.join(new)}"] if new else []))
  frozen = ", backbone frozen" if f["freeze_backbone"] else ""
  return f"fine-tuning ({f['mode']}, {start}{frozen}; heads: {heads})"


def finetune(config, workdir: str, backbone_path: str, info: Optional[dict] = None):
  """The fine-tuning job: `check` (unless its `info` is given), load, then train offline or
  online. Returns the loop's Result."""
  with errors.input_checks():
    if info is None:
      info = check(config, backbone_path, workdir)
    initial, meta = prepare(config, backbone_path, info)
  print(describe(config, meta), flush=True)
  if config.finetune.mode == "online":
    from scaled_ql.train import online  # pylint: disable=g-import-not-at-top
    return online.train_online(config, workdir, initial_params=initial, meta_extra=meta)
  return loop.train(config, workdir, what="fine-tuning", initial_params=initial,
                    heads_only=config.finetune.freeze_backbone, meta_extra=meta)
