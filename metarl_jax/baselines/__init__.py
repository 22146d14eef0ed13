"""Baseline policies.

Two kinds, both accepted by :func:`metarl_jax.evaluate.rollout` / :func:`~metarl_jax.evaluate.play_trials`:

* **stateless** policies ``policy(key, state) -> int32[]`` action index (:data:`POLICIES`: ``random``,
  ``oracle``). They work on a bare game state and on a multi-episode trial state alike (the env's
  ``valid_actions`` and ``oracle_action`` handle both);
* **online learners** (:class:`OnlinePolicy`: ``init`` / ``act`` / ``update`` over a fixed-shape memory pytree)
  that learn across the episodes of a trial (:data:`ONLINE_POLICIES`): ``ucb1`` and ``thompson`` (Bernoulli
  bandit, Rock Paper Scissors), ``opponent_counts`` (Rock Paper Scissors), ``q_learning`` (maze, FrozenLake),
  ``elimination`` and ``elimination_random`` (GuessTheNumber, Mastermind). Each supports some envs only:
  :func:`supported_envs` lists them, and building one for another env raises ``ValueError`` naming them.

>>> from metarl_jax import baselines, envs
>>> trial, params = envs.make_trial("game:GuessTheNumber-v0-hard")
>>> policy = baselines.make_policy("elimination", trial)  # or "random", "oracle", ...
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metarl_jax.baselines import bandits, hypotheses, tabular
from metarl_jax.baselines.bandits import opponent_counts, thompson, ucb1
from metarl_jax.baselines.hypotheses import elimination, elimination_random
from metarl_jax.baselines.online import OnlinePolicy, Transition, as_online, envs_supporting, transition
from metarl_jax.baselines.tabular import q_learning

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
"""Stateless policies: name -> ``factory(env) -> policy(key, state)``; every env is supported."""

ONLINE_POLICIES = {
    "ucb1": ucb1,
    "thompson": thompson,
    "opponent_counts": opponent_counts,
    "q_learning": q_learning,
    "elimination": elimination,
    "elimination_random": elimination_random,
}
"""Online learners: name -> ``factory(env, **kwargs) -> OnlinePolicy`` (ValueError on an unsupported env)."""

_SUPPORTS = {**bandits.SUPPORTS, **tabular.SUPPORTS, **hypotheses.SUPPORTS}


def policy_names() -> list[str]:
    """Every baseline name: the stateless policies, then the online learners."""
    return [*POLICIES, *ONLINE_POLICIES]


def supported_envs(name: str) -> list[str]:
    """The registered env ids the named baseline can play (every env for the stateless ones)."""
    from metarl_jax import envs

    if name in POLICIES:
        return envs.registered()
    if name in ONLINE_POLICIES:
        return envs_supporting(_SUPPORTS[name])
    raise ValueError(f"unknown policy {name!r}; choose from {policy_names()}")


def supports(name: str, env) -> bool:
    """Whether the named baseline can play ``env`` (a trial env or a bare game)."""
    if name in POLICIES:
        return True
    if name in ONLINE_POLICIES:
        from metarl_jax.baselines.online import game_env

        return isinstance(game_env(env), _SUPPORTS[name])
    raise ValueError(f"unknown policy {name!r}; choose from {policy_names()}")


def make_policy(name: str, env, **kwargs):
    """The named baseline for ``env``: a stateless ``policy(key, state)`` or an :class:`OnlinePolicy`.

    ``kwargs`` go to an online learner's factory (e.g. ``q_learning(env, gamma=0.95)``). Raises ``ValueError``
    for an unknown name or an env the learner does not support (naming the supported envs).
    """
    if name in POLICIES:
        if kwargs:
            raise TypeError(f"the {name!r} policy takes no options, got {sorted(kwargs)}")
        return POLICIES[name](env)
    if name in ONLINE_POLICIES:
        return ONLINE_POLICIES[name](env, **kwargs)
    raise ValueError(f"unknown policy {name!r}; choose from {policy_names()}")


__all__ = [
    "ONLINE_POLICIES",
    "POLICIES",
    "OnlinePolicy",
    "Policy",
    "Transition",
    "as_online",
    "elimination",
    "elimination_random",
    "make_policy",
    "opponent_counts",
    "oracle_policy",
    "policy_names",
    "q_learning",
    "random_policy",
    "supported_envs",
    "supports",
    "thompson",
    "transition",
    "ucb1",
]
