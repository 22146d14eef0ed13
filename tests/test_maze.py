"""Maze: ORBIT's branched generator (its properties, and against a plain-Python generator written from the
same description), the random-walls generator of ``maze-goal-shown``, what the observation tells and does not,
the BFS oracle, random play vs an exact host computation, text, the same task in every episode."""

import random
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import binomial_tolerance, random_valid_policy, replay_episode_one, run_trials
from metarl_jax import envs
from metarl_jax.envs.maze_layouts import (SHAPES, add_loops, grid_masks, grow_tree, sample_branched_maze,
                                          sample_random_walls_maze)

MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # up, down, left, right
N_MAZES = 2000
# Measured (docstring of metarl_jax/envs/maze_layouts.py): accepted shapes of the branched generator, tries per maze.
SHAPE_SHARES = {(6, 6): 0.070, (7, 6): 0.257, (7, 7): 0.416, (6, 7): 0.257}
BRANCHED_TRIES = 3.11


@pytest.fixture(scope="module")
def maze():
    return envs.make("maze")


@pytest.fixture(scope="module")
def shown():
    return envs.make("maze-goal-shown")


@pytest.fixture(scope="module")
def sampled():
    """N_MAZES mazes from the branched JAX generator, as numpy, with the number of tries each took."""
    task, tries = jax.jit(jax.vmap(sample_branched_maze))(jax.random.split(jax.random.PRNGKey(0), N_MAZES))
    return jax.tree.map(np.asarray, task), np.asarray(tries)


# ---------------------------------------------------------------- host references
def host_bfs(open_, start):
    """Plain-Python FIFO BFS expanding up, down, left, right: {cell: distance} over the open cells reachable from
    ``start``, in the order the search reaches them."""
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nb = (r + dr, c + dc)
            if 0 <= nb[0] < open_.shape[0] and 0 <= nb[1] < open_.shape[1] and open_[nb] and nb not in dist:
                dist[nb] = dist[(r, c)] + 1
                queue.append(nb)
    return dist


def host_random_success(open_, start, goal, turns):
    """Exact chance that a uniform walk over the non-wall neighbours reaches ``goal`` within ``turns`` moves."""
    prob, won = {start: 1.0}, 0.0
    for _ in range(turns):
        nxt = {}
        for (r, c), p in prob.items():
            nbs = [(r + dr, c + dc) for dr, dc in MOVES.values()
                   if 0 <= r + dr < open_.shape[0] and 0 <= c + dc < open_.shape[1] and open_[r + dr, c + dc]]
            for nb in nbs:
                if nb == goal:
                    won += p / len(nbs)
                else:
                    nxt[nb] = nxt.get(nb, 0.0) + p / len(nbs)
        prob = nxt
    return won


def open_count(open_, r, c):
    return sum(bool(open_[r + dr, c + dc]) for dr, dc in MOVES.values()
               if 0 <= r + dr < open_.shape[0] and 0 <= c + dc < open_.shape[1])


def host_branched_maze(rng: random.Random):
    """The branched generator in plain Python, from the module docstring: ``(rows, open bool[7, 7], start, goal)``."""
    while True:
        rows, cols = rng.choice(SHAPES)
        open_ = np.zeros((7, 7), bool)
        interior = lambda r, c: 1 <= r <= rows - 2 and 1 <= c <= cols - 2  # noqa: E731
        start = (rng.randint(1, rows - 2), rng.randint(1, cols - 2))
        open_[start] = True
        active = [start]
        while active:
            i = rng.randrange(len(active))
            r, c = active[i]
            directions = list(MOVES.values())
            rng.shuffle(directions)
            allowance, opened = (1 if rng.random() < 0.7 else 2), 0
            for dr, dc in directions:
                nb = (r + dr, c + dc)
                if opened < allowance and interior(*nb) and not open_[nb] and open_count(open_, *nb) <= 1:
                    open_[nb] = True
                    active.append(nb)
                    opened += 1
            if not opened:
                active.pop(i)
        for _ in range(rng.randint(2, max(3, rows * cols // 30))):
            for _ in range(100):
                cell = (rng.randint(1, rows - 2), rng.randint(1, cols - 2))
                if not open_[cell] and open_count(open_, *cell) == 2:
                    open_[cell] = True
                    break
        dist = host_bfs(open_, start)
        far = max(dist.values())
        if far in (7, 8):
            return rows, open_, start, next(cell for cell, d in dist.items() if d == far)


def cycles(open_):
    """The cyclomatic number of the open cells' grid graph (edges - cells + 1, the graph being connected)."""
    edges = (open_[1:, :] & open_[:-1, :]).sum() + (open_[:, 1:] & open_[:, :-1]).sum()
    return int(edges - open_.sum() + 1)


# ---------------------------------------------------------------- the branched generator (ORBIT's kind)
@pytest.mark.slow
def test_branched_generator_properties(sampled):
    task, tries = sampled
    shapes = []
    for i in range(N_MAZES):
        rows, cols = int(task.rows[i]), int(task.cols[i])
        shapes.append((rows, cols))
        inside = np.zeros((7, 7), bool)
        inside[:rows, :cols] = True
        np.testing.assert_array_equal(task.inside[i], inside)
        interior = np.zeros((7, 7), bool)
        interior[1:rows - 1, 1:cols - 1] = True
        open_, start, goal = task.open[i], tuple(task.start[i]), tuple(task.goal[i])
        assert not open_[~interior].any() and open_[start]  # the grid's border is wall, the start inside
        dist = host_bfs(open_, start)
        assert len(dist) == open_.sum()  # every open cell is reachable
        far = max(dist.values())
        assert far in (7, 8) and goal == next(cell for cell, d in dist.items() if d == far)  # BFS's first farthest
        assert 0 <= cycles(open_) <= 3  # a tree plus at most 3 loops
    for shape, share in SHAPE_SHARES.items():
        freq = np.mean([s == shape for s in shapes])
        assert abs(freq - share) < binomial_tolerance(share, N_MAZES), (shape, freq)
    assert abs(tries.mean() - BRANCHED_TRIES) < 4 * tries.std() / np.sqrt(N_MAZES)


@pytest.mark.slow
def test_growing_tree_is_a_finished_tree_and_loops_close_cycles():
    """The corridors alone: a tree (no cycle) of interior cells through the start, grown until no interior wall
    has exactly one open neighbour (so ORBIT's dead-end extension pass would open nothing); ``add_loops`` then
    closes at most 3 cycles, one per opened wall (2 or 3 are drawn, fewer are closed when 100 tries find no wall
    with two open neighbours; the comparison with the plain-Python generator checks how many)."""

    def one(key):
        k_shape, k_start, k_tree, k_loops = jax.random.split(key, 4)
        rows, cols = jnp.asarray(SHAPES, jnp.int32)[jax.random.randint(k_shape, (), 0, len(SHAPES))]
        _, interior = grid_masks(rows, cols)
        start = jax.random.randint(k_start, (2,), 1, jnp.stack([rows, cols]) - 1)
        tree = grow_tree(k_tree, interior, start)
        return interior, start, tree, add_loops(k_loops, tree, rows, cols)

    interior, start, tree, looped = jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(
        jax.random.split(jax.random.PRNGKey(6), 500)))
    loops = []
    for i in range(500):
        assert tree[i][tuple(start[i])] and not tree[i][~interior[i]].any()
        assert len(host_bfs(tree[i], tuple(start[i]))) == tree[i].sum() and cycles(tree[i]) == 0
        assert all(open_count(tree[i], r, c) != 1 for r, c in zip(*np.nonzero(interior[i] & ~tree[i])))
        assert (looped[i] >= tree[i]).all() and not looped[i][~interior[i]].any()
        added = int(looped[i].sum() - tree[i].sum())
        assert cycles(looped[i]) == added  # each opened wall closes one cycle
        loops.append(added)
    assert set(loops) == {0, 1, 2, 3}


@pytest.mark.slow
def test_branched_generator_matches_a_plain_python_generator(sampled):
    """The same distribution as :func:`host_branched_maze`: rows, path lengths, open cells, loops and dead ends
    agree within 4.5 standard errors of the difference of two samples."""
    task, _ = sampled
    rng = random.Random(0)
    host = [host_branched_maze(rng) for _ in range(N_MAZES)]

    def dead_ends(open_):
        return sum(open_count(open_, r, c) == 1 for r, c in zip(*np.nonzero(open_)))

    def stats(mazes):  # per maze: rows, path length 8, open cells, loops, dead ends
        return np.array([[rows, host_bfs(open_, start)[goal] == 8, open_.sum(), cycles(open_), dead_ends(open_)]
                         for rows, open_, start, goal in mazes], float)

    jax_mazes = [(task.rows[i], task.open[i], tuple(task.start[i]), tuple(task.goal[i])) for i in range(N_MAZES)]
    a, b = stats(jax_mazes), stats(host)
    for j, name in enumerate(["rows", "path length 8", "open cells", "loops", "dead ends"]):
        se = np.sqrt(a[:, j].var() / len(a) + b[:, j].var() / len(b))
        assert abs(a[:, j].mean() - b[:, j].mean()) < 4.5 * se, (name, a[:, j].mean(), b[:, j].mean())


@pytest.mark.slow
def test_mazes_are_a_function_of_the_key(maze, shown):
    for env, params in (maze, shown):
        sample = jax.jit(jax.vmap(lambda k: env.sample_task(k, params)))  # noqa: B023
        keys = jax.random.split(jax.random.PRNGKey(5), 64)
        a, b = jax.tree.map(np.asarray, sample(keys)), jax.tree.map(np.asarray, sample(keys))
        jax.tree.map(np.testing.assert_array_equal, a, b)
        distinct = {(m.tobytes(), tuple(start)) for m, start in zip(a.open, a.start)}
        assert len(distinct) > 48  # other keys, other mazes (small ones do repeat now and then)


# ---------------------------------------------------------------- the random-walls generator (maze-goal-shown)
def test_random_walls_generator_path_length_shapes_and_farthest_goal():
    task, tries = jax.jit(jax.vmap(sample_random_walls_maze))(jax.random.split(jax.random.PRNGKey(0), N_MAZES))
    task, tries = jax.tree.map(np.asarray, task), np.asarray(tries)
    for i in range(N_MAZES):
        rows, cols = int(task.rows[i]), int(task.cols[i])
        open_ = task.open[i]
        assert not open_[rows:].any() and not open_[:, cols:].any()
        start, goal = tuple(task.start[i]), tuple(task.goal[i])
        assert open_[start] and 1 <= start[0] <= rows - 2 and 1 <= start[1] <= cols - 2
        dist = host_bfs(open_, start)
        assert dist[goal] in (7, 8) and dist[goal] == max(dist.values())
    # Shapes are uniform: each about a quarter of the mazes.
    counts = np.array([np.sum((task.rows == r) & (task.cols == c)) for r, c in SHAPES]) / N_MAZES
    assert np.all(np.abs(counts - 0.25) < binomial_tolerance(0.25, N_MAZES))
    # Rejection sampling stays cheap: the documented 2.29 tries per maze on average.
    assert abs(tries.mean() - 2.29) < 4 * tries.std() / np.sqrt(N_MAZES)


# ---------------------------------------------------------------- what the agent sees
@pytest.mark.slow
def test_observation_never_tells_the_goal_or_the_grid_size(maze, shown, sampled):
    """ORBIT's rules: moving the goal to another cell away from the start and declaring another grid size leave
    the opening unchanged; the ``maze-goal-shown`` variant's opening tells both (which shows the check can fail)."""
    task, _ = sampled
    tasks = jax.tree.map(lambda x: jnp.asarray(x[:200]), task)
    dist = [host_bfs(task.open[i], tuple(task.start[i])) for i in range(200)]
    other = np.array([next(c for c, d in dist[i].items() if 2 <= d < max(dist[i].values())) for i in range(200)])
    moved = tasks.replace(goal=jnp.asarray(other, jnp.int32), rows=jnp.full((200,), 7, jnp.int32),
                          cols=jnp.full((200,), 7, jnp.int32), inside=jnp.ones((200, 7, 7), bool))
    for (env, params), hidden in ((maze, True), (shown, False)):
        opening = jax.jit(jax.vmap(lambda t: env.reset_to_task(jax.random.PRNGKey(0), t, params)[0]))  # noqa: B023
        same = (np.asarray(opening(tasks)) == np.asarray(opening(moved))).all(axis=1)
        assert same.all() if hidden else not same.any()
    env, params = maze
    text = env.render_text(env.reset_to_task(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[0], tasks), params)[1])
    assert "The goal is hidden in the maze" in text and "The goal is at" not in text and "rows and" not in text
    env, params = shown
    t0 = jax.tree.map(lambda x: x[0], tasks)
    text = env.render_text(env.reset_to_task(jax.random.PRNGKey(0), t0, params)[1])
    assert f"The goal is at ({int(t0.goal[0])}, {int(t0.goal[1])})" in text


def test_walking_into_a_wall_costs_a_turn_and_says_so(maze):
    env, params = maze
    for seed in range(100):  # the first maze whose start has both a wall and an open cell next to it
        _, state = env.reset(jax.random.PRNGKey(seed), params)
        task = jax.tree.map(np.asarray, state.task)
        r, c = task.start
        blocked = [a for a, (dr, dc) in MOVES.items() if not task.open[r + dr, c + dc]]
        free = [a for a in MOVES if a not in blocked]
        if blocked and free:
            break
    _, s1, reward, done, _ = env.step_env(jax.random.PRNGKey(0), state, blocked[0], params)
    np.testing.assert_array_equal(s1.game.pos, task.start)
    assert int(s1.time) == 1 and not bool(done) and float(reward) == 0.0
    assert "but hit a wall." in env.render_text(s1)
    _, s2, _, _, _ = env.step_env(jax.random.PRNGKey(0), state, free[0], params)
    dr, dc = MOVES[free[0]]
    np.testing.assert_array_equal(s2.game.pos, [r + dr, c + dc])
    assert env.parse_action("I go \\boxed{ Up }") == 0 and env.parse_action("\\boxed{north}") == -1


# ---------------------------------------------------------------- oracle and random rates
@pytest.mark.slow
def test_oracle_wins_along_a_shortest_path(maze):
    env, params = maze
    final, infos, rewards = run_trials(env, params, env.oracle_action, jax.random.PRNGKey(1), 1000, 9)
    assert np.asarray(infos["success"]).any(axis=0).all()
    assert np.asarray(rewards).sum(axis=0).max() == 1.0
    task = jax.tree.map(np.asarray, final.task)
    for i in range(1000):
        dist = host_bfs(task.open[i], tuple(task.start[i]))
        assert int(final.time[i]) == dist[tuple(task.goal[i])]


@pytest.mark.parametrize("env_id,turns", [("maze", 9), ("maze", 40), ("maze-goal-shown", 40)])
@pytest.mark.slow
def test_random_policy_matches_exact_host_rate(env_id, turns):
    """ORBIT's 9 turns (random play rarely wins) and 40 turns (a rate large enough to test sharply)."""
    env, params = envs.make(env_id, max_turns=turns)
    n = 3000
    final, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), n, turns)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    task = jax.tree.map(np.asarray, final.task)
    exact = np.mean([
        host_random_success(task.open[i], tuple(task.start[i]), tuple(task.goal[i]), turns) for i in range(n)
    ])
    print(f"{env_id}, {turns} turns: random success {rate:.4f}, exact {exact:.4f}")
    assert 0.001 < exact < 0.5
    assert abs(rate - exact) < binomial_tolerance(exact, n)


# ---------------------------------------------------------------- text and trials
@pytest.mark.slow
def test_oracle_route_replayed_in_episode_two_wins():
    replay = replay_episode_one(*envs.make_trial("maze"), jax.random.PRNGKey(4), 300, keep_tasks=True)
    idx, done, success = (replay["infos"][k] for k in ("episode_index", "episode_done", "episode_success"))
    for e in (0, 1):
        assert ((idx == e) & done & success).any(axis=0).all(), f"episode {e + 1} was not won in every trial"
    for leaf in jax.tree.leaves(replay["tasks"]):  # [trial, step]
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:, :1], leaf.shape))
