"""Shared test utilities: ad-hoc tokenizers, batched rollouts of policies, render checks."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.text.tokenizers import SPECIAL_TOKENS, WordTokenizer, split_words


def adhoc_word_tokenizer(env) -> WordTokenizer:
    """A word tokenizer whose vocabulary is exactly the words of ``env``'s pieces and action texts."""
    words = {w for p in env.pieces for w in split_words(p)}
    words |= {w for i in range(env.num_actions) for w in split_words(env.action_text(i))}
    return WordTokenizer(list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS)))


def index_tree(tree, i):
    """The i-th element of a batched pytree, as numpy."""
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def random_valid_policy(env):
    """``policy(key, state) -> action``: uniform over ``env.valid_actions(state)``."""

    def policy(key, state):
        mask = env.valid_actions(state)
        return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)

    return policy


def run_trials(env, params, policy, key, num: int, steps: int):
    """Runs ``num`` independent trials/episodes of ``env`` for ``steps`` steps with ``policy(key, state)``.

    Uses ``env.reset`` then ``env.step_env`` (no auto-reset) under ``jit(vmap(scan))``.
    Returns ``(final_states, infos, rewards)``; ``infos`` and ``rewards`` are stacked ``[steps, num]``.
    """

    @jax.jit
    def run(key):
        def one(key):
            key, k0 = jax.random.split(key)
            _, state = env.reset(k0, params)

            def body(carry, _):
                key, state = carry
                key, k_act, k_step = jax.random.split(key, 3)
                action = policy(k_act, state)
                _, state, reward, _, info = env.step_env(k_step, state, action, params)
                return (key, state), (info, reward)

            (_, state), (infos, rewards) = jax.lax.scan(body, (key, state), None, length=steps)
            return state, infos, rewards

        final, infos, rewards = jax.vmap(one)(jax.random.split(key, num))
        swap = partial(jnp.swapaxes, axis1=0, axis2=1)
        return final, jax.tree.map(swap, infos), swap(rewards)

    return run(key)


def binomial_tolerance(p: float, n: int, sigmas: float = 4.0) -> float:
    """A ``sigmas``-standard-error band for an empirical rate of ``n`` Bernoulli(p) samples."""
    return sigmas * float(np.sqrt(max(p * (1 - p), 1e-4) / n))
