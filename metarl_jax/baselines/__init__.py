"""Baseline policies. A policy is a pure function ``policy(key, state) -> int32[]`` action index.

They work on a bare game state and on a multi-episode trial state alike (the env's ``valid_actions`` and
``oracle_action`` handle both).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Policy = Callable[[jax.Array, object], jax.Array]


def random_policy(env) -> Policy:
    """Uniform over the env's valid actions (e.g. numbers not yet guessed this episode)."""

    def policy(key, state):
        mask = env.valid_actions(state)
        return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)

    return policy


def oracle_policy(env) -> Policy:
    """The game's oracle (optimal or strong play that may read the hidden task)."""
    return lambda key, state: jnp.asarray(env.oracle_action(key, state), jnp.int32)


POLICIES = {"random": random_policy, "oracle": oracle_policy}
