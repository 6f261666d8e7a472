r"""Plays an Atari game with an exported policy.onnx, with onnxruntime, numpy and ale-py alone.

  pip install onnxruntime numpy ale-py
  python play_onnx.py --artifact=runs/demo/backbone --game=pong --seed=0

No JAX and no scaled-ql: the evaluator's preprocessing is copied here in NumPy, and must stay
exactly that of `launch.evaluate` (tests/test_export_formats.py checks that both play the same
actions to the same score):
  ALE v5 settings, sticky actions 0.25 (scaled_ql/envs/atari.py); frame skip 4, the max of the
  step's last two grayscale frames; an 84x84 area resize bit-exact with OpenCV's INTER_AREA
  (here OpenCV's float32 arithmetic, `_resize_area_reference` in scaled_ql/envs/resize.py);
  4 stacked frames, zeros before an episode's first (scaled_ql/envs/stacking.py);
  epsilon-greedy, env k of a game seeded by SeedSequence([seed, crc32(game), k]) exactly as
  scaled_ql/evaluation/rollout.py seeds it (this script plays env k = 0's first episode).
"""
import argparse, json, struct, zlib
import ale_py, numpy as np, onnxruntime as ort
from ale_py import roms


def area_taps(n_in, n_out):
  """OpenCV's INTER_AREA taps for shrinking one axis: (indices, float32 weights) [n_out, taps]."""
  scale, rows = n_in / n_out, []
  for i in range(n_out):
    lo, hi = i * scale, i * scale + scale
    width = min(scale, n_in - lo)
    last = min(int(np.floor(hi)), n_in - 1)
    first = min(int(np.ceil(lo)), last)
    row = [(first - 1, (first - lo) / width)] if first - lo > 1e-3 else []
    row += [(j, 1.0 / width) for j in range(first, last)]
    if hi - last > 1e-3:
      row.append((last, min(hi - last, 1.0, width) / width))
    rows.append(row)
  index = np.zeros((n_out, max(map(len, rows))), np.int64)
  weight = np.zeros(index.shape, np.float32)
  for i, row in enumerate(rows):
    for k, (j, w) in enumerate(row):
      index[i, k], weight[i, k] = j, np.float32(w)
  return index, weight


def shrink_rows(pixels, index, weight):  # [in, W] float32 -> [out, W], taps summed in order.
  taps = pixels[index] * weight[:, :, None]
  out = taps[:, 0] + taps[:, 1]
  for k in range(2, index.shape[1]):
    out += taps[:, k]
  return out


def resize(frame):  # [210, 160] uint8 -> [84, 84] uint8: columns first, as OpenCV does.
  columns = shrink_rows(frame.T.astype(np.float32), *area_taps(frame.shape[1], 84))
  return np.rint(shrink_rows(np.ascontiguousarray(columns.T),
                             *area_taps(frame.shape[0], 84))).astype(np.uint8)


def play(artifact, game, seed=0, epsilon=0.001, max_steps=27_000):
  """One episode; returns (score, steps, actions taken, greedy actions, observation digests)."""
  raw = open(f"{artifact}/model.safetensors", "rb").read()  # Only the header's metadata.
  meta = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]
  head = next(g for g in json.loads(meta["games"]) if g["name"] == game)
  policy = ort.InferenceSession(f"{artifact}/policy.onnx")
  emulator, exploration = np.random.SeedSequence([seed, zlib.crc32(game.encode()), 0]).spawn(2)
  rng = np.random.default_rng(exploration)
  ale = ale_py.ALEInterface()
  ale.setLoggerMode(ale_py.LoggerMode.Error)
  ale_seed = np.random.SeedSequence(int(emulator.generate_state(1)[0])).generate_state(2)[1]
  ale.setInt("random_seed", int(np.array(ale_seed, np.uint32).view(np.int32)))
  ale.setFloat("repeat_action_probability", 0.25)
  ale.loadROM(roms.get_rom_path(game))
  ale.reset_game()
  stack = np.zeros((84, 84, 4), np.uint8)
  stack[..., -1] = resize(ale.getScreenGrayscale())
  score, steps, taken, greedy, digests, over = 0.0, 0, [], [], [], False
  while not over:
    _, action = policy.run(None, {"observation": stack[None],
                                  "game_id": np.array([head["head"]], np.int32)})
    greedy.append(int(action[0]))
    digests.append(zlib.crc32(stack.tobytes()))
    a = int(action[0])
    if epsilon > 0 and (epsilon >= 1 or rng.random() < epsilon):
      a = int(rng.integers(head["num_actions"]))
    taken.append(a)
    frames = []
    for _ in range(4):  # Frame skip 4; stop at a game over or the frame cap.
      score += ale.act(ale_py.Action(head["ale_actions"][a]))
      frames.append(ale.getScreenGrayscale())
      over = ale.game_over(with_truncation=False) or (
          ale.getEpisodeFrameNumber() >= min(108_000, 4 * max_steps))
      if over:
        break
    steps += 1
    screen = np.maximum(frames[-2], frames[-1]) if len(frames) == 4 else frames[-1]
    stack = np.concatenate([stack[..., 1:], resize(screen)[..., None]], axis=-1)
  return score, steps, taken, greedy, digests


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--artifact", required=True, help="the export directory (policy.onnx ...)")
  p.add_argument("--game", required=True, help="a game of the artifact, e.g. pong")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--epsilon", type=float, default=0.001)
  p.add_argument("--max_steps", type=int, default=27_000, help="agent steps (108,000 frames)")
  p.add_argument("--trace", help="write every step's actions and observation CRCs as JSON")
  args = p.parse_args()
  score, steps, taken, greedy, digests = play(args.artifact, args.game, args.seed,
                                              args.epsilon, args.max_steps)
  print(f"{args.game}: score {score:g} in {steps} steps (seed {args.seed})")
  if args.trace:
    with open(args.trace, "w") as f:
      json.dump(dict(score=score, steps=steps, actions=taken, greedy=greedy,
                     observation_crc32=digests), f)
