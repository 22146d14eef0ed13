"""The stateful policy interface for online learners that learn across the episodes of a trial.

An :class:`OnlinePolicy` is a triple of pure functions over a *memory* pytree of fixed shapes (so it runs
under ``jit``, ``vmap`` and ``lax.scan``; all randomness comes from the keys passed in):

* ``init(key, state) -> memory``: the learner's memory at the start of a trial (``state`` is the reset state);
* ``act(key, memory, state) -> int32[]``: the action to take in ``state``;
* ``update(memory, state, action, reward, next_state) -> memory``: learn from one env step (``state`` and
  ``next_state`` are the states before and after ``env.step_env``; ``action`` int32[], ``reward`` float32[]).

For a :class:`~metarl_jax.envs.MultiEpisode` trial the memory is kept across episodes, which is the point:
the learner improves from episode to episode on the trial's fixed task. The learners read only what the
agent observes (feedback shown in the text), never the hidden task; :func:`transition` gives them the game
state right after the step (also when the wrapper has already started the next episode), and says whether
the step's feedback was shown at all.

A stateless ``policy(key, state) -> int32[]`` becomes an :class:`OnlinePolicy` with :func:`as_online` (empty
memory); :func:`metarl_jax.evaluate.rollout` accepts either kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metarl_jax.envs.base import FORMAT_ERROR, OUT_OF_TURNS, RUNNING, TextEnv, tree_select
from metarl_jax.envs.multi_episode import VIEW_BOUNDARY, VIEW_REFLECT, MultiEpisode, TrialState


class OnlinePolicy(NamedTuple):
    """A policy with memory (see the module docstring). Fields are pure functions:

    * ``init(key, state) -> memory``
    * ``act(key, memory, state) -> int32[]``
    * ``update(memory, state, action, reward, next_state) -> memory``
    """

    init: Callable[[jax.Array, Any], Any]
    act: Callable[[jax.Array, Any, Any], jax.Array]
    update: Callable[[Any, Any, jax.Array, jax.Array, Any], Any]


def as_online(policy) -> OnlinePolicy:
    """``policy`` itself if it is an :class:`OnlinePolicy`; a stateless ``policy(key, state)`` wrapped with an
    empty memory (``()``) otherwise. The wrapper calls ``policy`` with exactly the key it is given."""
    if isinstance(policy, OnlinePolicy):
        return policy
    if not callable(policy):
        raise TypeError(f"a policy is a callable policy(key, state) or an OnlinePolicy, got {type(policy).__name__}")
    return OnlinePolicy(
        init=lambda key, state: (),
        act=lambda key, memory, state: jnp.asarray(policy(key, state), jnp.int32),
        update=lambda memory, state, action, reward, next_state: memory,
    )


def game_env(env) -> TextEnv:
    """The game under a (possibly) multi-episode env."""
    return env.env if isinstance(env, MultiEpisode) else env


def current_game(state):
    """The game state the next action acts in (``state.inner`` of a trial state; a bare game state itself)."""
    return state.inner if isinstance(state, TrialState) else state


class Transition(NamedTuple):
    """One env step seen from the game: see :func:`transition`.

    Attributes:
      before: the game state the action acted in.
      after: the game state right after the action (the finished episode's terminal state when the step ended
        an episode, even though the trial has already reset the game for the next one).
      acted: bool[], the action was actually played (not a reflection turn, not a step after the trial's end)
        and was a well-formed action index.
      shown: bool[], ``acted`` and the step's feedback was shown to the agent. On the last turn of an episode
        that runs out of turns the game shows only "You have reached the maximum number of turns", so the
        outcome of that move (beyond "it did not win") is not observed.
    """

    before: Any
    after: Any
    acted: jax.Array
    shown: jax.Array


def transition(state, next_state) -> Transition:
    """Splits one ``env.step_env`` (trial or bare game states) into what the game saw; jit/vmap-safe."""
    if isinstance(state, TrialState):
        ended = (next_state.view == VIEW_BOUNDARY) | (next_state.view == VIEW_REFLECT)
        before = state.inner
        after = tree_select(ended, next_state.prev, next_state.inner)
        live = ~state.trial_done & (state.view != VIEW_REFLECT)
    else:
        before, after, live = state, next_state, jnp.ones((), bool)
    acted = live & (before.status == RUNNING) & (after.status != FORMAT_ERROR) & (after.last_action >= 0)
    return Transition(before=before, after=after, acted=acted, shown=acted & (after.status != OUT_OF_TURNS))


def argmax_random(key: jax.Array, values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``int32[]``: a uniformly random index among the maxima of ``values`` (float[A]) where ``mask`` (bool[A])
    holds; if no entry is allowed, a random index among the maxima of all ``values``."""
    values = jnp.asarray(values, jnp.float32)
    mask = jnp.ones(values.shape, bool) if mask is None else mask
    mask = jnp.where(mask.any(), mask, True)
    v = jnp.where(mask, values, -jnp.inf)
    best = mask & (v >= v.max())
    return jax.random.categorical(key, jnp.where(best, 0.0, -jnp.inf)).astype(jnp.int32)


def envs_supporting(classes) -> list[str]:
    """Registered env ids whose game class is (a subclass of) one of ``classes``."""
    import importlib

    from metarl_jax import envs

    out = []
    for env_id in envs.registered():
        module, name = envs.spec(env_id).entry_point.split(":")
        if issubclass(getattr(importlib.import_module(module), name), tuple(classes)):
            out.append(env_id)
    return out


def require(env, name: str, classes) -> None:
    """Raises ``ValueError`` naming the supported env ids unless ``env``'s game is one of ``classes``."""
    game = game_env(env)
    if not isinstance(game, tuple(classes)):
        raise ValueError(
            f"the {name!r} policy does not support {getattr(game, 'env_id', type(game).__name__)!r}; "
            f"supported envs: {', '.join(envs_supporting(classes))}"
        )
