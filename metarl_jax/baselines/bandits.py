"""Bandit-style online learners: UCB1 and Thompson sampling (Bernoulli bandit, Rock Paper Scissors) and the
opponent-count best response (Rock Paper Scissors).

What they observe:
* ``BernoulliBandit-misc``: after each pull, whether it paid (``game.paid``, shown as "it paid 1 / nothing").
  Arms are the actions; the reward of a pull is its payout.
* ``rockpaperscissors`` (and ``rockpaperscissors-verbose``): after each round, the round's result ("You win /
  lose this round", "This round is a draw"). Together with the learner's own move it gives the opponent's move
  (:func:`~metarl_jax.envs.rock_paper_scissors.opponent_move`; the verbose variant also names it). UCB1 treats
  the three moves as arms with reward 1 for a won round (0 for a draw or a loss); Thompson sampling and the
  opponent-count learner model the opponent's move distribution from the moves inferred (never from the hidden
  task) and play its best response: the move that beats the opponent's most likely (sampled, for Thompson)
  move, i.e. the move with the highest win probability.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metarl_jax.baselines.online import OnlinePolicy, argmax_random, current_game, game_env, require, transition
from metarl_jax.envs.bandit import BernoulliBanditText
from metarl_jax.envs.rock_paper_scissors import RockPaperScissors, opponent_move

_RPS_WIN = 0  # RockPaperScissorsGame.result code of a won round


class ArmStats(NamedTuple):
    """Per-arm statistics of a bandit learner: ``counts`` float32[A] pulls, ``sums`` float32[A] total reward."""

    counts: jax.Array
    sums: jax.Array


class OpponentCounts(NamedTuple):
    """``counts`` float32[3]: the opponent's rock / paper / scissors moves seen so far in the trial."""

    counts: jax.Array


def _pull_reward(game, tr) -> jax.Array:
    """float32[]: the observed reward of the pull in ``tr`` (payout for the bandit, a won round for RPS)."""
    if isinstance(game, BernoulliBanditText):
        return tr.after.game.paid.astype(jnp.float32)
    return (tr.after.game.result == _RPS_WIN).astype(jnp.float32)


def _arm_learner(env, score_fn) -> OnlinePolicy:
    """An arm-statistics learner whose ``act`` picks the (random-tie) argmax of ``score_fn(key, stats)``."""
    game = game_env(env)
    num = game.num_actions

    def init(key, state):
        return ArmStats(counts=jnp.zeros((num,), jnp.float32), sums=jnp.zeros((num,), jnp.float32))

    def act(key, memory, state):
        k_score, k_tie = jax.random.split(key)
        return argmax_random(k_tie, score_fn(k_score, memory), game.valid_actions(current_game(state)))

    def update(memory, state, action, reward, next_state):
        tr = transition(state, next_state)
        hit = jax.nn.one_hot(jnp.clip(action, 0, num - 1), num) * tr.shown
        return ArmStats(counts=memory.counts + hit, sums=memory.sums + hit * _pull_reward(game, tr))

    return OnlinePolicy(init, act, update)


SUPPORTS = {
    "ucb1": (BernoulliBanditText, RockPaperScissors),
    "thompson": (BernoulliBanditText, RockPaperScissors),
    "opponent_counts": (RockPaperScissors,),
}


def ucb1(env, c: float = 1.0) -> OnlinePolicy:
    """UCB1 (Auer et al. 2002): pull every arm once, then the arm maximizing
    ``mean + c * sqrt(2 ln n / n_a)`` (n pulls in all, n_a of arm a), ties broken at random.

    Supports the Bernoulli bandit (arms = actions, reward = payout) and RPS (arms = moves, reward = won round).
    Memory: :class:`ArmStats` (float32[A] twice).
    """
    require(env, "ucb1", SUPPORTS["ucb1"])

    def score(key, m):
        n = jnp.maximum(m.counts.sum(), 1.0)
        pulls = jnp.maximum(m.counts, 1.0)
        ucb = m.sums / pulls + c * jnp.sqrt(2.0 * jnp.log(n) / pulls)
        return jnp.where(m.counts == 0, jnp.inf, ucb)

    return _arm_learner(env, score)


def thompson(env) -> OnlinePolicy:
    """Thompson sampling.

    * Bernoulli bandit: a Beta(1 + successes, 1 + failures) posterior per arm; pull the arm of the highest
      sampled mean. Memory: :class:`ArmStats`.
    * Rock Paper Scissors: a Dirichlet(1 + counts) posterior over the opponent's move distribution; sample one
      and play the move with the highest win probability under it. Memory: :class:`OpponentCounts`.
    """
    require(env, "thompson", SUPPORTS["thompson"])
    if isinstance(game_env(env), RockPaperScissors):
        return _rps_learner(env, lambda key, counts: jax.random.dirichlet(key, 1.0 + counts))

    def score(key, m):
        return jax.random.beta(key, 1.0 + m.sums, 1.0 + m.counts - m.sums)

    return _arm_learner(env, score)


def opponent_counts(env) -> OnlinePolicy:
    """Rock Paper Scissors: count the opponent's moves seen across the trial and play the best response to the
    empirical distribution (the move that beats the most frequent move; ties at random, so the first round
    is uniform). Memory: :class:`OpponentCounts`."""
    require(env, "opponent_counts", SUPPORTS["opponent_counts"])
    return _rps_learner(env, lambda key, counts: counts)


def _rps_learner(env, belief_fn) -> OnlinePolicy:
    """An RPS learner over opponent move counts; ``belief_fn(key, counts float32[3]) -> float32[3]`` gives the
    (unnormalized) opponent move probabilities to best-respond to."""
    game = game_env(env)

    def init(key, state):
        return OpponentCounts(counts=jnp.zeros((3,), jnp.float32))

    def act(key, memory, state):
        k_belief, k_tie = jax.random.split(key)
        p = belief_fn(k_belief, memory.counts)
        # Move m is beaten by (m + 1) % 3, so move a wins against opponent move (a - 1) % 3: roll by one.
        return argmax_random(k_tie, jnp.roll(p, 1), game.valid_actions(current_game(state)))

    def update(memory, state, action, reward, next_state):
        tr = transition(state, next_state)
        seen = jax.nn.one_hot(opponent_move(tr.after.last_action, tr.after.game.result), 3) * tr.shown
        return OpponentCounts(counts=memory.counts + seen)

    return OnlinePolicy(init, act, update)
