"""scaled-ql: offline multi-game Q-learning at scale (Scaled Q-Learning, Kumar et al. 2023).

The pins are one working set (see BUILD_NOTES.md for why each one): Reverb 0.14 needs
TensorFlow 2.15, which needs numpy<2 and ml-dtypes 0.3-era wheels, which caps JAX at 0.4.34.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # JAX stack (CPU by default; see BUILD_NOTES.md for the cuda12 / tpu extras).
    "jax==0.4.34",
    "jaxlib==0.4.34",
    "flax==0.10.4",
    "optax==0.2.5",
    "orbax-checkpoint==0.11.0",  # 0.11.1+ need a coordination-service call jaxlib 0.4.34 lacks.
    "chex==0.1.90",
    "ml-collections>=0.1.1",
    "absl-py>=2.1",
    "numpy>=1.26,<2",
    # TensorFlow is used for data (TFDS/RLDS) and Reverb only, never for compute.
    "tensorflow-cpu==2.15.1",
    "dm-reverb==0.14.0",
    "tensorflow-datasets==4.9.10",
    "tensorflow-metadata<1.18",  # 1.18+ needs protobuf 5; TF 2.15 holds protobuf 4.
    "pyarrow<21",  # TFDS imports pyarrow; 21+ needs numpy 2, TF 2.15 needs numpy 1.
    "importlib_resources",  # needed to prepare (write) TFDS datasets.
    # Emulator.
    "gymnasium>=1.0,<1.3",
    "ale-py==0.12.1",  # ships the ROMs: no download at run time.
    # Evaluation and reports.
    "rliable==1.2.0",
    "pandas>=2.1,<3",  # rliable -> arch breaks under pandas 3.
    "matplotlib>=3.8",
    "clu==0.0.12",
    "tensorboard>=2.15,<2.16",
    "tqdm>=4.66",
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5"],
    # Accelerator builds of the same JAX version; install on top of the base set.
    "cuda12": ["jax[cuda12]==0.4.34"],
    "tpu": ["jax[tpu]==0.4.34"],
}

setup(
    name="scaled-ql",
    version="0.1.0",
    description="Pre-training generalist Atari agents with offline Q-learning (Scaled QL) in JAX/Flax.",
    packages=find_packages(include=["scaled_ql", "scaled_ql.*", "launch"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
