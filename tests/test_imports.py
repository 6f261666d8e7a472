"""What the core imports: no TensorFlow for in-memory or emulator data, and the learner, the
sampler and the greedy policy with only JAX, flax, optax, Orbax, chex, numpy and absl (a GPU
image as it comes: no TensorFlow, TFDS, Reverb, ale-py, ml_collections, tqdm, rliable)."""
import subprocess
import sys

# Modules a bare accelerator image lacks; the blocker makes importing them fail.
ABSENT_ON_GPU_IMAGE = ("tensorflow", "tensorflow_datasets", "reverb", "ale_py", "gymnasium",
                       "ml_collections", "tqdm", "rliable", "pandas", "matplotlib", "clu",
                       "arch", "tensorboardX")

BLOCKER = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ImportError(f"{{name}} is blocked: not on the GPU image")
sys.meta_path.insert(0, _Absent())
"""


def _python(repo, code: str) -> str:
  done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                        timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_the_library_imports_no_tensorflow(repo):
  out = _python(repo, """
import sys
import scaled_ql, scaled_ql.learner, scaled_ql.envs, scaled_ql.networks, scaled_ql.losses
import scaled_ql.parallel, scaled_ql.checkpoints, scaled_ql.export, scaled_ql.games
import scaled_ql.data, scaled_ql.data.sampler, scaled_ql.data.rlds, scaled_ql.data.generate
import scaled_ql.data.dqn_replay, scaled_ql.evaluation, scaled_ql.evaluation.rollout
import scaled_ql.evaluation.restore, scaled_ql.evaluation.report
from scaled_ql.data import MultiGameSampler, read_episodes
from scaled_ql.evaluation import run_episodes, make_greedy_policy
print(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "tensorflow_datasets",
                                                        "reverb"}))
""")
  assert out.strip() == "[]"


def test_the_core_imports_on_a_bare_accelerator_image(repo):
  out = _python(repo, BLOCKER.format(blocked=ABSENT_ON_GPU_IMAGE) + """
import scaled_ql, scaled_ql.learner, scaled_ql.networks, scaled_ql.losses, scaled_ql.parallel
import scaled_ql.checkpoints, scaled_ql.export, scaled_ql.games
from scaled_ql.data import sampler, batch
from scaled_ql.evaluation import policy
print("ok")
""")
  assert out.strip() == "ok"
