"""JAX-native text games of the ORBIT suite (gymnax 1.0 API) and the multi-episode wrapper.

>>> from metarl_jax import envs
>>> env, params = envs.make("game:GuessTheNumber-v0-hard")
>>> trial, params = envs.make_trial("game:GuessTheNumber-v0-hard")  # 3 x 7 steps of one secret
"""

from metarl_jax.envs.base import FORMAT_ERROR, LOST, OUT_OF_TURNS, RUNNING, WON, TextEnv, TextEnvParams, TextEnvState
from metarl_jax.envs.multi_episode import MultiEpisode, TrialState
from metarl_jax.envs.registry import EnvSpec, UnknownEnvError, env_class, make, make_trial, register, registered, spec

__all__ = [
    "FORMAT_ERROR", "LOST", "OUT_OF_TURNS", "RUNNING", "WON",
    "TextEnv", "TextEnvParams", "TextEnvState", "MultiEpisode", "TrialState",
    "EnvSpec", "UnknownEnvError", "env_class", "make", "make_trial", "register", "registered", "spec",
]
