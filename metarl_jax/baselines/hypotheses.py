"""Consistent-hypothesis elimination for GuessTheNumber and Mastermind.

The learner keeps, as a boolean mask over every possible secret, the secrets consistent with ALL the feedback
seen so far in the trial, across episodes (the secret is fixed for the trial), and guesses one of them.
Feedback used is only what the observation shows:

* GuessTheNumber: "higher" / "lower" (``game.feedback``) and a win; on the last turn of an episode that runs
  out of turns the game only says so, which tells that the guess was wrong and nothing more.
* Mastermind: the black and white pegs of a guess (``game.black``, ``game.white``), unless the guess was a
  repeat; a win; and, on a last turn that runs out of turns, only that the guess was wrong.

Which consistent secret to guess (``choice``):
* ``"middle"``: the median of the consistent numbers (GuessTheNumber's default: binary search);
* ``"first"``: the lowest consistent secret (Mastermind's default, the classic "first consistent code");
* ``"random"``: a uniformly random consistent secret.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metarl_jax.baselines.online import OnlinePolicy, current_game, game_env, require, transition
from metarl_jax.envs.base import WON
from metarl_jax.envs.guess_the_number import GuessTheNumber
from metarl_jax.envs.mastermind import Mastermind, pegs

_HIGHER, _LOWER = 1, 2  # GuessTheNumber feedback codes
CHOICES = ("middle", "first", "random")
SUPPORTS = {"elimination": (GuessTheNumber, Mastermind), "elimination_random": (GuessTheNumber, Mastermind)}


class Hypotheses(NamedTuple):
    """``consistent`` bool[H]: the secrets (GuessTheNumber: numbers low..high; Mastermind: ``env.codes``)
    consistent with every piece of feedback seen so far in the trial."""

    consistent: jax.Array


def _pick(key, mask, choice: str) -> jax.Array:
    """int32[]: an index where ``mask`` (bool[H], non-empty) holds, by ``choice``."""
    if choice == "first":
        return jnp.argmax(mask).astype(jnp.int32)
    if choice == "random":
        return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
    rank = (mask.sum() - 1) // 2  # the lower median
    return jnp.argmax(mask & (jnp.cumsum(mask) == rank + 1)).astype(jnp.int32)


def elimination(env, choice: str | None = None) -> OnlinePolicy:
    """Consistent-hypothesis elimination (see the module docstring) for GuessTheNumber and Mastermind.

    Args:
      env: the trial (or bare game) env.
      choice: ``"middle"``, ``"first"`` or ``"random"``; default ``"middle"`` for GuessTheNumber and
        ``"first"`` for Mastermind.
    Memory: :class:`Hypotheses` (bool[H], H = the number of possible secrets: ``high - low + 1`` or
    ``env.num_codes``). Guesses are restricted to the env's ``valid_actions`` (not guessed this episode).
    """
    require(env, "elimination", SUPPORTS["elimination"])
    game = game_env(env)
    gtn = isinstance(game, GuessTheNumber)
    choice = ("middle" if gtn else "first") if choice is None else choice
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")

    if gtn:
        num = game.high - game.low + 1
        action_of = jnp.arange(num, dtype=jnp.int32)  # action i guesses low + i, secret index i

        def consistent_with(mask, tr, a):
            idx = jnp.arange(num)
            fb = tr.after.game.feedback
            mask = jnp.where(tr.shown & (fb == _HIGHER), mask & (idx > a), mask)
            return jnp.where(tr.shown & (fb == _LOWER), mask & (idx < a), mask)
    else:
        num = game.num_codes
        codes, guesses = jnp.asarray(game.codes), jnp.asarray(game.guesses)
        action_of = jnp.asarray(game.code_actions)

        def consistent_with(mask, tr, a):
            black, white = pegs(guesses[a][None, :], codes, game.num_digits)  # [H], [H]
            agree = (black == tr.after.game.black) & (white == tr.after.game.white)
            return jnp.where(tr.shown & ~tr.after.game.repeated, mask & agree, mask)

    def init(key, state):
        return Hypotheses(consistent=jnp.ones((num,), bool))

    def act(key, memory, state):
        g = current_game(state)
        valid = game.valid_actions(g)
        allowed = memory.consistent & valid[action_of]
        guess = action_of[_pick(key, allowed, choice)]
        # Never happens when the feedback is read right (the secret stays consistent and unguessed); a guard.
        fallback = jax.random.categorical(key, jnp.where(valid, 0.0, -jnp.inf)).astype(jnp.int32)
        return jnp.where(allowed.any(), guess, fallback).astype(jnp.int32)

    def update(memory, state, action, reward, next_state):
        tr = transition(state, next_state)
        a = jnp.clip(action, 0, game.num_actions - 1)
        is_guess = action_of == a  # bool[H]: the secret this action names
        won = tr.acted & (tr.after.status == WON)
        mask = consistent_with(memory.consistent, tr, a)
        mask = jnp.where(tr.acted & ~won, mask & ~is_guess, mask)  # a guess that did not win is not the secret
        mask = jnp.where(won, is_guess, mask)
        return Hypotheses(consistent=mask)

    return OnlinePolicy(init, act, update)


def elimination_random(env) -> OnlinePolicy:
    """:func:`elimination` with ``choice="random"``: a uniformly random consistent secret each turn."""
    require(env, "elimination_random", SUPPORTS["elimination_random"])
    return elimination(env, choice="random")
