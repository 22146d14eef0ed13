"""A mixture of games as one env: each row of a batch plays its own game, in one compiled program.

ORBIT draws the tasks of a training step from a shuffled mix of its games. Rolled out one game at a time, the
step holds one copy of the model's rollout and update per game, and its compile time grows with the number of
games. :class:`GameMixture` wraps G multi-episode trial envs (:class:`~metarl_jax.envs.MultiEpisode`) into one
env whose state carries a game index per row:

* a task is ``(game, each game's task)``: :meth:`GameMixture.sample_task` draws the task of the row's game
  from a :class:`MixtureKey` (a task key and its game), and fills the other games' slots with tasks of their
  own (never shown);
* the state holds every game's trial state; a step steps each game's state with the action mapped to that
  game's actions, and the row's reward, info and validity are its own game's (``jnp.where`` over the game
  index: under ``vmap`` every game's step runs for every row, which costs little beside the model);
* the action space is the union of the games' action texts, deduplicated: ``action_text(i)`` is the i-th
  distinct text, and a row's valid actions are those of its own game. The games' observation rendering is
  done by :class:`metarl_jax.text.codec.MixtureCodec`.

Every game keeps its own rules, turn limit and step cap; a trial of a game with a lower cap ends earlier.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def select_game(game, values):
    """``values[game]`` for same-shaped pytrees ``values`` (one per game) and int32 ``game`` whose shape is a
    prefix of the leaves' shapes (a scalar per row, or [B] over batched leaves)."""
    game = jnp.asarray(game)

    def one(*leaves):
        out = leaves[0]
        for g, leaf in enumerate(leaves[1:], start=1):
            flag = (game == g).reshape(game.shape + (1,) * (jnp.ndim(leaf) - game.ndim))
            out = jnp.where(flag, leaf, out)
        return out

    return jax.tree.map(one, *values)


@struct.dataclass
class MixtureKey:
    """A task key and the game it belongs to: key uint32[..., 2] (a ``jax.random`` key), game int32[...]."""

    key: jax.Array
    game: jax.Array

    @property
    def shape(self) -> tuple:
        return self.game.shape

    def __getitem__(self, index) -> "MixtureKey":
        return MixtureKey(key=self.key[index], game=self.game[index])


@struct.dataclass
class MixtureTask:
    """game: int32[], the row's game; tasks: one task per game (only ``tasks[game]`` is played)."""

    game: jax.Array
    tasks: tuple


@struct.dataclass
class MixtureState:
    """game: int32[], the row's game; states: one trial state per game (only ``states[game]`` is played)."""

    game: jax.Array
    states: tuple

    @property
    def trial_done(self) -> jax.Array:
        return select_game(self.game, [s.trial_done for s in self.states])

    @property
    def total_steps(self) -> jax.Array:
        return select_game(self.game, [s.total_steps for s in self.states])


class GameMixture:
    """G multi-episode trial envs played as one (see the module docstring).

    Args:
      envs: the games' :class:`~metarl_jax.envs.MultiEpisode` envs, in game-index order.
      names: optional names (default the envs' game ids).
    """

    def __init__(self, envs, names=None):
        if not envs:
            raise ValueError("a game mixture needs at least one game")
        self.envs = tuple(envs)
        self.names = tuple(names) if names is not None else tuple(e.env.env_id for e in self.envs)
        texts: list[str] = []
        index: dict[str, int] = {}
        for env in self.envs:
            for a in range(env.num_actions):
                if env.action_text(a) not in index:
                    index[env.action_text(a)] = len(texts)
                    texts.append(env.action_text(a))
        self._texts = texts
        # union_of[g][a]: the mixture's action of game g's action a; local[g][u]: game g's action of mixture action
        # u, or -1 (the game then sees a format error, which only happens to games the row does not play).
        self.union_of = tuple(jnp.asarray([index[e.action_text(a)] for a in range(e.num_actions)], jnp.int32)
                              for e in self.envs)
        local = np.full((len(self.envs), len(texts)), -1, np.int32)
        for g, env in enumerate(self.envs):
            for a in range(env.num_actions):
                local[g, index[env.action_text(a)]] = a
        self.local = jnp.asarray(local)

    # ------------------------------------------------------------------ description
    @property
    def num_games(self) -> int:
        return len(self.envs)

    @property
    def name(self) -> str:
        return f"GameMixture({', '.join(self.names)})"

    @property
    def default_params(self):
        return tuple(e.default_params for e in self.envs)

    @property
    def num_actions(self) -> int:
        return len(self._texts)

    def action_text(self, i: int) -> str:
        return self._texts[int(i)]

    @property
    def total_step_cap(self) -> int:
        """The largest step cap of the games (each game's trials end at their own cap)."""
        return max(e.total_step_cap for e in self.envs)

    @property
    def has_answer_action(self) -> bool:
        return all(e.has_answer_action for e in self.envs)

    # ------------------------------------------------------------------ dynamics
    def sample_task(self, key: MixtureKey, params) -> MixtureTask:
        return MixtureTask(game=jnp.asarray(key.game, jnp.int32),
                           tasks=tuple(e.sample_task(key.key, p) for e, p in zip(self.envs, params)))

    def reset_to_task(self, key, task: MixtureTask, params):
        states = tuple(e.reset_to_task(key, t, p)[1] for e, t, p in zip(self.envs, task.tasks, params))
        return None, MixtureState(game=task.game, states=states)

    def step_env(self, key, state: MixtureState, action, params):
        """Steps every game's state (each with ``action`` as that game's action); returns the row's game's reward
        and info. The observation is None: the codec renders it from the state."""
        action = jnp.asarray(action, jnp.int32)
        outs = []
        for g, (env, s, p) in enumerate(zip(self.envs, state.states, params)):
            mine = jnp.where((action >= 0) & (action < self.num_actions), self.local[g][jnp.maximum(action, 0)], -1)
            outs.append(env.step_env(key, s, mine, p))
        new = MixtureState(game=state.game, states=tuple(o[1] for o in outs))
        reward = select_game(state.game, [o[2] for o in outs])
        done = select_game(state.game, [o[3] for o in outs])
        info = select_game(state.game, [o[4] for o in outs])
        return None, new, reward, done, info

    def valid_actions(self, state: MixtureState) -> jax.Array:
        """bool[num_actions]: the valid actions of the row's game, as mixture actions."""
        masks = [jnp.zeros((self.num_actions,), bool).at[u].set(e.valid_actions(s))
                 for e, s, u in zip(self.envs, state.states, self.union_of)]
        return select_game(state.game, masks)

    def answer_action(self, task: MixtureTask) -> jax.Array:
        """int32[]: the row's game's answer action, as a mixture action."""
        return select_game(task.game, [u[e.answer_action(t)] for e, t, u in zip(self.envs, task.tasks, self.union_of)])

    def render_text(self, state: Any) -> str:
        """Host-side reference text of one (unbatched) state's observation."""
        return self.envs[int(state.game)].render_text(state.states[int(state.game)])

    def __repr__(self) -> str:
        return self.name
