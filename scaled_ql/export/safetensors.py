"""model.safetensors: every parameter under a flat name, readable with NumPy alone.

The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length N, then N bytes of JSON, then the tensors' raw little-endian bytes. The JSON maps
each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
after the header) and "__metadata__" to a {str: str} dictionary. Written here in a few lines
of NumPy rather than with the `safetensors` package, so that writing and reading need nothing
beyond NumPy on either stack; the files open with the package's `safetensors.numpy.load_file`
and `safe_open(...).metadata()` all the same (checked with safetensors 0.8.0, BUILD_NOTES.md).

Names are the parameter tree's paths joined by "/": "backbone/torso/Conv_0/kernel",
"heads/kernel" ([G, D, 18 * atoms]), "heads/bias". Metadata values are strings; nested ones
are JSON (see `metadata`).
"""
from __future__ import annotations

import json
import struct
from typing import Mapping

import numpy as np

FILE = "model.safetensors"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """{"a/b/c": array} of a nested dict of arrays, in sorted name order."""
  flat = {}
  for key in sorted(tree):
    name = f"{prefix}/{key}" if prefix else str(key)
    value = tree[key]
    if isinstance(value, Mapping):
      flat.update(flatten(value, name))
    else:
      flat[name] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """The nested dict of `flatten`'s output."""
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def save(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
  """Writes `tensors` (name -> array) and `metadata` (str -> str) as a safetensors file."""
  header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
  blobs, offset = [], 0
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
      raise ValueError(f"{name}: dtype {array.dtype} has no safetensors code here.")
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = dict(dtype=_CODES[array.dtype], shape=list(array.shape),
                        data_offsets=[offset, offset + len(data)])
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # The data starts 8-byte aligned, as the package writes it.
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for data in blobs:
      f.write(data)


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(name -> array, metadata) of a safetensors file; NumPy only."""
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path} is not a safetensors file (shorter than its header length).")
  (length,) = struct.unpack("<Q", raw[:8])
  if 8 + length > len(raw):
    raise ValueError(f"{path} is not a safetensors file (header of {length} bytes past the end).")
  header = json.loads(raw[8:8 + length])
  metadata = header.pop("__metadata__", {})
  data = memoryview(raw)[8 + length:]
  tensors = {}
  for name, entry in header.items():
    begin, end = entry["data_offsets"]
    dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
    tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(entry["shape"]).copy()
  return tensors, metadata


def metadata(info: Mapping) -> dict[str, str]:
  """The header's __metadata__ from an artifact's backbone.json description: what a consumer
  needs to use the tensors without this library (architecture, games with their action slots,
  feature scale, value support, loss kind)."""
  from scaled_ql import games as games_lib  # pylint: disable=g-import-not-at-top

  games = []
  for head, g in enumerate(info["games"]):
    game = games_lib.get_game(g["name"])
    games.append(dict(name=game.name, head=head, num_actions=g["num_actions"],
                      ale_actions=[int(a) for a in game.minimal_actions]))
  return {
      "format": "scaled-ql-backbone-safetensors/1",
      "architecture": json.dumps(info["architecture"]),
      "feature_dim": str(info["feature_dim"]),
      "feature_scale": repr(float(info["feature_scale"] or info["feature_dim"] ** 0.5)),
      "games": json.dumps(games),
      "num_actions": str(games_lib.MAX_ACTIONS),
      "num_atoms": str(info["num_atoms"]),
      "v_min": repr(float(info["v_min"])),
      "v_max": repr(float(info["v_max"])),
      "loss_kind": info["loss_kind"],
      "step": str(info["step"]),
      "has_heads": json.dumps(bool(info["has_heads"])),
      "sha256": info["sha256"],
  }
