"""metarl_jax: cross-episode meta-reinforcement learning (ORBIT) in JAX/Flax."""

__version__ = "0.1.0"

from metarl_jax.learners import CrossEpisodeMetaLearner, InContextLearner  # noqa: E402

__all__ = ["CrossEpisodeMetaLearner", "InContextLearner"]
