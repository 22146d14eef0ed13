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

Maze generator (ORBIT's kind: a branched corridor network, reimplemented as a JAX function of the task key),
drawn by rejection sampling in ``lax.while_loop``; each try draws everything anew:
  * shape (rows, cols) uniform over 6x6, 7x6, 7x7, 6x7, padded to a static 7x7 (cells outside the grid are
    walls). The grid's border rows and columns are walls too; the start is uniform over the interior;
  * corridors: a randomized growing tree from the start. While some open cell is *active*, pick one uniformly;
    with probability 0.7 it may open 1 neighbour, else 2; try its 4 neighbours in random order and open each
    interior wall that has at most one open neighbour (the picked cell itself), marking it active, until the
    allowance is used. A picked cell that opens nothing becomes inactive. The open cells form a tree, and no
    interior wall is left with exactly one open neighbour;
  * loops: ``n`` uniform in ``2 .. max(3, rows * cols // 30)`` (2 or 3 here) times, up to 100 uniform interior
    cells are tried and the first wall with exactly two open neighbours is opened, which closes a cycle;
  * the goal is the farthest open cell from the start by BFS; among ties, the first one a FIFO breadth-first
    search that expands neighbours in up, down, left, right order reaches (ORBIT's rule);
  * the try is accepted iff that distance (the start->goal shortest path) is 7 or 8 moves (ORBIT's validation
    config, ``shortest_path_min_length`` 7 and ``shortest_path_max_length`` 8).
  Measured: acceptance per try 0.090 for 6x6, 0.34 for 7x6 and 6x7, 0.53 for 7x7 (40,000 JAX proposals), so
  3.11 tries per maze on average (100,000 mazes; the most was 40). Since ORBIT also redraws the shape on each
  try, the accepted shapes are not uniform: 7.0% 6x6, 25.7% 7x6, 41.6% 7x7, 25.7% 6x7. ``tests/test_maze.py``
  checks these figures and compares the mazes with a plain-Python generator written from this description.
  ORBIT's generator has two more passes, branch extensions from dead ends and reconnecting unreachable open
  cells. Neither can change a maze the growing tree has finished (the first opens only interior walls with a
  single open neighbour, and there are none; every open cell is already reachable), so they are left out.
  ORBIT retries a rejected seed with ``seed + 1``; here the rejection loop draws fresh keys.

Variant ``rules="goal-shown"`` (the id ``maze-goal-shown``: this env's rules before ORBIT's became the default).
The opening also tells the grid's size and the goal's position, and the maze is drawn differently: the shape
once per task (uniform), then, until accepted, every cell of the grid a wall independently with probability
``wall_density`` (0.25; rounded to a multiple of 1/256, since one random byte decides each cell), the start
uniform over the open interior cells, the goal a BFS-farthest reachable cell (uniform among ties), accepted iff
the farthest distance is 7 or 8 (2.29 tries per maze on average).

BFS is a fixed-iteration relaxation over the 49 cells (48 rounds, enough for any path in a 7x7 grid); the
samplers run only 9 rounds, which decide every distance up to 8 exactly, and a maze with a farther cell shows a
cell at distance 9 and is rejected either way.

Differences from ORBIT (both rule sets): the wording is ours; a bump repeats the position and surroundings
(ORBIT: "You hit the wall. Please choose another direction."), which the agent knew already; an answer that is
not one of the four moves is a format error that ends the episode, as in every env here (ORBIT: "Invalid
action", a wasted turn).

Actions: ``up``, ``down``, ``left``, ``right`` (``\\boxed{up}``). Coordinates are 0-based, (row, column),
(0, 0) is the top-left cell (ORBIT's too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot
from metarl_jax.envs.sampling import rejection_sample

SIZE = 7  # static padded side
SHAPES = ((6, 6), (7, 6), (7, 7), (6, 7))  # (rows, cols)
PATH_LENGTHS = (7, 8)
UNREACHED = 10_000
# up, down, left, right as (d_row, d_col)
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))
DIRECTIONS = ("up", "down", "left", "right")
RULES = ("orbit", "goal-shown")

# The branched generator's settings (see the module docstring).
ONE_BRANCH_PROB = 0.7  # a picked cell may open one neighbour with this probability, else two
LOOP_TRIES = 100  # uniform cells tried per loop
TREE_STEPS = 2 * SIZE * SIZE  # a bound on the growing tree's steps: each opens a cell or retires one
MAX_LOOPS = max(3, SIZE * SIZE // 30)  # the largest loop count of any shape that fits in SIZE x SIZE
_LAST = 2**30  # a BFS order later than any real one

# feedback codes
_NONE, _MOVED, _BUMPED, _REACHED = range(4)
# what lies next to the agent
_WALL, _OPEN, _GOAL = range(3)


def grid_bfs(passable: jax.Array, source: jax.Array, rounds: int | None = None) -> jax.Array:
    """Shortest-path lengths (4-neighbour moves) from ``source`` through ``passable`` cells.

    Args:
      passable: bool[R, C], cells that may be entered.
      source: int32[2], (row, col) of the source (distance 0 even if it is not passable).
      rounds: relaxation rounds, default ``R * C - 1`` (enough for any simple path).
    Returns:
      int32[R, C]: the distance, ``UNREACHED`` for cells that cannot be reached (and impassable ones).
    """
    rows, cols = passable.shape
    rounds = rows * cols - 1 if rounds is None else rounds
    dist = jnp.full((rows, cols), UNREACHED, jnp.int32).at[source[0], source[1]].set(0)

    def relax(_, d):
        p = jnp.pad(d, 1, constant_values=UNREACHED)
        nb = jnp.minimum(jnp.minimum(p[:-2, 1:-1], p[2:, 1:-1]), jnp.minimum(p[1:-1, :-2], p[1:-1, 2:]))
        return jnp.minimum(d, jnp.where(passable, nb + 1, UNREACHED))

    return jax.lax.fori_loop(0, rounds, relax, dist)


@struct.dataclass
class MazeTask:
    """A maze (a static 7x7 array padded with walls).

    Attributes:
      open: bool[7, 7], True for open cells (walls and cells outside the grid are False).
      inside: bool[7, 7], True for cells inside the grid (rows x cols).
      rows, cols: int32[], the grid's shape.
      start, goal: int32[2], (row, col).
    """

    open: jax.Array
    inside: jax.Array
    rows: jax.Array
    cols: jax.Array
    start: jax.Array
    goal: jax.Array


@struct.dataclass
class MazeGame:
    pos: jax.Array  # int32[2], the agent's (row, col)
    feedback: jax.Array  # int32[], feedback code of the last turn


def _pick(key: jax.Array, mask: jax.Array) -> jax.Array:
    """A uniform cell of ``bool[SIZE, SIZE]`` mask as int32[2] (one random draw; mask must be non-empty)."""
    flat = mask.reshape(-1)
    r = jax.random.randint(key, (), 0, jnp.maximum(flat.sum(), 1))
    i = jnp.argmax(flat & (jnp.cumsum(flat) == r + 1))
    return jnp.stack([i // SIZE, i % SIZE]).astype(jnp.int32)


def grid_masks(rows, cols) -> tuple[jax.Array, jax.Array]:
    """(inside, interior), bool[SIZE, SIZE]: the grid's cells, and those not on its border."""
    idx = jnp.arange(SIZE)
    inside = (idx[:, None] < rows) & (idx[None, :] < cols)
    interior = (idx[:, None] >= 1) & (idx[:, None] < rows - 1) & (idx[None, :] >= 1) & (idx[None, :] < cols - 1)
    return inside, interior


def _draw_shape(key) -> tuple[jax.Array, jax.Array]:
    """(rows, cols), int32[] each: a shape uniform over SHAPES."""
    rows, cols = jnp.asarray(SHAPES, jnp.int32)[jax.random.randint(key, (), 0, len(SHAPES))]
    return rows, cols


def open_neighbours(open_: jax.Array) -> jax.Array:
    """int32[R, C]: how many of each cell's 4 neighbours are open (outside the array counts as a wall)."""
    p = jnp.pad(open_, 1).astype(jnp.int32)
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]


def _pick_with(u: jax.Array, mask: jax.Array) -> jax.Array:
    """The cell of ``bool[SIZE, SIZE]`` mask that ``u`` ~ Uniform[0, 1) chooses, uniform over the mask; int32[2]."""
    flat = mask.reshape(-1)
    nth = jnp.minimum(jnp.floor(u * flat.sum()).astype(jnp.int32), flat.sum() - 1)
    i = jnp.argmax(flat & (jnp.cumsum(flat) == nth + 1))
    return jnp.stack([i // SIZE, i % SIZE]).astype(jnp.int32)


def grow_tree(key: jax.Array, interior: jax.Array, start: jax.Array) -> jax.Array:
    """bool[SIZE, SIZE]: the corridors of a randomized growing tree from ``start`` (see the module docstring).

    Every step either opens a cell or retires an active one, so the loop ends within ``TREE_STEPS`` steps; their
    random numbers are drawn up front (a quarter faster under ``vmap`` than drawing them step by step).
    """
    deltas = jnp.asarray(DELTAS, jnp.int32)
    first = jnp.zeros((SIZE, SIZE), bool).at[start[0], start[1]].set(True)
    # Per step: the active cell to pick, the allowance, and 4 numbers whose order orders the neighbours.
    u = jax.random.uniform(key, (TREE_STEPS, 6))

    def step(carry):
        t, open_, active = carry
        cell = _pick_with(u[t, 0], active)
        allowance = jnp.where(u[t, 1] < ONE_BRANCH_PROB, 1, 2)
        order = jnp.argsort(u[t, 2:])  # a uniform permutation of the 4 directions
        opened = jnp.zeros((), jnp.int32)
        for i in range(4):  # the neighbours in turn: opening one changes the next one's open-neighbour count
            r, c = cell + deltas[order[i]]
            around = jnp.pad(open_, 1)[jnp.stack([r, r + 2, r + 1, r + 1]), jnp.stack([c + 1, c + 1, c, c + 2])]
            ok = (opened < allowance) & interior[r, c] & ~open_[r, c] & (around.sum() <= 1)
            open_, active = open_.at[r, c].set(open_[r, c] | ok), active.at[r, c].set(active[r, c] | ok)
            opened = opened + ok
        return t + 1, open_, active.at[cell[0], cell[1]].set(opened > 0)

    return jax.lax.while_loop(lambda carry: carry[2].any(), step, (jnp.zeros((), jnp.int32), first, first))[1]


def add_loops(key: jax.Array, open_: jax.Array, rows, cols) -> jax.Array:
    """``open_`` with 2 .. max(3, rows * cols // 30) loops closed (see the module docstring); bool[SIZE, SIZE]."""
    k_num, k_row, k_col = jax.random.split(key, 3)
    num = jax.random.randint(k_num, (), 2, jnp.maximum(3, rows * cols // 30) + 1)
    tried_r = jax.random.randint(k_row, (MAX_LOOPS, LOOP_TRIES), 1, rows - 1)
    tried_c = jax.random.randint(k_col, (MAX_LOOPS, LOOP_TRIES), 1, cols - 1)
    for i in range(MAX_LOOPS):
        closes = ~open_ & (open_neighbours(open_) == 2)
        hit = closes[tried_r[i], tried_c[i]]  # bool[LOOP_TRIES]
        j = jnp.argmax(hit)  # the first try that hits
        r, c = tried_r[i, j], tried_c[i, j]
        open_ = open_.at[r, c].set(open_[r, c] | ((i < num) & hit.any()))
    return open_


def bfs_first_farthest(open_: jax.Array, start: jax.Array, rounds: int) -> tuple[jax.Array, jax.Array]:
    """The farthest open cell from ``start`` that a FIFO BFS expanding up, down, left, right reaches first.

    A cell's place in that BFS is ordered by (its discoverer's place, the direction from it), its discoverer
    being its earliest-placed neighbour one step closer; ``order = 4 * order(discoverer) + direction`` keeps
    that order exactly (4 ** rounds stays far below 2**31 for ``rounds <= 14``).

    Returns ``(goal int32[2], distance int32[])``; distances beyond ``rounds`` are not seen.
    """
    dist = grid_bfs(open_, start, rounds)
    order = jnp.full((SIZE, SIZE), _LAST, jnp.int32).at[start[0], start[1]].set(0)
    for d in range(1, rounds + 1):
        padded_order = jnp.pad(order, 1, constant_values=_LAST)
        padded_dist = jnp.pad(dist, 1, constant_values=UNREACHED)
        via = []
        for k, (dr, dc) in enumerate(DELTAS):  # the neighbour a cell is reached from by moving in direction k
            window = (slice(1 - dr, 1 - dr + SIZE), slice(1 - dc, 1 - dc + SIZE))
            via.append(jnp.where(padded_dist[window] == d - 1, 4 * padded_order[window] + k, _LAST))
        order = jnp.where(dist == d, jnp.min(jnp.stack(via), axis=0), order)
    reach = jnp.where(dist < UNREACHED, dist, -1)
    far = reach.max()
    i = jnp.argmin(jnp.where(reach == far, order, _LAST).reshape(-1))
    return jnp.stack([i // SIZE, i % SIZE]).astype(jnp.int32), far.astype(jnp.int32)


def sample_branched_maze(key: jax.Array) -> tuple[MazeTask, jax.Array]:
    """ORBIT's kind of maze (see the module docstring). Returns ``(task, tries)``, tries int32[]."""

    def propose(key):
        k_shape, k_start, k_tree, k_loops = jax.random.split(key, 4)
        rows, cols = _draw_shape(k_shape)
        inside, interior = grid_masks(rows, cols)
        start = _pick(k_start, interior)
        open_ = add_loops(k_loops, grow_tree(k_tree, interior, start), rows, cols)
        goal, far = bfs_first_farthest(open_, start, PATH_LENGTHS[1] + 1)
        ok = (far == PATH_LENGTHS[0]) | (far == PATH_LENGTHS[1])
        return MazeTask(open=open_, inside=inside, rows=rows, cols=cols, start=start, goal=goal), ok

    return rejection_sample(key, propose)


def sample_random_walls_maze(key: jax.Array, wall_density: float = 0.25) -> tuple[MazeTask, jax.Array]:
    """The ``goal-shown`` variant's maze (see the module docstring). Returns ``(task, tries)``, tries int32[].

    The shape is drawn once (so shapes are exactly uniform); walls and start are redrawn until accepted.
    """
    k_shape, key = jax.random.split(key)
    rows, cols = _draw_shape(k_shape)
    inside, interior = grid_masks(rows, cols)

    def propose(key):
        k_wall, k_start, k_goal = jax.random.split(key, 3)
        # One random byte per cell (a quarter of the random words that floats would cost): a wall when
        # the byte is below wall_density * 256.
        byte = jax.random.bits(k_wall, (SIZE, SIZE), jnp.uint8)
        open_ = inside & (byte >= jnp.uint8(round(wall_density * 256)))
        candidates = open_ & interior
        start = _pick(k_start, candidates)
        dist = grid_bfs(open_, start, rounds=PATH_LENGTHS[1] + 1)
        reach = jnp.where(dist < UNREACHED, dist, -1)
        far = reach.max()
        goal = _pick(k_goal, reach == far)
        ok = candidates.any() & ((far == PATH_LENGTHS[0]) | (far == PATH_LENGTHS[1]))
        return MazeTask(open=open_, inside=inside, rows=rows, cols=cols, start=start, goal=goal), ok

    return rejection_sample(key, propose)


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

    def __init__(self, max_turns: int = 9, rules: str = "orbit", wall_density: float = 0.25, env_id: str = "maze",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if rules not in RULES:
            raise ValueError(f"Maze rules must be one of {RULES}, got {rules!r}")
        if not 0.0 <= wall_density < 1.0:
            raise ValueError(f"wall_density must be in [0, 1), got {wall_density}")
        self.env_id = env_id
        self.show_goal = rules == "goal-shown"
        self.wall_density = float(wall_density)
        self.action_contents = list(DIRECTIONS)
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

        def what(dr, dc):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < SIZE and 0 <= cc < SIZE) or not bool(task.open[rr, cc]):
                return "wall"
            return "the goal" if (rr, cc) == (int(task.goal[0]), int(task.goal[1])) else "open"

        around = (
            f"You are at ({r}, {c}). Up: {what(-1, 0)}. Down: {what(1, 0)}. Left: {what(0, -1)}. "
            f"Right: {what(0, 1)}."
        )
        t = int(state.time)
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
