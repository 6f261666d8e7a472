"""Prints the versions an environment resolved (`make test` shows one line per stack)."""
import importlib.metadata
import platform
import sys

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy",
            "tensorflow-cpu", "tensorflow", "tensorflow-datasets", "dm-reverb", "ale-py")


def main() -> None:
  found = {}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  label = sys.argv[1] if len(sys.argv) > 1 else "stack"
  print(f"{label}: python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)


if __name__ == "__main__":
  main()
