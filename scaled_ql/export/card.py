"""README.md of an artifact: a model card in the Hugging Face Hub layout.

YAML front matter (library_name, license, tags, and a model-index with the run's evaluation
where `launch.evaluate` wrote one for the exported step: WORKDIR/eval/results.json), then what
a downstream team needs: the files and how to load each without this library, architecture
and parameter counts, training data and split, steps and loss, the evaluation protocol and its
scores, intended use, limits, and the citation. Everything is taken from the artifact's
description and the run's files; nothing is claimed that the run did not measure.
"""
from __future__ import annotations

import json  # JSON strings are YAML strings: the card's quoted values.
import os
from typing import Any, Mapping, Optional

from scaled_ql import games as games_lib
from scaled_ql.export import functions

FILE = "README.md"
CITATION = """@inproceedings{kumar2023offline,
  title={Offline Q-Learning on Diverse Multi-Task Data Both Scales and Generalizes},
  author={Kumar, Aviral and Agarwal, Rishabh and Geng, Xinyang and Tucker, George and
          Levine, Sergey},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2023},
  eprint={2211.15144},
  archivePrefix={arXiv}
}"""
_FILES = (
    ("backbone.json", "description: architecture, games and action slots, step, SHA-256"),
    ("params", "Orbax PyTree checkpoint (`scaled_ql.load_backbone`)"),
    ("model.safetensors", "every parameter, flat names, metadata in the header (NumPy alone)"),
    ("features.onnx", "uint8 [batch, 84, 84, 4] -> unit-norm features float32 [batch, D]"),
    ("policy.onnx", "observation, game_id int32 [batch] -> q_values [batch, 18], action"),
    ("features.stablehlo", "the features function, `jax.export` serialized"),
    ("policy.stablehlo", "the policy function, `jax.export` serialized"),
)


def find_evaluation(workdir: Optional[str]):
  """(agent Evaluation, baseline Evaluations, checkpoint info) of WORKDIR/eval/results.json,
  or None."""
  from scaled_ql.evaluation import results  # pylint: disable=g-import-not-at-top
  if not workdir or not os.path.exists(os.path.join(workdir, "eval", results.RESULTS_FILE)):
    return None
  try:
    return results.read(os.path.join(workdir, "eval"))
  except (OSError, ValueError, KeyError, TypeError):
    return None  # An unreadable result is not this job's input; the card says "not evaluated".


def _front_matter(info: Mapping[str, Any], evaluation, name: str) -> str:
  lines = ["---", "library_name: scaled-ql", "license: other",
           "license_name: unspecified",
           "tags:"] + [f"- {t}" for t in (
               "reinforcement-learning", "offline-reinforcement-learning", "atari",
               "deep-q-learning", "scaled-q-learning", "jax", "flax", "safetensors", "onnx")]
  if evaluation is not None:
    agent = evaluation[0]
    lines += ["model-index:", f"- name: {name}", "  results:"]
    cap = agent.settings.get("max_steps_per_episode")
    cut = f"; episodes cut at {cap} agent steps, not the protocol's cap" if cap else ""
    if agent.aggregates is not None:
      iqm = agent.aggregates.iqm
      lines += ["  - task:", "      type: reinforcement-learning",
                "      name: Atari 2600, multi-game",
                "    dataset:", "      type: atari",
                f"      name: {', '.join(agent.aggregates.games)}",
                "    metrics:", "    - type: iqm_human_normalized_score",
                f"      value: {iqm.value:.4f}",
                "      name: " + json.dumps(f"IQM human-normalized score (95% CI "
                                            f"[{iqm.low:.4f}, {iqm.high:.4f}]{cut})")]
    for g in agent.games:
      ale = games_lib.get_game(g.game).ale_name
      lines += ["  - task:", "      type: reinforcement-learning",
                "      name: reinforcement-learning",
                "    dataset:", "      type: atari", f"      name: ALE/{ale}-v5",
                "    metrics:", "    - type: mean_reward",
                f"      value: {g.mean_return:.2f} +/- {g.stderr_return:.2f}",
                "      name: " + json.dumps(f"mean episode return ({g.episodes} "
                                            f"episodes{cut})")]
  return "\n".join(lines + ["---", ""])


def _evaluation_section(info: Mapping[str, Any], evaluation) -> list[str]:
  out = ["## Evaluation", "",
         "Protocol (Machado et al. 2018, as in the paper): ALE v5, sticky actions 0.25, frame "
         "skip 4, the pixel-wise max of the last two frames, 84x84 area resize, 4 stacked "
         "frames (zero frames before an episode's first), episodes capped at 108,000 frames, "
         "epsilon-greedy with epsilon 0.001; scores are human-normalized and aggregated by the "
         "interquartile mean (IQM) with stratified-bootstrap 95% confidence intervals.", ""]
  if evaluation is None:
    return out + ["This export was **not evaluated** (no `eval/results.json` in its run); run "
                  "`python -m launch.evaluate --checkpoint=WORKDIR` and export again.", ""]
  agent, baselines, checkpoint = evaluation
  s = agent.settings
  step = checkpoint.get("step")
  if step is not None and step != info["step"]:
    out += [f"**Note:** these scores are of step {step}; this export is step {info['step']}.",
            ""]
  cap = s.get("max_steps_per_episode")
  out += [f"This run: epsilon {s.get('epsilon')}, sticky actions "
          f"{s.get('sticky_action_prob')}, seed {s.get('seed')}, {s.get('episodes_per_game')} "
          f"episodes per game, " + (f"episodes **cut at {cap} agent steps** (not the "
                                    f"protocol's cap: scores are not comparable to the paper's)"
                                    if cap else "the protocol's 108,000-frame cap") + ".", "",
          "| game | episodes | mean return | stderr | human-normalized |",
          "| --- | ---: | ---: | ---: | ---: |"]
  for g in agent.games:
    hns = "n/a" if g.normalized is None else f"{g.normalized:.4f}"
    out.append(f"| {g.game} | {g.episodes} | {g.mean_return:.2f} | {g.stderr_return:.2f} | "
               f"{hns} |")
  if agent.aggregates is not None:
    a = agent.aggregates
    out += ["", f"IQM human-normalized score {a.iqm.value:.4f} (95% CI [{a.iqm.low:.4f}, "
            f"{a.iqm.high:.4f}]) over {', '.join(a.games)}."]
  return out + [""] + _baselines_table(agent, baselines)


def _baselines_table(agent, baselines) -> list[str]:
  """The agent beside the baselines `launch.evaluate --baselines` scored with it (mean
  returns, IQM); without any, a line saying the card shows no floor."""
  if not baselines:
    return ["No baseline was scored with this evaluation: `launch.evaluate "
            "--baselines=random,constant,behaviour` adds them. In Atari the floor to beat is "
            "the best constant action (one button held for whole episodes), not the random "
            "policy.", ""]
  policies = [agent] + list(baselines)
  best = next((b.settings.get("best") for b in baselines if b.settings.get("best")), {})
  out = ["Beside it, the baselines scored with it (mean episode return; the behaviour data's "
         "from its dataset's episodes). In Atari the floor to beat is the best constant "
         "action, not the random policy.", "",
         "| game | " + " | ".join(p.label for p in policies) + " |",
         "| --- |" + " ---: |" * len(policies)]
  for g in agent.games:
    cells = []
    for p in policies:
      score = p.game(g.game)
      cells.append("n/a" if score is None else f"{score.mean_return:.2f}")
    action = best.get(g.game, {}).get("action")
    out.append(f"| {g.game}" + (f" (best constant: {action})" if action else "") + " | "
               + " | ".join(cells) + " |")
  iqms = ["n/a" if p.aggregates is None else
          f"{p.aggregates.iqm.value:.4f} [{p.aggregates.iqm.low:.4f}, "
          f"{p.aggregates.iqm.high:.4f}]" for p in policies]
  return out + ["| IQM HNS [95% CI] | " + " | ".join(iqms) + " |", ""]


def _loading_section(info: Mapping[str, Any], present: set[str]) -> list[str]:
  out = ["## How to load", ""]
  if "model.safetensors" in present:
    out += ["NumPy alone (`model.safetensors`: 8-byte little-endian header length, JSON "
            "header, raw little-endian tensors):", "", "```python", "import json, struct",
            "import numpy as np", "raw = open('model.safetensors', 'rb').read()",
            "n = struct.unpack('<Q', raw[:8])[0]", "header = json.loads(raw[8:8 + n])",
            "meta = header.pop('__metadata__')  # strings; architecture, games: JSON",
            "DT = {'F32': '<f4', 'I32': '<i4', 'U8': 'u1'}",
            "params = {k: np.frombuffer(raw[8 + n + v['data_offsets'][0]:8 + n + "
            "v['data_offsets'][1]], DT[v['dtype']]).reshape(v['shape']) "
            "for k, v in header.items()}", "```", ""]
  if "policy.onnx" in present or "features.onnx" in present:
    out += ["onnxruntime (batch dimension dynamic; `game_id` int32 indexes the games below; "
            f"illegal action slots hold {functions.ILLEGAL_Q:.7g}, the lowest float32, so "
            "`action` is always a legal minimal-action index):", "", "```python",
            "import numpy as np, onnxruntime as ort",
            "policy = ort.InferenceSession('policy.onnx')",
            "obs = np.zeros((1, 84, 84, 4), np.uint8)  # 4 stacked 84x84 grayscale frames",
            "q_values, action = policy.run(None, {'observation': obs, "
            "'game_id': np.array([0], np.int32)})",
            "features = ort.InferenceSession('features.onnx').run(None, "
            "{'observation': obs})[0]", "```", "",
            "`examples/play_onnx.py` in the scaled-ql repository plays a game with "
            "`policy.onnx` and ale-py alone, with the evaluator's preprocessing.", ""]
  if "policy.stablehlo" in present or "features.stablehlo" in present:
    platforms = sorted({p for f in info.get("stablehlo", {}).get("files", {}).values()
                        for p in f["platforms"]})
    out += [f"JAX without this library (`jax.export`, written by JAX "
            f"{info.get('stablehlo', {}).get('jax')}, lowered for {', '.join(platforms)}):",
            "", "```python", "import numpy as np",
            "from jax import export  # JAX >= 0.4.30",
            "policy = export.deserialize(open('policy.stablehlo', 'rb').read())",
            "q_values, action = policy.call(np.zeros((8, 84, 84, 4), np.uint8), "
            "np.zeros(8, np.int32))", "```", "",
            "**StableHLO compatibility is time-limited**: JAX guarantees that a serialized "
            "function runs for 6 months after it was written (backward compatibility) and "
            "that JAX up to 6 months older can read it. Re-export from the parameters after "
            "that window.", ""]
  if "params" in present:
    out += ["With scaled-ql (Orbax parameters, checked against backbone.json's SHA-256):",
            "", "```python", "import scaled_ql",
            "loaded = scaled_ql.load_backbone('.', with_heads=True)",
            "features = loaded.module.apply({'params': loaded.params}, obs)", "```", "",
            "Fine-tune on a new game: `python -m launch.finetune --backbone=PATH ...`.", ""]
  return out


def render(info: Mapping[str, Any], evaluation, config: Mapping[str, Any],
           present: set[str]) -> str:
  """The card's text for an artifact description, its run's evaluation (or None), the run's
  flat config and the files present."""
  arch = info["architecture"]
  name = f"scaled-ql-{arch['encoder']}" + (f"{arch['depth']}" if arch["encoder"] == "resnet"
                                            else "") + f"-step{info['step']}"
  scale = info["feature_scale"] or info["feature_dim"] ** 0.5
  games = info["games"]
  ds = info.get("dataset", {})
  lines = [_front_matter(info, evaluation, name), f"# {name}", "",
           "A multi-game Q-network backbone pre-trained on Atari 2600 games with offline "
           "reinforcement learning (Scaled Q-Learning, Kumar et al., ICLR 2023: a "
           "distributional TD loss plus a CQL penalty; this run's loss: "
           f"`{info['loss_kind']}`, CQL alpha {config.get('loss.cql_alpha', 'unknown')}), "
           "exported by `scaled-ql`'s `launch.export`.", "",
           "## Files", "", "| file | what |", "| --- | --- |"]
  lines += [f"| `{f}` | {what} |" for f, what in _FILES if f in present]
  lines += [""] + _loading_section(info, present)
  lines += ["## Architecture", "",
            f"- Encoder: {arch['encoder']}" + (f"-{arch['depth']}" if arch["encoder"] ==
                                              "resnet" else "") + f", width {arch['width']}; "
            f"learned spatial embedding ({arch['spatial_features']} features per channel); "
            f"dense projection to D = {info['feature_dim']}, ReLU, L2 normalization.",
            "- Input: uint8 [batch, 84, 84, 4] (4 stacked grayscale frames, oldest first), "
            "divided by 255 inside the network.",
            f"- Heads: one linear layer per game on the unit-norm features times "
            f"{scale:.6g}, {games_lib.MAX_ACTIONS} action slots x {info['num_atoms']} atoms; "
            f"loss `{info['loss_kind']}`, value support [{info['v_min']}, {info['v_max']}]. "
            f"Slot i of a game is its i-th minimal action (ALE ids in model.safetensors' "
            f"metadata); slots past its action count are illegal.",
            f"- Parameters: backbone {info['num_backbone_params']:,}; heads "
            f"{info['num_head_params']:,}" + ("" if info["has_heads"] else " (not exported)")
            + ".", "", "| head | game | legal actions |", "| ---: | --- | ---: |"]
  lines += [f"| {i} | {g['name']} | {g['num_actions']} |" for i, g in enumerate(games)]
  lines += ["", "## Training", "",
            f"- Data: `{ds.get('data_dir', 'unknown')}`, runs {ds.get('runs') or 'all'}, "
            f"checkpoint range {ds.get('checkpoint_range') or 'all'} (the paper's low-quality "
            f"split is the first 20% of each run, its near-optimal split all of it).",
            f"- {info['step']:,} gradient steps, batch {config.get('batch_size', 'unknown')}, "
            f"learning rate {config.get('optimizer.learning_rate', 'unknown')}, CQL alpha "
            f"{config.get('loss.cql_alpha', 'unknown')}, n-step "
            f"{config.get('loss.n_step', 'unknown')}.",
            f"- Source checkpoint: `{info.get('source')}`; JAX "
            f"{info.get('versions', {}).get('jax')}.", ""]
  lines += _evaluation_section(info, evaluation)
  lines += ["## Intended use", "",
            "Research: a pre-trained representation for fine-tuning Q-learning on unseen Atari "
            "games or game variants, and a greedy policy for the games above, played with the "
            "preprocessing above. Not for games outside the list (their head does not exist) "
            "nor for other observation pipelines.", "",
            "## Limits", "",
            "- The policy is only as good as the evaluation above says; an unevaluated export "
            "claims nothing. Small runs (few steps, few games) are for testing the pipeline.",
            "- Inputs must be preprocessed exactly as described (sticky actions, frame max, "
            "INTER_AREA resize, zero-padded stacks): other pipelines give other inputs.",
            "- ONNX and StableHLO are computed in float32; they match the JAX network to about "
            "1e-5 (tested to 1e-4 and 1e-5), so near-ties between actions can flip.",
            "- License: none chosen yet for these weights (`license: other`); Atari ROMs "
            "have their own terms.", "",
            "## Citation", "", "```bibtex", CITATION, "```", ""]
  return "\n".join(lines)


def write(out_dir: str, info: Mapping[str, Any], evaluation, config: Mapping[str, Any]) -> None:
  """Writes README.md into out_dir (after the other files, which it lists)."""
  present = set(os.listdir(out_dir)) | {"backbone.json"}
  with open(os.path.join(out_dir, FILE), "w") as f:
    f.write(render(info, evaluation, config, present))

