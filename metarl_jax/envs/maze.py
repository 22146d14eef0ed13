"""Maze (ORBIT's held-out ``maze``), JAX-native.

Rules: the agent walks a grid maze from a start cell to a goal cell. Each turn it moves ``up`` (row - 1),
``down`` (row + 1), ``left`` (column - 1) or ``right`` (column + 1). Moving into a wall (or off the grid:
everything outside counts as a wall) costs the turn, leaves the agent in place and says so. The episode is
won on reaching the goal; running out of the ``max_turns`` (9) turns is a failure.

What the agent sees (``rules="orbit"``, the id ``maze``; ORBIT: XiaofengLin7/ORBIT envs/maze_env_adapter.py): the
opening tells the turn limit, the agent's position and what lies up/down/left/right of it (``wall``, ``open``
or ``the goal``). Every later turn tells the move's result, the new position and the new surroundings. Neither
the map, nor the grid's size, nor the goal's position is ever told: the goal shows only as a neighbour ("Right:
the goal"), so the first episode of a trial explores and later episodes can reuse the route found (the
meta-learning point).

The mazes are drawn by :mod:`metarl_jax.envs.maze_layouts` (ORBIT's branched corridor networks; the variant's
random walls).

Differences from ORBIT (both rule sets): the wording is ours; a bump repeats the position and surroundings
(ORBIT: "You hit the wall. Please choose another direction."), which the agent knew already; an answer that is
not one of the four moves is a format error that ends the episode, as in every env here (ORBIT: "Invalid
action", a wasted turn).

``text="terse"``: the opening is one line, and every observation is the position and what lies
up, down, left and right (`` 2 3 wall safe safe goal``; after a bump the same position again; `` reached the
goal`` on arrival): the same information as the sentences in about a third of the tokens.

Actions: ``up``, ``down``, ``left``, ``right`` (``\\boxed{up}``). Coordinates are 0-based, (row, column),
(0, 0) is the top-left cell (ORBIT's too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot
from metarl_jax.envs.maze_layouts import (DELTAS, SIZE, UNREACHED, MazeTask, grid_bfs, sample_branched_maze,
                                          sample_random_walls_maze)

DIRECTIONS = ("up", "down", "left", "right")
TERSE_KINDS = (" wall", " safe", " goal")  # text="terse": what lies next to the agent, by _WALL, _OPEN, _GOAL
RULES = ("orbit", "goal-shown")

# feedback codes
_NONE, _MOVED, _BUMPED, _REACHED = range(4)
# what lies next to the agent
_WALL, _OPEN, _GOAL = range(3)


@struct.dataclass
class MazeGame:
    pos: jax.Array  # int32[2], the agent's (row, col)
    feedback: jax.Array  # int32[], feedback code of the last turn


class Maze(TextEnv):
    """Find the way to a goal through an unseen maze (see the module docstring).

    Task: :class:`MazeTask`. Game: :class:`MazeGame`. Actions: 0 up, 1 down, 2 left, 3 right. ``rules``:
    ``"orbit"`` (branched maze, goal and grid size never told) or ``"goal-shown"`` (random walls; the opening
    tells the grid's size and the goal's position). ``wall_density`` applies to ``"goal-shown"`` only.
    """

    _MOVES_TEXT = (  # the opening's last piece, after the turn limit
        " turns. Each turn, move up (row - 1), down (row + 1), left (column - 1) or right (column + 1), for "
        "example \\boxed{up}. Walking into a wall uses up the turn and you stay where you are.\n"
    )

    text_styles = ("gem", "terse")

    def __init__(self, max_turns: int = 9, rules: str = "orbit", wall_density: float = 0.25, env_id: str = "maze",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if rules not in RULES:
            raise ValueError(f"Maze rules must be one of {RULES}, got {rules!r}")
        if not 0.0 <= wall_density < 1.0:
            raise ValueError(f"wall_density must be in [0, 1), got {wall_density}")
        self.env_id = env_id
        self.show_goal = rules == "goal-shown"
        self.opening_shows_task = self.show_goal  # its opening tells the grid's size and the goal's position
        self.wall_density = float(wall_density)
        self.action_contents = list(DIRECTIONS)
        if self.terse:
            self._rules = self.book.add(*self._terse_rules_text())
            self._kind = self.book.add(*TERSE_KINDS, " reached the goal\n", "\n")
            self._coord = self.book.add(*[f" {i}" for i in range(SIZE)])
            rules = [slot(self._rules), slot(self.num)] * (len(self._terse_rules_text()) - 1) + [slot(self._rules)]
            self.game_layout = rules + [slot(self._kind), slot(self._coord), slot(self._coord)] + [slot(self._kind)] * 5
            self.opening_slots = tuple(range(len(rules)))
            return
        self._rules = self.book.add(*self._rules_text())
        self._turn = self.book.add("At turn ", ", you moved ", ", you tried to move ")
        self._dir = self.book.add(*DIRECTIONS)
        self._tail = self.book.add(".", " but hit a wall.", " and reached the goal!")
        self._at = self.book.add("You are at (", "\nYou are at (", ", ", "). Up: ", ". Down: ", ". Left: ", ". Right: ",
                                 ".")
        self._kind = self.book.add("wall", "open", "the goal")
        rules = [slot(self._rules), slot(self.num)] * (len(self._rules_text()) - 1) + [slot(self._rules)]
        turn = [slot(self._turn), slot(self.num), slot(self._turn), slot(self._dir), slot(self._tail)]
        where = [slot(self._at), slot(self.num), slot(self._at), slot(self.num)]
        for _ in range(4):
            where += [slot(self._at), slot(self._kind)]
        self.game_layout = rules + turn + where + [slot(self._at)]
        self.opening_slots = tuple(range(len(rules)))

    def _rules_text(self) -> tuple[str, ...]:
        """The opening's pieces, between its numbers: (rows, cols, goal row, goal col, turns) with the goal shown,
        (turns) without."""
        lead = ("Rows are numbered from 0 at the top and columns from 0 at the left; a position is written (row, "
                "column). Some cells are walls, and everything outside the grid is a wall as well. You cannot see "
                "the map: each turn you are told what is next to you. ")
        if not self.show_goal:
            return ("You are in a maze laid out on a grid. " + lead + "The goal is hidden in the maze; you only see it "
                    "if it is next to you. Reach it within ", self._MOVES_TEXT)
        return ("You are in a maze laid out on a grid of ", " rows and ", " columns. " + lead + "The goal is at (",
                ", ", "). Reach it within ", self._MOVES_TEXT)

    def _terse_rules_text(self) -> tuple[str, ...]:
        """The terse opening's pieces, between the numbers of ``_opening_numbers``."""
        if self.show_goal:
            return "A grid of ", " rows and ", " columns. The goal is at (", ", ", "). Reach it within ", " turns.\n"
        return "The goal is hidden. Reach it within ", " turns.\n"

    # ------------------------------------------------------------------ dynamics
    def sample_task(self, key, params) -> MazeTask:
        if self.show_goal:
            return sample_random_walls_maze(key, self.wall_density)[0]
        return sample_branched_maze(key)[0]

    def init_game(self, key, task: MazeTask, params) -> MazeGame:
        return MazeGame(pos=task.start, feedback=jnp.full((), _NONE, jnp.int32))

    def _neighbours(self, task: MazeTask, pos) -> jax.Array:
        """int32[4]: what lies up, down, left, right of ``pos`` (_WALL, _OPEN or _GOAL)."""
        target = pos[None, :] + jnp.asarray(DELTAS, jnp.int32)  # [4, 2]
        inb = ((target >= 0) & (target < SIZE)).all(axis=1)
        t = jnp.clip(target, 0, SIZE - 1)
        passable = inb & task.open[t[:, 0], t[:, 1]]
        is_goal = (t == task.goal[None, :]).all(axis=1)
        return jnp.where(passable, jnp.where(is_goal, _GOAL, _OPEN), _WALL).astype(jnp.int32)

    def game_step(self, key, state: TextEnvState, action, params):
        pos = state.game.pos
        passable = self._neighbours(state.task, pos)[action] != _WALL
        new_pos = jnp.where(passable, pos + jnp.asarray(DELTAS, jnp.int32)[action], pos)
        reached = (new_pos == state.task.goal).all()
        feedback = jnp.select([reached, passable], [_REACHED, _MOVED], _BUMPED).astype(jnp.int32)
        return MazeGame(pos=new_pos, feedback=feedback), jnp.where(reached, WON, RUNNING)

    def valid_actions(self, state: TextEnvState) -> jax.Array:
        """The moves that do not walk into a wall the agent can see next to it."""
        return self._neighbours(state.task, state.game.pos) != _WALL

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """The move into the goal when it is next to the agent, else every move that does not walk into a wall it
        can see."""
        around = self._neighbours(state.task, state.game.pos)
        return jnp.where((around == _GOAL).any(), around == _GOAL, around != _WALL)

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """A shortest-path step (it reads the hidden goal): the first move (up, down, left, right order) that
        gets closer to the goal."""
        dist = grid_bfs(state.task.open, state.task.goal)
        target = jnp.clip(state.game.pos[None, :] + jnp.asarray(DELTAS, jnp.int32), 0, SIZE - 1)
        passable = self._neighbours(state.task, state.game.pos) != _WALL
        d = jnp.where(passable, dist[target[:, 0], target[:, 1]], UNREACHED)
        return jnp.argmin(d).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def _opening_numbers(self, task: MazeTask, max_turns) -> list:
        """The numbers between the opening's pieces (see ``_rules_text``)."""
        if self.show_goal:
            return [task.rows, task.cols, task.goal[0], task.goal[1], max_turns]
        return [max_turns]

    def game_pieces(self, state: TextEnvState):
        task, game = state.task, state.game
        opening = state.time == 0
        fb = game.feedback
        reached = fb == _REACHED
        n = self.number
        numbers = self._opening_numbers(task, state.max_turns)
        rules = [self._rules[0]]
        for i, x in enumerate(numbers):
            rules += [n(x), self._rules[i + 1]]
        if self.terse:
            around = self._kind[self._neighbours(task, game.pos)]
            where = jnp.concatenate([jnp.stack([EMPTY, self._coord[game.pos[0]], self._coord[game.pos[1]]]),
                                     around, jnp.stack([self._kind[4]])])
            done = jnp.stack([self._kind[3]] + [EMPTY] * 7)
            return jnp.concatenate([jnp.where(opening, jnp.stack(rules), EMPTY), jnp.where(reached, done, where)])
        turn = jnp.stack([
            self._turn[0], n(state.time), jnp.where(fb == _BUMPED, self._turn[2], self._turn[1]),
            self._dir[jnp.maximum(state.last_action, 0)],
            jnp.select([reached, fb == _BUMPED], [self._tail[2], self._tail[1]], self._tail[0]),
        ])
        kinds = self._kind[self._neighbours(task, game.pos)]
        where = jnp.stack([
            jnp.where(opening, self._at[0], self._at[1]), n(game.pos[0]), self._at[2], n(game.pos[1]),
            self._at[3], kinds[0], self._at[4], kinds[1], self._at[5], kinds[2], self._at[6], kinds[3], self._at[7],
        ])
        return jnp.concatenate([
            jnp.where(opening, jnp.stack(rules), EMPTY),
            jnp.where(opening, EMPTY, turn),
            jnp.where(reached, EMPTY, where),
        ])

    def render_game_text(self, state) -> str:
        task, game = state.task, state.game
        r, c = int(game.pos[0]), int(game.pos[1])
        t = int(state.time)
        if self.terse:
            if int(game.feedback) == _REACHED:
                return " reached the goal\n"
            kinds = "".join(TERSE_KINDS[int(k)] for k in np.asarray(self._neighbours(task, game.pos)))
            pieces = self._terse_rules_text()
            numbers = [int(x) for x in self._opening_numbers(task, state.max_turns)]
            opening = pieces[0] + "".join(f"{x}{p}" for x, p in zip(numbers, pieces[1:])) if t == 0 else ""
            return f"{opening} {r} {c}{kinds}\n"

        def what(dr, dc):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < SIZE and 0 <= cc < SIZE) or not bool(task.open[rr, cc]):
                return "wall"
            return "the goal" if (rr, cc) == (int(task.goal[0]), int(task.goal[1])) else "open"

        around = (
            f"You are at ({r}, {c}). Up: {what(-1, 0)}. Down: {what(1, 0)}. Left: {what(0, -1)}. "
            f"Right: {what(0, 1)}."
        )
        if t == 0:
            lead = ("Rows are numbered from 0 at the top and columns from 0 at the left; a position is written "
                    "(row, column). Some cells are walls, and everything outside the grid is a wall as well. You "
                    "cannot see the map: each turn you are told what is next to you. ")
            moves = (f"Reach it within {int(state.max_turns)} turns. Each turn, move up (row - 1), down (row + 1), "
                     "left (column - 1) or right (column + 1), for example \\boxed{up}. Walking into a wall uses up "
                     "the turn and you stay where you are.\n")
            if self.show_goal:
                return (f"You are in a maze laid out on a grid of {int(task.rows)} rows and {int(task.cols)} "
                        f"columns. {lead}The goal is at ({int(task.goal[0])}, {int(task.goal[1])}). {moves}{around}")
            return (f"You are in a maze laid out on a grid. {lead}The goal is hidden in the maze; you only see it if "
                    f"it is next to you. {moves}{around}")
        move = DIRECTIONS[int(state.last_action)]
        fb = int(game.feedback)
        if fb == _REACHED:
            return f"At turn {t}, you moved {move} and reached the goal!"
        if fb == _BUMPED:
            return f"At turn {t}, you tried to move {move} but hit a wall.\n" + around
        return f"At turn {t}, you moved {move}.\n" + around
