"""Maze: the generator (host BFS), BFS oracle, random play vs an exact host computation, text, same task."""

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (adhoc_word_tokenizer, binomial_tolerance, collect_states, random_valid_policy, render_roundtrip,
                     replay_episode_one, run_trials)
from metarl_jax import envs
from metarl_jax.envs.maze import SHAPES, sample_maze
from metarl_jax.text.codec import Codec

MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # up, down, left, right


@pytest.fixture(scope="module")
def maze():
    return envs.make("maze")


@pytest.fixture(scope="module")
def sampled():
    """2000 mazes from the JAX sampler, as numpy, with the number of tries each took."""
    task, tries = jax.jit(jax.vmap(sample_maze))(jax.random.split(jax.random.PRNGKey(0), 2000))
    return jax.tree.map(np.asarray, task), np.asarray(tries)


def host_bfs(open_, start):
    """Plain-Python BFS: {cell: distance} over the open cells reachable from ``start``."""
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


def test_generator_path_length_shapes_and_farthest_goal(sampled):
    task, tries = sampled
    shapes = set()
    for i in range(len(tries)):
        rows, cols = int(task.rows[i]), int(task.cols[i])
        shapes.add((rows, cols))
        inside = np.zeros((7, 7), bool)
        inside[:rows, :cols] = True
        np.testing.assert_array_equal(task.inside[i], inside)
        open_ = task.open[i]
        assert not open_[~inside].any()
        start, goal = tuple(task.start[i]), tuple(task.goal[i])
        assert open_[start] and 1 <= start[0] <= rows - 2 and 1 <= start[1] <= cols - 2
        dist = host_bfs(open_, start)
        assert dist[goal] in (7, 8)
        assert dist[goal] == max(dist.values())
    assert shapes == set(SHAPES)
    # Shapes are uniform: each about a quarter of the mazes.
    counts = np.array([np.sum((task.rows == r) & (task.cols == c)) for r, c in SHAPES]) / len(tries)
    assert np.all(np.abs(counts - 0.25) < binomial_tolerance(0.25, len(tries)))
    # Rejection sampling stays cheap: the documented 2.29 tries per maze on average.
    assert abs(tries.mean() - 2.29) < 4 * tries.std() / np.sqrt(len(tries))


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


def test_oracle_wins_along_a_shortest_path(maze):
    env, params = maze
    final, infos, rewards = run_trials(env, params, env.oracle_action, jax.random.PRNGKey(1), 1000, 9)
    assert np.asarray(infos["success"]).any(axis=0).all()
    assert np.asarray(rewards).sum(axis=0).max() == 1.0
    task = jax.tree.map(np.asarray, final.task)
    for i in range(1000):
        dist = host_bfs(task.open[i], tuple(task.start[i]))
        assert int(final.time[i]) == dist[tuple(task.goal[i])]


@pytest.mark.parametrize("turns", [9, 40])
def test_random_policy_matches_exact_host_rate(turns):
    """ORBIT's 9 turns (random play almost never wins) and 40 turns (a rate large enough to test sharply)."""
    env, params = envs.make("maze", max_turns=turns)
    n = 3000
    final, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), n, turns)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    task = jax.tree.map(np.asarray, final.task)
    exact = np.mean([
        host_random_success(task.open[i], tuple(task.start[i]), tuple(task.goal[i]), turns) for i in range(n)
    ])
    assert 0.001 < exact < 0.5
    assert abs(rate - exact) < binomial_tolerance(exact, n)


def test_render_roundtrip_random_states(maze):
    env, params = maze
    codec = Codec(env, adhoc_word_tokenizer(env))

    def mixed(key, state):  # half oracle moves, half uniform moves (walls included)
        k1, k2 = jax.random.split(key)
        return jnp.where(jax.random.bernoulli(k1), env.oracle_action(k1, state), jax.random.randint(k2, (), 0, 4))

    states = collect_states(env, params, mixed, jax.random.PRNGKey(3), 24, 10)
    texts = [text for _, text in render_roundtrip(env, codec, states, batch_dims=2)]
    # The sample covers every kind of observation.
    for fragment in ("You are in a maze", "you moved", "but hit a wall.", "reached the goal!", "Right: the goal",
                     "maximum number of turns"):
        assert any(fragment in t for t in texts), fragment


def test_oracle_route_replayed_in_episode_two_wins(maze):
    replay = replay_episode_one(*envs.make_trial("maze"), jax.random.PRNGKey(4), 300, keep_tasks=True)
    idx, done, success = (replay["infos"][k] for k in ("episode_index", "episode_done", "episode_success"))
    for e in (0, 1):
        assert ((idx == e) & done & success).any(axis=0).all(), f"episode {e + 1} was not won in every trial"
    for leaf in jax.tree.leaves(replay["tasks"]):  # [trial, step]
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:, :1], leaf.shape))
