"""Tabular Q-learning with optimistic initialisation for grid games (``maze``, ``maze-goal-shown``,
``FrozenLake-misc``).

The learner's state is the agent's position (shown in every observation: "You are at (r, c)"), so the table
persists across the episodes of a trial, whose map is fixed. Actions that the observation shows to be
impossible (a wall next to the agent in the maze, the lake's edge in FrozenLake) are masked with the env's
``valid_actions``, which depends only on what the observation tells.

Update. After each step with shown feedback, the one-step Q-learning update
``Q[s, a] += alpha * (r + gamma * max_a' Q[s', a'] * (1 - terminal) - Q[s, a])`` with ``r`` = 1 on reaching
the goal (else 0) and ``terminal`` for the goal or a hole; moves whose outcome is not shown (the last turn of an
episode that runs out of turns) are not learned from. With ``replay_sweeps > 0`` the learner also replays every
transition seen so far in the trial (the last outcome of each (s, a), a deterministic model: Dyna-Q) that many
times per step, synchronously, which carries the goal's value back along a found route within one episode;
``replay_sweeps=0`` is plain one-step Q-learning. In a maze every move is reversible (walls stand between cells,
and nothing else happens on a move), so a move from ``s`` to another cell ``s'`` also records the opposite move
from ``s'`` back to ``s`` (reward 0) without trying it: the learner then prefers untried corridors to the way
back, which turns its exploration into a depth-first search. (Not in FrozenLake, whose ice may be slippery.)

Optimism (``init``). With reward 1 on entering the goal, the true value of a move is ``gamma ** (n - 1)`` for a
route of ``n`` moves, or 0. Two optimistic initialisations:

* ``"goal_distance"`` (the default where the goal's position is shown): ``Q0[s, a] = gamma ** manhattan(s + a,
  goal)``, an upper bound of the true value (no route is shorter than the Manhattan distance) that uses the
  goal's position, which ``maze-goal-shown`` and FrozenLake show in their opening observation (read once, by
  ``init``, from the reset state). The learner heads for the goal as if the unseen map were open, and each hole
  or dead end it meets lowers the values that led there, so later episodes route around them (Korf's LRTA* is
  the same idea with a planner).
* ``"constant"`` (the default for ``maze``, which never tells where the goal is, so ``"goal_distance"`` is
  refused there): every (s, a) starts at ``q0``, by default ``gamma ** max_turns``: above the value of every
  move not yet seen to lead to the goal (0) and below the value ``gamma ** (k - 1)`` of a known route of
  ``k <= max_turns`` moves, so the learner explores the nearest untried moves until it has found a route that
  fits in an episode, and then takes it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metarl_jax.baselines.online import OnlinePolicy, argmax_random, current_game, game_env, require, transition
from metarl_jax.envs.base import LOST, WON
from metarl_jax.envs.frozen_lake import DELTAS as LAKE_DELTAS
from metarl_jax.envs.frozen_lake import GOAL, FrozenLakeText
from metarl_jax.envs.frozen_lake import SIDE as LAKE_SIDE
from metarl_jax.envs.maze import Maze
from metarl_jax.envs.maze_layouts import DELTAS as MAZE_DELTAS
from metarl_jax.envs.maze_layouts import SIZE as MAZE_SIZE

SUPPORTS = {"q_learning": (Maze, FrozenLakeText)}


class QMemory(NamedTuple):
    """Memory of the Q-learner (S positions, A actions).

    Attributes:
      q: float32[S, A], action values.
      valid: bool[S, A], actions the observation allowed at each position (all True until visited).
      known: bool[S, A], (s, a) pairs whose outcome has been seen.
      next_s: int32[S, A], the position each seen (s, a) led to (last seen).
      reward: float32[S, A], its reward.
      terminal: bool[S, A], whether it ended the episode (goal or hole).
    """

    q: jax.Array
    valid: jax.Array
    known: jax.Array
    next_s: jax.Array
    reward: jax.Array
    terminal: jax.Array


INITS = ("goal_distance", "constant")
_OPPOSITE = jnp.asarray([1, 0, 3, 2], jnp.int32)  # down, up, right, left: the move that undoes each maze move


def shows_goal(game) -> bool:
    """Whether the grid game's opening observation tells the goal's position."""
    return game.show_goal if isinstance(game, Maze) else True


def _grid(game):
    """``(side, position, goal, deltas)`` of a grid game: positions are ``row * side + col`` (int32[]); ``goal``
    reads the goal's (row, col) int32[2] from a game state (only for games whose opening shows it);
    ``deltas`` int32[A, 2] are the moves' (d_row, d_col)."""
    if isinstance(game, Maze):
        side = MAZE_SIZE
        position = lambda g: (g.game.pos[0] * side + g.game.pos[1]).astype(jnp.int32)
        goal = lambda g: g.task.goal.astype(jnp.int32)
        deltas = MAZE_DELTAS
    else:
        side = LAKE_SIDE
        position = lambda g: g.game.pos.astype(jnp.int32)
        goal = lambda g: jnp.stack(jnp.divmod(jnp.argmax(g.task.reshape(-1) == GOAL), side)).astype(jnp.int32)
        deltas = LAKE_DELTAS
    return side, position, goal, jnp.asarray(deltas, jnp.int32)


def q_learning(env, gamma: float = 0.9, alpha: float = 1.0, init: str | None = None, q0: float | None = None,
               replay_sweeps: int = 16) -> OnlinePolicy:
    """Tabular Q-learning with optimistic init (see the module docstring) for the mazes and ``FrozenLake-misc``.

    Args:
      env: the trial (or bare game) env.
      gamma: discount per move.
      alpha: learning rate (1.0 suits these deterministic games; lower it for slippery ice).
      init: ``"goal_distance"`` or ``"constant"`` optimistic initial values (see the module docstring); default
        ``"goal_distance"`` where the game shows the goal's position, else ``"constant"``.
      q0: with ``init="constant"``, the initial value of every (s, a); default ``gamma ** max_turns``.
      replay_sweeps: replays of the seen transitions per step (0 = plain one-step Q-learning).
    Memory: :class:`QMemory`. ``act`` is greedy in Q over the valid actions, ties broken at random.
    """
    require(env, "q_learning", SUPPORTS["q_learning"])
    game = game_env(env)
    init = ("goal_distance" if shows_goal(game) else "constant") if init is None else init
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "goal_distance" and not shows_goal(game):
        raise ValueError(f'init="goal_distance" needs the goal\'s position, which {game.env_id!r} never shows')
    if init == "goal_distance" and q0 is not None:
        raise ValueError('q0 applies to init="constant" only')
    side, position, goal_of, deltas = _grid(game)
    num_s, num_a = side * side, game.num_actions
    q0 = float(gamma ** game.default_max_turns if q0 is None else q0)
    cells = jnp.stack(jnp.divmod(jnp.arange(num_s), side), axis=1)  # int32[S, 2]

    def initial_q(g):
        """float32[S, A]: the optimistic initial values (``g``: the reset game state, whose opening is seen)."""
        if init == "constant":
            return jnp.full((num_s, num_a), q0, jnp.float32)
        target = cells[:, None, :] + deltas[None, :, :]  # [S, A, 2]
        return (gamma ** jnp.abs(target - goal_of(g)).sum(-1)).astype(jnp.float32)

    def init_fn(key, state):
        g = current_game(state)
        valid = jnp.ones((num_s, num_a), bool).at[position(g)].set(game.valid_actions(g))  # the start is seen
        return QMemory(
            q=initial_q(g), valid=valid,
            known=jnp.zeros((num_s, num_a), bool), next_s=jnp.zeros((num_s, num_a), jnp.int32),
            reward=jnp.zeros((num_s, num_a), jnp.float32), terminal=jnp.zeros((num_s, num_a), bool),
        )

    def best(q, valid):
        """float32[S]: max over the valid actions of each position."""
        return jnp.where(valid, q, -jnp.inf).max(axis=1)

    def act(key, memory, state):
        g = current_game(state)
        return argmax_random(key, memory.q[position(g)], game.valid_actions(g))

    def update(memory, state, action, reward, next_state):
        tr = transition(state, next_state)
        s, s2 = position(tr.before), position(tr.after)
        a = jnp.clip(action, 0, num_a - 1)
        r = (tr.after.status == WON).astype(jnp.float32)
        term = (tr.after.status == WON) | (tr.after.status == LOST)
        valid = memory.valid.at[s2].set(jnp.where(tr.shown, game.valid_actions(tr.after), memory.valid[s2]))
        target = jnp.where(term, r, r + gamma * best(memory.q, valid)[s2])
        q = memory.q.at[s, a].add(jnp.where(tr.shown, alpha * (target - memory.q[s, a]), 0.0))
        put = lambda table, value: table.at[s, a].set(jnp.where(tr.shown, value, table[s, a]))
        known, next_s = put(memory.known, True), put(memory.next_s, s2)
        rew, terminal = put(memory.reward, r), put(memory.terminal, term)
        if isinstance(game, Maze):  # the way back (see the module docstring)
            back = tr.shown & (s2 != s) & ~term
            b = _OPPOSITE[a]
            put_back = lambda table, value: table.at[s2, b].set(jnp.where(back, value, table[s2, b]))  # noqa: E731
            known, next_s = put_back(known, True), put_back(next_s, s)
            rew, terminal = put_back(rew, 0.0), put_back(terminal, False)

        def sweep(_, q):
            t = jnp.where(terminal, rew, rew + gamma * best(q, valid)[next_s])
            return jnp.where(known, q + alpha * (t - q), q)

        if replay_sweeps > 0:
            q = jax.lax.fori_loop(0, replay_sweeps, sweep, q)
        return QMemory(q=q, valid=valid, known=known, next_s=next_s, reward=rew, terminal=terminal)

    return OnlinePolicy(init_fn, act, update)
