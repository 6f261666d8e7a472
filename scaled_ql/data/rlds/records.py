"""Episode records read without TensorFlow: TFRecord framing with its CRC32C checks, the
`tf.train.Example` wire format, and PNG frames.

What `tf.data.TFRecordDataset` + `tf.io.parse_single_example` + `tf.io.decode_png` did for the
readers, in plain Python and NumPy, so that reading a dataset costs no TensorFlow import (about
6 s of a core per process) and works where TensorFlow is not installed (accelerator images).
Writing stays with TensorFlow/TFDS (`writer`), which defines the format.

- A TFRecord is: uint64 length, uint32 masked CRC32C of the length, the data, uint32 masked
  CRC32C of the data (little-endian). Both CRCs are checked, as TensorFlow does.
- An episode is a `tf.train.Example`: Example{1: Features{1: map<string, Feature>}}, Feature a
  oneof {1: BytesList, 2: FloatList, 3: Int64List}, each a repeated field 1 (packed or not).
- Frames are 8-bit grayscale PNGs: those our writer makes (every row unfiltered, one IDAT chunk)
  are inflated straight into an array (as fast as TensorFlow's decoder was); any other PNG
  (adaptive filters: RL Unplugged's) is decoded by TensorFlow where it is installed (5x
  Pillow's speed), else by Pillow.

Errors are `RecordError` (a ValueError) with a message saying what is wrong; the readers add the
file and record.
"""
from __future__ import annotations

import atexit
import functools
import io
import struct
import zlib
from typing import BinaryIO, Iterator, Optional, Union

import google_crc32c
import numpy as np

from scaled_ql.frames import FRAME_SHAPE

HEADER = struct.Struct("<QI")  # A TFRecord: length, masked CRC of length, data, masked CRC.
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
  """A record, an Example or a frame is malformed (the message says how)."""


def masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC32C of `data`."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# TFRecord framing.


def read_record(f: BinaryIO) -> Optional[bytes]:
  """The next record of an open file, its CRCs checked; None at a clean end of file."""
  header = f.read(HEADER.size)
  if not header:
    return None
  if len(header) < HEADER.size:
    raise RecordError(f"truncated record header ({len(header)} of {HEADER.size} bytes)")
  length, length_crc = HEADER.unpack(header)
  if masked_crc(header[:8]) != length_crc:
    raise RecordError("corrupted record length (CRC mismatch)")
  data = f.read(length)
  footer = f.read(_FOOTER.size)
  if len(data) < length or len(footer) < _FOOTER.size:
    raise RecordError(f"truncated record ({len(data)} of {length} data bytes)")
  if masked_crc(data) != _FOOTER.unpack(footer)[0]:
    raise RecordError("corrupted record data (CRC mismatch)")
  return data


def skip_record(f: BinaryIO) -> bool:
  """Moves past the next record without reading its data; False at the end of the file."""
  header = f.read(HEADER.size)
  if len(header) < HEADER.size:
    return False
  f.seek(HEADER.unpack(header)[0] + _FOOTER.size, io.SEEK_CUR)
  return True


def records(filename: str, skip: int = 0) -> Iterator[bytes]:
  """The records of a file from record `skip` on (skipped ones are not read)."""
  with open(filename, "rb", buffering=1 << 20) as f:
    for _ in range(skip):
      if not skip_record(f):
        return
    while (record := read_record(f)) is not None:
      yield record


# ---------------------------------------------------------------------------------------------
# tf.train.Example.


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise RecordError("truncated varint")
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise RecordError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Union[int, memoryview]]]:
  """(field number, wire type, value) of a message: ints for varint and fixed fields, a view
  for length-delimited ones."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      size, pos = _varint(buf, pos)
      if pos + size > len(buf):
        raise RecordError("truncated length-delimited field")
      value, pos = buf[pos:pos + size], pos + size
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      if pos + size > len(buf):
        raise RecordError("truncated fixed-size field")
      value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
    else:
      raise RecordError(f"unsupported wire type {wire} (field {number})")
    if number == 0:
      raise RecordError("field number 0")
    yield number, wire, value


def _int64s(packed: memoryview) -> np.ndarray:
  raw = np.frombuffer(packed, np.uint8)
  if not (raw & 0x80).any():  # Every value one byte: 0..127 (actions, flags, ids).
    return raw.astype(np.int64)
  values, pos = [], 0
  while pos < len(packed):
    value, pos = _varint(packed, pos)
    values.append(value - (1 << 64) if value >= 1 << 63 else value)
  return np.array(values, np.int64)


def parse_example(record: bytes) -> dict[str, Union[list[bytes], np.ndarray]]:
  """A serialized `tf.train.Example` -> {key: list of bytes | float32 array | int64 array}."""
  out = {}
  for number, wire, features in _fields(memoryview(record)):
    if number != 1 or wire != 2:
      continue
    for n, w, entry in _fields(features):
      if n != 1 or w != 2:
        continue
      key, feature = None, None
      for en, ew, value in _fields(entry):
        if en == 1 and ew == 2:
          key = bytes(value).decode()
        elif en == 2 and ew == 2:
          feature = value
      if key is None:
        raise RecordError("a feature without a name")
      out[key] = _feature_values(feature if feature is not None else memoryview(b""), key)
  return out


def _feature_values(feature: memoryview, key: str):
  kind, values = None, None
  for number, _, inner in _fields(feature):
    if number not in (1, 2, 3):
      continue
    kind = number
    if number == 1:
      values = [bytes(v) for n, w, v in _fields(inner) if n == 1 and w == 2]
    else:
      parts = []
      for n, w, v in _fields(inner):
        if n != 1:
          continue
        if number == 2:  # floats: packed (wire 2) or one fixed32 each (wire 5).
          parts.append(np.frombuffer(v, "<f4") if w == 2 else
                       np.array([v], np.uint32).view(np.float32))
        else:  # int64s: packed (wire 2) or one varint each (wire 0).
          parts.append(_int64s(v) if w == 2 else
                       np.array([v - (1 << 64) if v >= 1 << 63 else v], np.int64))
      dtype = np.float32 if number == 2 else np.int64
      values = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
  if kind is None:  # An empty Feature: TF reads it as a list of no values.
    return np.zeros(0, np.int64)
  return values


# ---------------------------------------------------------------------------------------------
# PNG frames.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OWN_IHDR = _PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(
    ">IIBBBBB", FRAME_SHAPE[1], FRAME_SHAPE[0], 8, 0, 0, 0, 0)


def _decode_own(png: bytes) -> Optional[np.ndarray]:
  """Our writer's PNG (IHDR, then one IDAT of unfiltered rows) -> [84, 84]; None if not one."""
  if not png.startswith(_OWN_IHDR):
    return None
  pos = len(_OWN_IHDR) + 4  # IHDR's CRC.
  (size,) = struct.unpack_from(">I", png, pos)
  if png[pos + 4:pos + 8] != b"IDAT":
    return None
  try:
    raw = zlib.decompress(png[pos + 8:pos + 8 + size])
  except zlib.error as e:
    raise RecordError(f"corrupt PNG frame: {e}") from e
  rows = np.frombuffer(raw, np.uint8)
  if rows.size != FRAME_SHAPE[0] * (FRAME_SHAPE[1] + 1):
    return None
  rows = rows.reshape(FRAME_SHAPE[0], FRAME_SHAPE[1] + 1)
  if rows[:, 0].any():  # A row filtered (filter byte not 0): not ours.
    return None
  return rows[:, 1:]


def decode_png(png: bytes) -> np.ndarray:
  """An 84x84 8-bit grayscale PNG -> [84, 84] uint8 (ours directly, any other by Pillow)."""
  frame = _decode_own(png)
  return _decode_png_pillow(png) if frame is None else frame


def decode_pngs(pngs: list[bytes]) -> np.ndarray:
  """An episode's PNGs -> [T, 84, 84] uint8. Ours are inflated directly; others (RL Unplugged's,
  with libpng's adaptive filters) by TensorFlow where it is installed, all of them in one call
  (~24k frames/s on a core, against Pillow's ~5k), else by Pillow."""
  out = np.empty((len(pngs), *FRAME_SHAPE), np.uint8)
  foreign = []
  for i, png in enumerate(pngs):
    frame = _decode_own(png)
    if frame is None:
      foreign.append(i)
    else:
      out[i] = frame
  if foreign:
    out[foreign] = _foreign_decoder()([pngs[i] for i in foreign])
  return out


@functools.lru_cache(maxsize=None)
def _foreign_decoder():
  """Decodes a list of PNGs: TensorFlow's decoder, traced once, where TensorFlow is installed;
  else Pillow, one frame at a time."""
  try:
    from scaled_ql.data.rlds.format import _tf  # pylint: disable=g-import-not-at-top
    tf = _tf()
  except ImportError:
    return lambda pngs: np.stack([_decode_png_pillow(png) for png in pngs])

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
  def decode(pngs):
    return tf.map_fn(lambda png: tf.io.decode_png(png, channels=1), pngs,
                     fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
                     parallel_iterations=16)

  # Dropped before the interpreter's teardown: TF 2.15's traced function, deleted after
  # TensorFlow's modules are gone, prints a TypeError from AtomicFunction.__del__ at exit.
  atexit.register(_foreign_decoder.cache_clear)

  def run(pngs):
    try:
      frames = decode(tf.constant(pngs, tf.string)).numpy()
    except (tf.errors.OpError, ValueError) as e:
      raise RecordError(f"corrupt PNG frame: {getattr(e, 'message', e)}") from e
    if frames.shape[1:] != (*FRAME_SHAPE, 1):
      raise RecordError(f"frames of shape {frames.shape[1:]}, not 84x84x1")
    return frames[..., 0]

  return run


def _decode_png_pillow(png: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(png)) as image:
      if image.format != "PNG":
        raise RecordError(f"a frame is {image.format}, not PNG")
      if image.mode != "L":
        raise RecordError(f"a frame is a {image.mode} PNG, not 8-bit grayscale")
      frame = np.asarray(image)
  except RecordError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many kinds)
    raise RecordError(f"corrupt PNG frame: {e}") from e
  return frame
