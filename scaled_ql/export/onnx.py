"""features.onnx, policy.onnx: the two functions as ONNX graphs, for onnxruntime and friends.

Inputs and outputs (batch dimension "batch", dynamic):
  features.onnx  observation uint8 [batch, 84, 84, 4] -> features float32 [batch, D]
  policy.onnx    observation uint8 [batch, 84, 84, 4], game_id int32 [batch]
                 -> q_values float32 [batch, 18] (illegal slots: the lowest float32), action int32 [batch]
(`functions` says what they compute.)

Route: `jax2tf` in graph mode (native_serialization=False, enable_xla=False: plain TensorFlow
ops, no XlaCallModule and no XLA-only ops), then `tf2onnx`. Why this one (BUILD_NOTES.md,
"Export formats"): tf2onnx cannot read the one XlaCallModule op of jax2tf's native
serialization, and graph mode is only in older JAX (the pinned stack's 0.4.34); jax2onnx, the
direct route, needs JAX >= 0.8.1 and Flax >= 0.12.1 and pins orbax-checkpoint below today's,
so on neither stack does it install without moving the stack. `unavailable()` says, in one
line, why the route cannot run here; the export job then writes the other formats.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional

import jax

from scaled_ql.export import functions

FEATURES_FILE = "features.onnx"
POLICY_FILE = "policy.onnx"
OPSET = 17


EXTRA_HINT = "pip install -c constraints/pinned.txt -e '.[export]' on the pinned stack"


def unavailable() -> Optional[str]:
  """None where ONNX export can run here, else the one-line reason why not.

  Probes what matters rather than versions: jax2tf of JAX 0.5+ accepts
  native_serialization=False but serializes natively all the same (checked: JAX 0.12 gives a
  graph of one XlaCallModule op), which tf2onnx cannot convert.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return (f"ONNX export needs TensorFlow and tf2onnx (the `export` extra: {EXTRA_HINT}); "
            f"TensorFlow is not installed")
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings(), tf.device("/CPU:0"):
    warnings.simplefilter("ignore")
    probe = jax2tf.convert(lambda x: x + 1, native_serialization=False, enable_xla=False)
    graph = tf.function(probe, autograph=False).get_concrete_function(
        tf.TensorSpec([1], tf.float32)).graph
  if any(op.type == "XlaCallModule" for op in graph.get_operations()):
    return (f"ONNX export needs jax2tf's graph mode, but JAX {jax.__version__} serializes "
            f"natively only (one XlaCallModule op), which tf2onnx cannot convert; export ONNX "
            f"on the pinned stack (JAX 0.4.34) from the same checkpoint")
  missing = []
  for module in ("tf2onnx", "onnx"):
    try:
      __import__(module)
    except ImportError:
      missing.append(module)
  if missing:
    return (f"ONNX export needs {' and '.join(missing)} (the `export` extra: {EXTRA_HINT}), "
            f"not installed")
  return None


def _convert(fn, with_game: bool, path: str, output_names: tuple[str, ...]) -> None:
  """fn (closed over its parameters) -> an ONNX file at path with named, dynamic-batch I/O."""
  import onnx  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  shapes = ["(b, 84, 84, 4)", "(b,)"] if with_game else ["(b, 84, 84, 4)"]
  # with_gradient stays True: False wraps the outputs in PreventGradient, an op ONNX lacks.
  with warnings.catch_warnings():  # Graph mode's deprecation: the reason is in the docstring.
    warnings.simplefilter("ignore")
    tf_fn = jax2tf.convert(fn, native_serialization=False, enable_xla=False,
                           polymorphic_shapes=shapes)
  signature = [tf.TensorSpec([None, 84, 84, 4], tf.uint8, name="observation")]
  if with_game:
    signature.append(tf.TensorSpec([None], tf.int32, name="game_id"))
  outputs = tf_fn
  if len(output_names) == 1:
    outputs = lambda *args: (tf_fn(*args),)
  with tf.device("/CPU:0"), warnings.catch_warnings():  # TF only traces here: never an
    warnings.simplefilter("ignore")                       # accelerator.
    model, _ = tf2onnx.convert.from_function(
        tf.function(outputs, autograph=False), input_signature=signature, opset=OPSET)
  # Plain output names (tf2onnx names them after TensorFlow's Identity ops).
  for output, name in zip(model.graph.output, output_names):
    model.graph.node.append(onnx.helper.make_node("Identity", [output.name], [name]))
    output.name = name
  for value in model.graph.input:
    value.name = value.name.split(":")[0]
  for value in (*model.graph.input, *model.graph.output):  # The dynamic batch, named.
    value.type.tensor_type.shape.dim[0].dim_param = "batch"
  model.graph.name = os.path.splitext(os.path.basename(path))[0]
  onnx.checker.check_model(model)
  onnx.save(model, path)


def write(out_dir: str, info: Mapping[str, Any], tree: Mapping[str, Any]) -> dict:
  """Writes features.onnx (and policy.onnx with heads) into out_dir; returns what the
  description records."""
  import tf2onnx  # pylint: disable=g-import-not-at-top

  written = {}
  _convert(functions.make_features(info, tree["backbone"]), False,
           os.path.join(out_dir, FEATURES_FILE), ("features",))
  written[FEATURES_FILE] = dict(inputs=["observation"], outputs=["features"])
  if "heads" in tree:
    _convert(functions.make_policy(info, tree["backbone"], tree["heads"]), True,
             os.path.join(out_dir, POLICY_FILE), ("q_values", "action"))
    written[POLICY_FILE] = dict(inputs=["observation", "game_id"],
                                outputs=["q_values", "action"])
  return dict(files=written, opset=OPSET, converter=f"jax2tf (graph) + tf2onnx "
              f"{tf2onnx.__version__}", illegal_q=functions.ILLEGAL_Q)
