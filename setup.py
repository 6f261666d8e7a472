"""scaled-ql: offline multi-game Q-learning at scale (Scaled Q-Learning, Kumar et al. 2023).

Ranges, not one stack. Two stacks are tested (BUILD_NOTES.md, "Two stacks"):
- pinned: `pip install -c constraints/pinned.txt -e '.[data,online,test,export]'` on Python 3.11,
  the only one with online fine-tuning's Reverb backend (Reverb 0.14 needs TensorFlow 2.15,
  which holds numpy below 2 and so JAX at 0.4.34); the local backend runs on both. The
  constraints file says why each pin is what it is.
- current: `pip install -e '.[data,test]'` on Python 3.12: today's JAX, flax, optax, Orbax,
  numpy 2 and TensorFlow/TFDS (for RLDS data only). Accelerators add `jax[cuda12]`,
  `jax[cuda13]` or `jax[tpu]` (extras below).
The core needs no TensorFlow: in-memory or emulator data, reading RLDS datasets (ours and
prepared rlu_atari* folders), training, evaluation and export run without the `data` extra.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # JAX stack: CPU by default; the cuda12 / cuda13 / tpu extras add accelerator builds.
    "jax>=0.4.34",
    "jaxlib>=0.4.34",
    "flax>=0.10.4",
    "optax>=0.2.5",
    # 0.11.1-0.11.5 fail multi-process saves on jaxlib 0.4.34 (constraints/pinned.txt).
    "orbax-checkpoint>=0.11.0",
    "chex>=0.1.90",
    "numpy>=1.26",
    "ml-collections>=0.1.1",
    "absl-py>=2.1",
    # Emulator: ale-py ships the ROMs (no download at run time).
    "gymnasium>=1.0",
    "ale-py>=0.12.1",
    # Evaluation and reports: plots. (The CIs are rliable's bootstrap computed with numpy:
    # scaled_ql/evaluation/scores.py; rliable itself is a test requirement, to compare with.)
    "matplotlib>=3.8",
    # Metrics: TensorBoard event files without TensorFlow (tensorboardX), and TensorBoard to
    # read them.
    "tensorboard>=2.15",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    # Reading RLDS datasets without TensorFlow (scaled_ql.data.rlds.records): TFRecord's CRC32C
    # checks, and PNG frames other than our own unfiltered ones.
    "google-crc32c>=1.5",
    "pillow>=10",
]

EXTRAS_REQUIRE = {
    # Writing RLDS/TFDS datasets (ours, DQN Replay conversion), and reading folders whose TFDS
    # metadata is in an older layout (read by TFDS itself). Reading ours and prepared rlu_atari*
    # folders needs none of it (rlu_atari's PNG frames decode 5x faster with TensorFlow).
    "data": [
        "tensorflow-cpu>=2.15",  # data only, never compute: the CPU build takes no accelerator.
        "tensorflow-datasets>=4.9.4",
        "importlib_resources",  # preparing (writing) a TFDS dataset needs it.
    ],
    # Online fine-tuning's Reverb backend: Reverb 0.14 (its last release, Python <= 3.11) and its
    # TensorFlow. The local backend (the default) needs neither.
    "online": ["dm-reverb>=0.14.0", "tensorflow-cpu>=2.15,<2.16"],
    # rliable: tests/test_evaluation.py checks our bootstrap against it, bit for bit
    # (rliable -> arch breaks under pandas 3).
    "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "rliable>=1.2.0",
             "pandas>=2.1,<3"],
    # ONNX export (`launch.export`): jax2tf's graph mode, then tf2onnx. Graph mode is only in
    # JAX 0.4.x, so this works on the pinned stack alone (BUILD_NOTES.md, "Export formats");
    # elsewhere launch.export says so in one line and writes the other formats.
    "export": ["tf2onnx>=1.16", "onnx>=1.16", "tensorflow-cpu>=2.15"],
    # Accelerator builds of the installed JAX (today's releases; not with the pinned stack).
    "cuda12": ["jax[cuda12]"],
    "cuda13": ["jax[cuda13]"],
    "tpu": ["jax[tpu]"],
}

setup(
    name="scaled-ql",
    version="0.1.0",
    description="Pre-training generalist Atari agents with offline Q-learning (Scaled QL) in JAX/Flax.",
    # The library and its thin apps (`python -m launch.pretrain ...` from an installed wheel).
    # The config files live in the checkout's top-level configs/ and are installed as the
    # package `scaled_ql.configs` (one source of truth: no copy in scaled_ql/).
    packages=find_packages(include=["scaled_ql", "scaled_ql.*", "launch"]) + ["scaled_ql.configs"],
    package_dir={"scaled_ql.configs": "configs"},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
