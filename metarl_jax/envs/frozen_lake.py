"""FrozenLake as a text game (``FrozenLake-misc``): gymnax's FrozenLake with the map fixed across episodes.

Rules (gymnax ``FrozenLake-misc``, itself Gymnasium's): the agent starts on the start tile (top-left) of a 4x4
lake and must reach the goal tile (bottom-right). Some tiles are holes: stepping onto one ends the episode in
failure; reaching the goal ends it in success. Actions, in gymnax's order: 0 ``left``, 1 ``down``,
2 ``right``, 3 ``up`` (``\\boxed{down}``). A move off the lake is clipped at the border (the agent stays).
With ``is_slippery=True`` the chosen move happens with probability ``success_rate`` (gymnax's 1/3) and
otherwise turns to one of the two perpendicular directions, each with probability (1 - success_rate) / 2,
drawn from the step key exactly as gymnax does (same key split, same draws), so the same keys give the same
trajectory. An episode has ``max_turns`` (8) turns; gymnax's 100-step limit does not apply.

Observations: the opening gives the rules, the lake's size, the start and goal positions and the agent's
position; every later turn says which move was chosen, where the agent actually went (slips included), its
new position, and whether it bumped into the edge, fell into a hole or reached the goal. The map (where the
holes are) is never shown: the agent must learn it across the episodes of a trial.

Task: the map, int32[4, 4] of gymnax tile codes (START, FROZEN, HOLE, GOAL).
  * ``random_map=True`` (default): start (0, 0), goal (3, 3), every other tile a hole with probability
    ``hole_prob`` (0.2, Gymnasium's ``generate_random_map`` default), resampled (``lax.while_loop``) until
    the goal is reachable from the start. Acceptance per try: 0.8587 exactly (enumeration of the 2^14
    hole patterns), i.e. 1.16 tries on average; an accepted map has 2.50 holes on average.
  * ``random_map=False``: gymnax's fixed "4x4" map (SFFF / FHFH / FFFH / HFFG) for every task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments.misc.frozen_lake import FROZEN, GOAL, HOLE, START

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.maze_layouts import UNREACHED, grid_bfs
from metarl_jax.envs.pieces import EMPTY, slot
from metarl_jax.envs.sampling import rejection_sample

SIDE = 4
# gymnax's (and Gymnasium's) fixed "4x4" map; tests check it equals ``gymnax FrozenLake().desc``.
MAP_4X4 = ("SFFF", "FHFH", "FFFH", "HFFG")
_TILES = {"S": START, "F": FROZEN, "H": HOLE, "G": GOAL}
# gymnax's action order and deltas (d_row, d_col): left, down, right, up
DELTAS = ((0, -1), (1, 0), (0, 1), (-1, 0))
DIRECTIONS = ("left", "down", "right", "up")

# feedback codes
_NONE, _MOVED, _EDGE, _HOLE, _GOAL = range(5)


@struct.dataclass
class FrozenLakeGame:
    pos: jax.Array  # int32[], row-major position (gymnax's ``position``)
    moved: jax.Array  # int32[], the direction actually taken in the last turn (differs on a slip)
    feedback: jax.Array  # int32[], feedback code of the last turn


def sample_map(key: jax.Array, hole_prob: float) -> tuple[jax.Array, jax.Array]:
    """A random 4x4 map whose goal is reachable. Returns ``(desc int32[4, 4], tries int32[])``."""

    def propose(key):
        holes = jax.random.bernoulli(key, hole_prob, (SIDE, SIDE))
        desc = jnp.where(holes, HOLE, FROZEN).at[0, 0].set(START).at[-1, -1].set(GOAL).astype(jnp.int32)
        ok = grid_bfs(desc != HOLE, jnp.zeros((2,), jnp.int32))[-1, -1] < UNREACHED
        return desc, ok

    return rejection_sample(key, propose)


class FrozenLakeText(TextEnv):
    """gymnax's FrozenLake as a text game with the map as the task (see the module docstring).

    Task: int32[4, 4] map. Game: :class:`FrozenLakeGame`. Actions: 0 left, 1 down, 2 right, 3 up.
    """

    def __init__(
        self,
        max_turns: int = 8,
        random_map: bool = True,
        hole_prob: float = 0.2,
        is_slippery: bool = False,
        success_rate: float = 1.0 / 3.0,
        env_id: str = "FrozenLake-misc",
        text: str = "gem",
    ):
        super().__init__(max_turns, text)
        if not 0.0 <= hole_prob < 1.0:
            raise ValueError(f"hole_prob must be in [0, 1), got {hole_prob}")
        if not 0.0 <= success_rate <= 1.0:
            raise ValueError(f"success_rate must be in [0, 1], got {success_rate}")
        self.env_id = env_id
        self.random_map = bool(random_map)
        self.hole_prob = float(hole_prob)
        self.is_slippery = bool(is_slippery)
        self.success_rate = float(success_rate)
        self.deterministic = not self.is_slippery
        self.fixed_map = jnp.asarray([[_TILES[t] for t in row] for row in MAP_4X4], jnp.int32)
        self.action_contents = list(DIRECTIONS)
        self._rules = self.book.add(
            f"You are crossing a frozen lake of {SIDE} by {SIDE} tiles. Rows are numbered from 0 at the top and "
            "columns from 0 at the left; a position is written (row, column). You start at (",
            ", ",
            ") and the goal is at (",
            ", ",
            "). Some tiles are holes: stepping onto one ends the episode in failure. You cannot see where the "
            "holes are. Each turn, move left, down, right or up, for example \\boxed{down}; a move off the lake "
            "leaves you where you are. ",
            "You have ",
            " turns.\nYou are at (",
            ", ",
            ").",
        )
        # Registered even on non-slippery ice, so that the built-in word vocabulary covers both variants.
        self._slip = self.book.add_one(
            f"The ice is slippery: a move goes the way you chose with probability {self.success_rate:.2f}, "
            "otherwise it slides to one of the two sideways directions. "
        )
        self._turn = self.book.add("At turn ", ", you moved ", ", you chose ", " but slipped ")
        self._dir = self.book.add(*DIRECTIONS)
        self._tail = self.book.add(
            " and are now at (",
            " and bumped into the edge of the lake, so you are still at (",
            " and fell into a hole at (",
            " and reached the goal at (",
            ", ",
            ").",
            "). The episode is over.",
            ")!",
        )
        opening = [slot(self._rules), slot(self.num)] * 4 + [slot(self._rules), slot(self._slip)]
        opening += [slot(self._rules), slot(self.num)] * 3 + [slot(self._rules)]
        turn = [slot(self._turn), slot(self.num), slot(self._turn), slot(self._dir), slot(self._turn), slot(self._dir)]
        tail = [slot(self._tail), slot(self.num), slot(self._tail), slot(self.num), slot(self._tail)]
        self.game_layout = opening + turn + tail
        self.opening_slots = tuple(range(len(opening)))

    # ------------------------------------------------------------------ dynamics
    def sample_task(self, key, params) -> jax.Array:
        if not self.random_map:
            return self.fixed_map
        return sample_map(key, self.hole_prob)[0]

    def init_game(self, key, task, params) -> FrozenLakeGame:
        start = jnp.argmax(task.reshape(-1) == START).astype(jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        return FrozenLakeGame(pos=start, moved=zero, feedback=jnp.full((), _NONE, jnp.int32))

    def _transition_action(self, key, action):
        """The direction actually taken: gymnax's ``FrozenLake._transition_action`` (same key use)."""
        if not self.is_slippery:
            return action
        key_direction, key_success = jax.random.split(key)
        offset = jax.random.choice(key_direction, jnp.array((-1, 1)))
        return jnp.where(jax.random.uniform(key_success) < self.success_rate, action, (action + offset) % 4)

    def game_step(self, key, state: TextEnvState, action, params):
        moved = jnp.asarray(self._transition_action(key, action), jnp.int32)
        row, col = jnp.divmod(state.game.pos, SIDE)
        delta = jnp.asarray(DELTAS, jnp.int32)[moved]
        new_row, new_col = row + delta[0], col + delta[1]
        edge = (new_row < 0) | (new_row >= SIDE) | (new_col < 0) | (new_col >= SIDE)
        new_row, new_col = jnp.clip(new_row, 0, SIDE - 1), jnp.clip(new_col, 0, SIDE - 1)
        tile = state.task[new_row, new_col]
        feedback = jnp.select([tile == GOAL, tile == HOLE, edge], [_GOAL, _HOLE, _EDGE], _MOVED).astype(jnp.int32)
        outcome = jnp.select([tile == GOAL, tile == HOLE], [WON, LOST], RUNNING)
        return FrozenLakeGame(pos=(new_row * SIDE + new_col).astype(jnp.int32), moved=moved, feedback=feedback), outcome

    def valid_actions(self, state: TextEnvState) -> jax.Array:
        """Moves that stay on the lake; every move when slippery (pushing against the edge can help there)."""
        if self.is_slippery:
            return jnp.ones((4,), bool)
        row, col = jnp.divmod(state.game.pos, SIDE)
        return jnp.stack([col > 0, row < SIDE - 1, col < SIDE - 1, row > 0])

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """A shortest-path step on the known map (BFS from the goal through non-hole tiles).

        Optimal without slipping (wins whenever the goal is at most ``max_turns`` moves away); with slippery
        ice it is only a heuristic (it ignores slips: about 5% success on the fixed map in 30 turns).
        """
        goal = jnp.argmax(state.task.reshape(-1) == GOAL)
        dist = grid_bfs(state.task != HOLE, jnp.stack([goal // SIDE, goal % SIDE]))
        row, col = jnp.divmod(state.game.pos, SIDE)
        target = jnp.stack([row, col])[None, :] + jnp.asarray(DELTAS, jnp.int32)
        inb = ((target >= 0) & (target < SIDE)).all(axis=1)
        t = jnp.clip(target, 0, SIDE - 1)
        d = jnp.where(inb, dist[t[:, 0], t[:, 1]], UNREACHED)
        return jnp.argmin(d).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        task, game = state.task, state.game
        n = self.number
        flat = task.reshape(-1)
        start = jnp.argmax(flat == START)
        goal = jnp.argmax(flat == GOAL)
        opening = state.time == 0
        row, col = jnp.divmod(game.pos, SIDE)
        rules = jnp.stack([
            self._rules[0], n(start // SIDE), self._rules[1], n(start % SIDE), self._rules[2], n(goal // SIDE),
            self._rules[3], n(goal % SIDE), self._rules[4], self._slip[0] if self.is_slippery else EMPTY,
            self._rules[5], n(state.max_turns), self._rules[6], n(row), self._rules[7], n(col), self._rules[8],
        ])
        chosen = jnp.maximum(state.last_action, 0)
        slipped = game.moved != chosen
        fb = game.feedback
        turn = jnp.stack([
            self._turn[0], n(state.time), jnp.where(slipped, self._turn[2], self._turn[1]), self._dir[chosen],
            jnp.where(slipped, self._turn[3], EMPTY), jnp.where(slipped, self._dir[game.moved], EMPTY),
        ])
        tail = jnp.stack([
            self._tail[jnp.clip(fb - _MOVED, 0, 3)], n(row), self._tail[4], n(col),
            jnp.select([fb == _HOLE, fb == _GOAL], [self._tail[6], self._tail[7]], self._tail[5]),
        ])
        blank = jnp.full((rules.shape[0] + turn.shape[0] + tail.shape[0],), EMPTY)
        return jnp.where(
            opening, blank.at[: rules.shape[0]].set(rules), blank.at[rules.shape[0]:].set(jnp.concatenate([turn, tail]))
        )

    def render_game_text(self, state) -> str:
        task, game = state.task, state.game
        row, col = divmod(int(game.pos), SIDE)
        t = int(state.time)
        if t == 0:
            (sr, sc), = [(r, c) for r in range(SIDE) for c in range(SIDE) if int(task[r, c]) == START]
            (gr, gc), = [(r, c) for r in range(SIDE) for c in range(SIDE) if int(task[r, c]) == GOAL]
            slip = (
                f"The ice is slippery: a move goes the way you chose with probability {self.success_rate:.2f}, "
                "otherwise it slides to one of the two sideways directions. "
                if self.is_slippery else ""
            )
            return (
                f"You are crossing a frozen lake of {SIDE} by {SIDE} tiles. Rows are numbered from 0 at the top and "
                "columns from 0 at the left; a position is written (row, column). "
                f"You start at ({sr}, {sc}) and the goal is at ({gr}, {gc}). Some tiles are holes: stepping onto "
                "one ends the episode in failure. You cannot see where the holes are. Each turn, move left, down, "
                "right or up, for example \\boxed{down}; a move off the lake leaves you where you are. "
                f"{slip}You have {int(state.max_turns)} turns.\nYou are at ({row}, {col})."
            )
        chosen, moved = DIRECTIONS[int(state.last_action)], DIRECTIONS[int(game.moved)]
        head = f"At turn {t}, you moved {chosen}" if chosen == moved else (
            f"At turn {t}, you chose {chosen} but slipped {moved}")
        fb = int(game.feedback)
        if fb == _HOLE:
            return f"{head} and fell into a hole at ({row}, {col}). The episode is over."
        if fb == _GOAL:
            return f"{head} and reached the goal at ({row}, {col})!"
        if fb == _EDGE:
            return f"{head} and bumped into the edge of the lake, so you are still at ({row}, {col})."
        return f"{head} and are now at ({row}, {col})."
