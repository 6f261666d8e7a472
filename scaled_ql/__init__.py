"""scaled-ql: pre-training generalist Atari agents with offline Q-learning (Scaled QL)."""
import jax as _jax

# Random numbers that do not depend on how an array is sharded: a model initialised on 1 device
# and on a (data, model) mesh of 8 gets the same parameters, so runs are comparable across
# device counts and restarts on other meshes. (JAX's default from 0.5.0 on.)
_jax.config.update("jax_threefry_partitionable", True)
