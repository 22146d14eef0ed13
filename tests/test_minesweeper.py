"""Minesweeper (reveal-only): board generation, oracle vs an exact host 3BV computation, random play vs a host
simulation, task persistence across episodes, text rendering."""

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import binomial_tolerance, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.envs.base import LOST

ENV_ID = "game:Minesweeper-v0-only-reveal"
R = C = 5
MINES = 5
TURNS = 8


@pytest.fixture(scope="module")
def ms():
    return envs.make(ENV_ID)


def oracle_policy(env):
    return lambda key, state: env.oracle_action(key, state)


# ---------------------------------------------------------------- independent host-side Minesweeper
NEIGH = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def host_counts(mines):
    """mines: bool[R, C] -> int[R, C] neighbouring-mine counts."""
    counts = np.zeros((R, C), int)
    for r in range(R):
        for c in range(C):
            counts[r, c] = sum(mines[r + dr, c + dc] for dr, dc in NEIGH if 0 <= r + dr < R and 0 <= c + dc < C)
    return counts


def host_3bv(mines):
    """Zero regions (8-connected) plus safe numbered cells with no zero neighbour."""
    counts = host_counts(mines)
    zero = ~mines & (counts == 0)
    seen = np.zeros_like(zero)
    regions = 0
    for r in range(R):
        for c in range(C):
            if zero[r, c] and not seen[r, c]:
                regions += 1
                queue = deque([(r, c)])
                seen[r, c] = True
                while queue:
                    a, b = queue.popleft()
                    for dr, dc in NEIGH:
                        x, y = a + dr, b + dc
                        if 0 <= x < R and 0 <= y < C and zero[x, y] and not seen[x, y]:
                            seen[x, y] = True
                            queue.append((x, y))
    isolated = 0
    for r in range(R):
        for c in range(C):
            if not mines[r, c] and not zero[r, c]:
                if not any(0 <= r + dr < R and 0 <= c + dc < C and zero[r + dr, c + dc] for dr, dc in NEIGH):
                    isolated += 1
    return regions + isolated


def host_reveal(mines, counts, revealed, r, c):
    """GEM's BFS flood fill, in place."""
    queue = deque([(r, c)])
    revealed[r, c] = True
    while queue:
        a, b = queue.popleft()
        if counts[a, b] == 0:
            for dr, dc in NEIGH:
                x, y = a + dr, b + dc
                if 0 <= x < R and 0 <= y < C and not revealed[x, y]:
                    revealed[x, y] = True
                    queue.append((x, y))


def host_random_game(rng):
    """One episode of uniform random valid play on a board drawn on the host. Returns True when won."""
    first = int(rng.integers(R * C))
    fr, fc = divmod(first, C)
    allowed = [i for i in range(R * C) if abs(i // C - fr) > 1 or abs(i % C - fc) > 1]
    mines = np.zeros(R * C, bool)
    mines[rng.choice(allowed, MINES, replace=False)] = True
    mines = mines.reshape(R, C)
    counts = host_counts(mines)
    revealed = np.zeros((R, C), bool)
    cell = first
    for _ in range(TURNS):
        r, c = divmod(cell, C)
        if mines[r, c]:
            return False
        host_reveal(mines, counts, revealed, r, c)
        if (revealed | mines).all():
            return True
        cell = int(rng.choice(np.flatnonzero(~revealed.reshape(-1))))
    return False


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def boards(ms):
    """Every task's board for every first click: (tasks uint32[T,2], mines bool[T,25,25], counts int32[T,25,25])."""
    env, _ = ms
    tasks = jax.vmap(lambda k: env.sample_task(k, None))(jax.random.split(jax.random.PRNGKey(3), 800))
    cells = jnp.arange(R * C)
    mines, counts = jax.jit(jax.vmap(jax.vmap(env.board, (None, 0)), (0, None)))(tasks, cells)
    return np.asarray(tasks), np.asarray(mines), np.asarray(counts)


def test_board_follows_gem_placement_rule(ms, boards):
    env, _ = ms
    tasks, mines, counts = boards
    assert (mines.sum(-1) == MINES).all()
    for first in range(R * C):
        fr, fc = divmod(first, C)
        rr, cc = np.divmod(np.arange(R * C), C)
        safe_zone = (np.abs(rr - fr) <= 1) & (np.abs(cc - fc) <= 1)
        assert not mines[:, first, safe_zone].any()
        # Uniform among the other cells: every allowed cell is a mine with probability MINES / #allowed.
        p = MINES / (~safe_zone).sum()
        freq = mines[:, first, ~safe_zone].mean(0)
        assert np.abs(freq - p).max() < binomial_tolerance(p, len(tasks), sigmas=4.5)
    for t in range(0, len(tasks), 97):
        for first in (0, 7, 12):
            m = mines[t, first].reshape(R, C)
            safe = ~m
            assert (counts[t, first].reshape(R, C)[safe] == host_counts(m)[safe]).all()
    # The board is a function of (task, first click): recomputing it gives the same mines.
    again, _ = jax.jit(env.board)(jnp.asarray(tasks[5]), 7)
    assert (np.asarray(again) == mines[5, 7]).all()
    # Different first clicks of one task give different boards (no fixed board ignoring the click).
    assert (mines[:, 0] != mines[:, 24]).any(-1).mean() > 0.9


def test_bitboard_flood_matches_host_reveal(ms, boards):
    env, _ = ms
    tasks, mines, counts = boards
    t = np.arange(0, 800, 4)
    cells = (t * 7) % (R * C)
    m, k = mines[t, cells], counts[t, cells]
    zero = ~m & (k == 0)
    bits = np.asarray(jax.jit(jax.vmap(env._flood))(jnp.asarray(cells), jnp.asarray(zero)))
    arrays = np.asarray(jax.jit(jax.vmap(env._flood_arrays))(jnp.asarray(cells), jnp.asarray(zero)))
    np.testing.assert_array_equal(bits, arrays)
    for i in range(len(t)):
        if m[i, cells[i]]:
            continue
        host = np.zeros((R, C), bool)
        host_reveal(m[i].reshape(R, C), host_counts(m[i].reshape(R, C)), host, *divmod(int(cells[i]), C))
        np.testing.assert_array_equal(bits[i], host.reshape(-1))


def test_three_bv_matches_host(ms, boards):
    env, _ = ms
    tasks, mines, counts = boards
    bv = np.asarray(jax.jit(jax.vmap(env.three_bv))(jnp.asarray(mines[:200, 12]), jnp.asarray(counts[:200, 12])))
    host = np.array([host_3bv(mines[t, 12].reshape(R, C)) for t in range(200)])
    assert (bv == host).all()


@pytest.mark.parametrize("turns", [pytest.param(TURNS, marks=pytest.mark.slow), 3])
def test_oracle_wins_exactly_when_best_3bv_fits(ms, turns):
    """With 8 turns every task turns out to be solvable; 3 turns gives a non-trivial rate."""
    env, params = ms
    params = params.replace(max_turns=turns)
    final, infos, rewards = run_trials(env, params, oracle_policy(env), jax.random.PRNGKey(4), 500, turns)
    won = np.asarray(infos["success"]).any(axis=0)
    tasks = jnp.asarray(final.task)
    mines, _ = jax.jit(jax.vmap(jax.vmap(env.board, (None, 0)), (0, None)))(tasks, jnp.arange(R * C))
    mines = np.asarray(mines)
    best = np.array([min(host_3bv(mines[t, f].reshape(R, C)) for f in range(R * C)) for t in range(len(won))])
    expected = best <= turns
    rate, p = won.mean(), expected.mean()
    print(f"max_turns={turns}: oracle success {rate:.4f}, host P(best 3BV <= {turns}) {p:.4f}, "
          f"best-3BV histogram {np.bincount(best).tolist()}")
    assert abs(rate - p) < binomial_tolerance(p, len(won))
    assert (won == expected).all()  # and task by task
    assert (np.asarray(final.time)[won] == best[won]).all()  # a won episode takes exactly the best 3BV clicks
    assert np.asarray(rewards).sum(axis=0).max() == 1.0
    assert not (np.asarray(final.status) == LOST).any()  # the oracle never hits a mine


def test_random_valid_policy_matches_host_simulation(ms):
    env, params = ms
    n = 3000
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(5), n, TURNS)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    rng = np.random.default_rng(0)
    m = 20000
    host = np.mean([host_random_game(rng) for _ in range(m)])
    print(f"random valid policy success {rate:.4f} (n={n}), host simulation {host:.4f} (n={m})")
    assert abs(rate - host) < binomial_tolerance(host, n * m // (n + m))


def test_gem_like_feedback_texts(ms):
    env, params = ms
    step = jax.jit(env.step_env)
    _, s = env.reset(jax.random.PRNGKey(7), params)
    _, s, *_ = step(jax.random.PRNGKey(0), s, 12, params)
    text = env.render_text(s)
    assert text.startswith("At turn 1, you revealed cell (2, 2).\n")
    grid = [line.split()[1:] for line in text.splitlines()[3:3 + R]]
    rev, cnt = np.asarray(s.game.revealed).reshape(R, C), np.asarray(s.game.counts).reshape(R, C)
    assert grid == [[str(cnt[r, c]) if rev[r, c] else "." for c in range(C)] for r in range(R)]
    # The first click is in a mine-free 3 x 3 square, so it is a zero that opens at least its square.
    assert int(s.game.counts[12]) == 0 and np.asarray(s.game.revealed).sum() >= 9
    _, s2, *_ = step(jax.random.PRNGKey(0), s, 12, params)
    assert "already revealed" in env.render_text(s2) and int(s2.time) == 2
    mine = int(np.argmax(np.asarray(s.game.mines)))
    _, s3, r, term, _ = step(jax.random.PRNGKey(0), s, mine, params)
    assert int(s3.status) == LOST and bool(term) and float(r) == 0.0 and "hit a mine" in env.render_text(s3)
