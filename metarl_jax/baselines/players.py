"""Scripted players whose transcripts make a pretraining corpus (the imitation phase, ``config.pretrain``).

A pretrained LM starts ORBIT already able to play a game sensibly inside one episode; what ORBIT's RL adds is
the use of earlier episodes. :func:`episode_player` is the from-scratch model's stand-in for that prior: it
reasons within the current episode only, and plays every episode of a trial afresh, so its transcripts show
no learning across episodes. It is a stateless policy ``policy(key, state) -> int32[]`` (trial or bare game
states), so :func:`metarl_jax.evaluate.play_trials` measures it like any baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarl_jax.baselines.online import game_env
from metarl_jax.envs.base import implements_consistent_actions


def episode_player(env, noise: float = 0.0):
    """A player who guesses uniformly among the actions this episode's feedback has not ruled out
    (``env.consistent_actions``), and with probability ``noise`` uniformly among all valid actions instead.

    On GuessTheNumber-hard (1..50, 7 turns) it wins an episode with probability about 0.71 at ``noise=0``,
    0.55 at 0.25 and 0.46 at 0.4 (``tests/test_players.py`` measures it). Raises ``ValueError`` for a game
    whose env does not say which actions its feedback rules out.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must lie in [0, 1], got {noise}")
    game = game_env(env)
    if not implements_consistent_actions(type(game)):
        raise ValueError(f"{getattr(game, 'env_id', type(game).__name__)!r} does not say which actions its "
                         "feedback rules out (TextEnv.consistent_actions), so it has no scripted player")

    def policy(key, state):
        k_noise, k_pick = jax.random.split(key)
        valid = env.valid_actions(state)
        consistent = env.consistent_actions(state)
        mask = jnp.where((jax.random.uniform(k_noise) < noise) | ~consistent.any(), valid, consistent)
        return jax.random.categorical(k_pick, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)

    return policy
