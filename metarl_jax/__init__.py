"""metarl_jax: cross-episode meta-reinforcement learning (ORBIT) in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["CrossEpisodeMetaLearner", "InContextLearner"]


def __getattr__(name: str):
    """The two learners, imported on first use: importing the package (``python -m metarl_jax.main`` does) must not
    start JAX's backend, because ``jax.distributed.initialize`` has to run first in a multi-process job."""
    if name in __all__:
        from metarl_jax import learners

        return getattr(learners, name)
    raise AttributeError(f"module 'metarl_jax' has no attribute {name!r}")
