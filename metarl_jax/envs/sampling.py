"""Rejection sampling inside ``jit``: draw proposals until one is accepted."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def rejection_sample(key: jax.Array, propose: Callable[[jax.Array], tuple[Any, jax.Array]]) -> tuple[Any, jax.Array]:
    """Calls ``propose(key) -> (value, accepted bool[])`` with fresh keys until accepted.

    Returns ``(value, tries int32[])``. Under ``vmap`` the loop runs until every element is accepted, so
    proposals should be accepted often.
    """

    def body(carry):
        key, _, _, tries = carry
        key, k = jax.random.split(key)
        value, ok = propose(k)
        return key, value, ok, tries + 1

    key, k = jax.random.split(key)
    value, ok = propose(k)
    _, value, _, tries = jax.lax.while_loop(lambda c: ~c[2], body, (key, value, ok, jnp.ones((), jnp.int32)))
    return value, tries
