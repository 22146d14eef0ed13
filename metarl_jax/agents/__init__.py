"""The in-context learner's decoding: action token tables and constrained decoding."""

from metarl_jax.agents.actions import ActionTable, DecodeState, constrained_step

__all__ = ["ActionTable", "DecodeState", "constrained_step"]
