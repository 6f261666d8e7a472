"""The open formats of `launch.export` (safetensors, ONNX, StableHLO, model card), checked where
a downstream team uses them: in .venv-consumer (onnxruntime, numpy, ale-py; no JAX, Flax or
scaled_ql importable) and in a process that imports neither Flax nor scaled_ql."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import scaled_ql
from conftest import PRETRAIN_GAMES, run_module
from scaled_ql import evaluation, export, games, losses
from scaled_ql.evaluation import policy as policy_lib
from scaled_ql.evaluation import rollout
from scaled_ql.export import functions

CONSUMER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        ".venv-consumer", "bin", "python")
NO_JAX = """
for name in ("jax", "flax", "scaled_ql"):
  try:
    __import__(name)
  except ImportError:
    continue
  raise SystemExit(f"{name} is importable in the consumer environment")
"""


def _consumer(code: str, tmp_path) -> None:
  """Runs `code` in .venv-consumer, isolated (-I: no PYTHONPATH, no user site, no cwd)."""
  if not os.path.exists(CONSUMER):
    pytest.skip(f"{CONSUMER} is absent: `make setup-consumer` creates it (onnxruntime, numpy, "
                f"ale-py)")
  script = tmp_path / "consumer.py"
  script.write_text(NO_JAX + textwrap.dedent(code))
  done = subprocess.run([CONSUMER, "-I", str(script)], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def checkpoint(pretrained):
  return evaluation.load(pretrained["workdir"])


@pytest.fixture(scope="module")
def exported(pretrained, repo, tmp_path_factory):
  """launch.export with its defaults: (artifact dir, its description, stdout)."""
  out = tmp_path_factory.mktemp("formats") / "b"
  result = run_module(repo, "launch.export", f"--workdir={pretrained['workdir']}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  return str(out), export.read_info(str(out)), result.stdout


def _needs_onnx(info):
  if "onnx" not in info["formats"]:
    pytest.skip(f"no ONNX export on this stack: {info['skipped_formats']['onnx']}")


def _reference(checkpoint, x, game_id):
  """The JAX network's masked Q-values [B, 18] and greedy actions, computed as the evaluator
  does (the Q-network module, `policy.action_values`, `losses.masked_argmax`)."""
  logits = checkpoint.model.apply({"params": checkpoint.params}, x, game_id).logits
  support = losses.value_support(checkpoint.loss_kind, checkpoint.v_min, checkpoint.v_max,
                                 checkpoint.model.num_atoms)
  q = np.asarray(policy_lib.action_values(checkpoint.loss_kind, logits, support))
  legal = games.legal_action_mask(checkpoint.games)[game_id]
  actions = np.array([int(losses.masked_argmax(qi, li)) for qi, li in zip(q, legal)])
  return np.where(legal, q, functions.ILLEGAL_Q).astype(np.float32), actions


def _frames(pretrained, n):
  """n real emulator observations (stacked, preprocessed) with their game ids, as the
  evaluator makes them, recorded from a short rollout of the evaluator's random policy."""
  seen = []
  def record(observation, game_index):
    seen.append((observation.copy(), game_index.copy()))
    return np.zeros(len(observation), np.int64)
  rollout.run_episodes(record, PRETRAIN_GAMES, 1, envs_per_game=1, epsilon=0.5,
                       max_steps_per_episode=n // len(PRETRAIN_GAMES) + 30)
  x = np.concatenate([o for o, _ in seen[30:]])[:n]
  g = np.concatenate([i for _, i in seen[30:]])[:n].astype(np.int32)
  return x, g


def test_default_export_writes_every_available_format(exported):
  out, info, stdout = exported
  files = set(os.listdir(out))
  assert {"backbone.json", "params", "model.safetensors", "README.md", "features.stablehlo",
          "policy.stablehlo"} <= files
  if "onnx" in info["formats"]:
    assert {"features.onnx", "policy.onnx"} <= files and not info["skipped_formats"]
  else:  # Said in one line, and the rest written.
    assert "features.onnx" not in files
    notes = [line for line in stdout.splitlines() if line.startswith("note: onnx not written")]
    assert len(notes) == 1 and info["skipped_formats"]["onnx"] in notes[0]
  assert info["has_policy"]


def test_safetensors_loads_with_numpy_alone_bit_for_bit(exported, tmp_path):
  out, info, _ = exported
  _consumer(f"""
  import json, struct
  import numpy as np
  raw = open({os.path.join(out, 'model.safetensors')!r}, 'rb').read()
  n = struct.unpack('<Q', raw[:8])[0]
  header = json.loads(raw[8:8 + n])
  meta = header.pop('__metadata__')
  assert (8 + n) % 8 == 0
  tensors = {{k: np.frombuffer(raw[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]],
                              {{'F32': '<f4'}}[v['dtype']]).reshape(v['shape'])
             for k, v in header.items()}}
  np.savez('tensors.npz', **{{k.replace('/', '|'): v for k, v in tensors.items()}})
  json.dump(meta, open('meta.json', 'w'))
  """, tmp_path)
  loaded = scaled_ql.load_backbone(out, with_heads=True)
  expected = export.safetensors.flatten({"backbone": loaded.params, "heads": loaded.heads})
  with np.load(tmp_path / "tensors.npz") as got:
    got = {k.replace("|", "/"): got[k] for k in got.files}
  assert sorted(got) == sorted(expected) and "heads/kernel" in got
  assert any(k.startswith("backbone/") for k in got)
  for name, value in expected.items():
    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
    assert got[name].tobytes() == value.tobytes(), name
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert json.loads(meta["architecture"]) == info["architecture"]
  heads = json.loads(meta["games"])
  assert [g["name"] for g in heads] == list(PRETRAIN_GAMES)
  assert [g["num_actions"] for g in heads] == [games.get_game(g).num_actions
                                               for g in PRETRAIN_GAMES]
  assert heads[0]["ale_actions"] == list(games.get_game("pong").minimal_actions)
  assert float(meta["feature_scale"]) == pytest.approx(info["feature_dim"] ** 0.5)
  assert (float(meta["v_min"]), float(meta["v_max"]), int(meta["num_atoms"]),
          meta["loss_kind"]) == (info["v_min"], info["v_max"], info["num_atoms"],
                                 info["loss_kind"])
  # The library's own reader agrees (it is what launch.export wrote with).
  tensors, _ = export.safetensors.load(os.path.join(out, "model.safetensors"))
  assert all(np.array_equal(tensors[k], v) for k, v in expected.items())


def test_onnx_matches_the_jax_network_without_jax(exported, checkpoint, pretrained, tmp_path):
  out, info, _ = exported
  _needs_onnx(info)
  rng = np.random.default_rng(0)
  random_x = rng.integers(0, 256, (7, 84, 84, 4), dtype=np.uint8)
  random_g = rng.integers(0, len(PRETRAIN_GAMES), 7).astype(np.int32)
  real_x, real_g = _frames(pretrained, 24)
  np.savez(tmp_path / "inputs.npz", random_x=random_x, random_g=random_g, real_x=real_x,
           real_g=real_g)
  _consumer(f"""
  import numpy as np, onnxruntime as ort
  policy = ort.InferenceSession({os.path.join(out, 'policy.onnx')!r})
  features = ort.InferenceSession({os.path.join(out, 'features.onnx')!r})
  inputs = np.load('inputs.npz')
  result = {{}}
  for kind in ('random', 'real'):
    x, g = inputs[kind + '_x'], inputs[kind + '_g']
    result[kind + '_q'], result[kind + '_a'] = policy.run(None, {{'observation': x,
                                                                 'game_id': g}})
    result[kind + '_f'] = features.run(None, {{'observation': x}})[0]
  q1, a1 = policy.run(None, {{'observation': inputs['real_x'][:1],
                              'game_id': inputs['real_g'][:1]}})  # another batch size
  result['one_q'], result['one_a'] = q1, a1
  np.savez('outputs.npz', **result)
  """, tmp_path)
  got = np.load(tmp_path / "outputs.npz")
  for kind, x, g in (("random", random_x, random_g), ("real", real_x, real_g)):
    q, actions = _reference(checkpoint, x, g)
    legal = games.legal_action_mask(checkpoint.games)[g]
    diff = np.abs(got[f"{kind}_q"] - q)[legal].max()
    print(f"ONNX vs JAX, {kind} frames: max |dQ| = {diff:.2e}")
    assert diff < 1e-4
    assert np.array_equal(got[f"{kind}_q"][~legal], q[~legal])  # the lowest float32
    np.testing.assert_array_equal(got[f"{kind}_a"], actions)
    features = np.asarray(checkpoint.model.apply({"params": checkpoint.params}, x,
                                                 method="features"))
    assert np.abs(got[f"{kind}_f"] - features).max() < 1e-5
  np.testing.assert_allclose(got["one_q"], got["real_q"][:1], atol=1e-5)


def test_play_onnx_plays_as_the_evaluator(exported, checkpoint, repo, tmp_path):
  out, info, _ = exported
  _needs_onnx(info)
  game, seed, epsilon, steps = "pong", 3, 0.1, 250
  example = os.path.join(repo, "examples", "play_onnx.py")
  _consumer(f"""
  import subprocess, sys
  subprocess.run([sys.executable, '-I', {example!r}, '--artifact={out}', '--game={game}',
                  '--seed={seed}', '--epsilon={epsilon}', '--max_steps={steps}',
                  '--trace=trace.json'], check=True)
  """, tmp_path)
  trace = json.loads((tmp_path / "trace.json").read_text())
  greedy_fn = evaluation.make_greedy_policy(
      checkpoint.model, checkpoint.params, loss_kind=checkpoint.loss_kind,
      head_games=checkpoint.games, games=[game], v_min=checkpoint.v_min, v_max=checkpoint.v_max)
  greedy, crcs = [], []
  def recording(observation, game_index):
    import zlib  # pylint: disable=g-import-not-at-top
    crcs.append(zlib.crc32(observation[0].tobytes()))
    greedy.append(int(greedy_fn(observation, game_index)[0]))
    return np.array(greedy[-1:])
  played = rollout.run_episodes(recording, [game], 1, envs_per_game=1, seed=seed,
                                epsilon=epsilon, max_steps_per_episode=steps)
  episode, = played.episodes
  # What the evaluator took at each step: its greedy action unless its seeded env generator
  # explored (rollout.run_episodes, per env).
  _, rng = rollout.env_seeds(seed, game, 0)
  taken = [int(rng.integers(games.get_game(game).num_actions)) if rng.random() < epsilon
           else a for a in greedy]
  assert trace["observation_crc32"] == crcs  # bit-identical preprocessing, step by step
  assert trace["greedy"] == greedy and trace["actions"] == taken
  assert taken != greedy  # epsilon took some actions: the streams were compared too
  assert (trace["score"], trace["steps"]) == (episode.episode_return, episode.length)
  assert trace["score"] != 0  # a point was played
  print(f"play_onnx.py and the evaluator: {episode.length} steps, score {trace['score']:g}")


def test_stablehlo_runs_without_flax_or_the_library(exported, checkpoint, pretrained, tmp_path):
  out, _, _ = exported
  x, g = _frames(pretrained, 9)
  np.savez(tmp_path / "inputs.npz", x=x, g=g)
  code = textwrap.dedent(f"""
  import sys
  import numpy as np
  from jax import export  # jax.export needs this import before JAX 0.4.36
  inputs = np.load('inputs.npz')
  policy = export.deserialize(open({os.path.join(out, 'policy.stablehlo')!r}, 'rb').read())
  features = export.deserialize(
      open({os.path.join(out, 'features.stablehlo')!r}, 'rb').read())
  q, a = policy.call(inputs['x'], inputs['g'])
  q1, _ = policy.call(inputs['x'][:2], inputs['g'][:2])  # the batch is symbolic
  f = features.call(inputs['x'])
  np.savez('outputs.npz', q=np.asarray(q), a=np.asarray(a), f=np.asarray(f), q1=np.asarray(q1))
  loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'scaled_ql'))
  assert not loaded, loaded
  """)
  done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  got = np.load(tmp_path / "outputs.npz")
  q, actions = _reference(checkpoint, x, g)
  legal = games.legal_action_mask(checkpoint.games)[g]
  diff = np.abs(got["q"] - q)[legal].max()
  print(f"StableHLO vs JAX: max |dQ| = {diff:.2e}")
  assert diff < 1e-5
  np.testing.assert_array_equal(got["a"], actions)
  np.testing.assert_allclose(got["q1"], got["q"][:2], atol=1e-6)
  features = checkpoint.model.apply({"params": checkpoint.params}, x, method="features")
  assert np.abs(got["f"] - np.asarray(features)).max() < 1e-5
