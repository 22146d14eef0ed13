"""The mazes of :mod:`metarl_jax.envs.maze`, drawn as JAX functions of the task key.

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.sampling import rejection_sample

SIZE = 7  # static padded side
SHAPES = ((6, 6), (7, 6), (7, 7), (6, 7))  # (rows, cols)
PATH_LENGTHS = (7, 8)
UNREACHED = 10_000
# up, down, left, right as (d_row, d_col)
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))

# The branched generator's settings (see the module docstring).
ONE_BRANCH_PROB = 0.7  # a picked cell may open one neighbour with this probability, else two
LOOP_TRIES = 100  # uniform cells tried per loop
TREE_STEPS = 2 * SIZE * SIZE  # a bound on the growing tree's steps: each opens a cell or retires one
MAX_LOOPS = max(3, SIZE * SIZE // 30)  # the largest loop count of any shape that fits in SIZE x SIZE
_LAST = 2**30  # a BFS order later than any real one


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
