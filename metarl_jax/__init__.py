"""metarl_jax: cross-episode meta-reinforcement learning (ORBIT) in JAX/Flax."""

__version__ = "0.1.0"
