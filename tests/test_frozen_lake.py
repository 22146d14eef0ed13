"""FrozenLake text game: step-by-step parity with gymnax, exact random-play rates, BFS oracle, text, same task."""

import itertools
from collections import deque

import jax
import numpy as np
import pytest
from gymnax.environments.misc.frozen_lake import GOAL, HOLE, START, FrozenLake

from helpers import binomial_tolerance, random_valid_policy, replay_episode_one, run_trials
from metarl_jax import envs
from metarl_jax.envs.frozen_lake import sample_map

MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))  # gymnax: left, down, right, up
SUCCESS_RATE = 1 / 3


@pytest.fixture(scope="module")
def fixed():
    return envs.make("FrozenLake-misc", random_map=False)


@pytest.fixture(scope="module")
def slippery():
    # A longer horizon than ORBIT's 8 turns, so that random play reaches the goal now and then.
    return envs.make("FrozenLake-misc", random_map=False, is_slippery=True, max_turns=30)


@pytest.fixture(scope="module")
def random_maps():
    return envs.make("FrozenLake-misc")


def host_dist_to_goal(desc):
    """Plain-Python BFS from the start through non-hole tiles: moves to the goal (None if unreachable)."""
    start = tuple(np.argwhere(desc == START)[0])
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        if desc[r, c] == GOAL:
            return dist[(r, c)]
        for dr, dc in MOVES:
            nb = (r + dr, c + dc)
            if 0 <= nb[0] < 4 and 0 <= nb[1] < 4 and desc[nb] != HOLE and nb not in dist:
                dist[nb] = dist[(r, c)] + 1
                queue.append(nb)
    return None


def host_random_outcomes(desc, turns, slippery_ice):
    """Exact outcome distribution of uniform play (over on-lake moves; over all moves when slippery).

    Returns ``{("goal", cell) | ("hole", cell) | ("alive", cell): probability}`` after ``turns`` turns.
    """
    prob, out = {tuple(np.argwhere(desc == START)[0]): 1.0}, {}
    for _ in range(turns):
        nxt = {}
        for (r, c), p in prob.items():
            actions = [a for a, (dr, dc) in enumerate(MOVES)
                       if slippery_ice or (0 <= r + dr < 4 and 0 <= c + dc < 4)]
            for a in actions:
                outcomes = [(a, 1.0)] if not slippery_ice else [
                    (a, SUCCESS_RATE), ((a - 1) % 4, (1 - SUCCESS_RATE) / 2), ((a + 1) % 4, (1 - SUCCESS_RATE) / 2)]
                for m, q in outcomes:
                    nb = (min(max(r + MOVES[m][0], 0), 3), min(max(c + MOVES[m][1], 0), 3))
                    w = p * q / len(actions)
                    if desc[nb] in (GOAL, HOLE):
                        key = ("goal" if desc[nb] == GOAL else "hole", nb)
                        out[key] = out.get(key, 0.0) + w
                    else:
                        nxt[nb] = nxt.get(nb, 0.0) + w
        prob = nxt
    out.update({("alive", cell): p for cell, p in prob.items()})
    return out


def host_random_success(desc, turns, slippery_ice):
    return sum(p for (kind, _), p in host_random_outcomes(desc, turns, slippery_ice).items() if kind == "goal")


@pytest.mark.parametrize("is_slippery", [False, True])
def test_same_keys_and_actions_give_gymnax_trajectories(is_slippery):
    env, params = envs.make("FrozenLake-misc", random_map=False, is_slippery=is_slippery)
    gx = FrozenLake(is_slippery=is_slippery)
    gx_params = gx.default_params
    assert env.deterministic == (not is_slippery)
    np.testing.assert_array_equal(np.asarray(env.fixed_map), np.asarray(gx.desc))
    n, steps = 2000, 8

    @jax.jit
    def run(key):
        def one(key):
            k_act, k_steps = jax.random.split(key)
            actions = jax.random.randint(k_act, (steps,), 0, 4)
            _, ours = env.reset(key, params)
            _, theirs = gx.reset_env(key, gx_params)

            def body(carry, x):
                ours, theirs = carry
                k, a = x
                _, ours, r1, d1, _ = env.step_env(k, ours, a, params)
                _, theirs, r2, d2, _ = gx.step_env(k, theirs, a, gx_params)
                return (ours, theirs), (ours.game.pos, d1, r1, ours.game.moved, theirs.position, d2, r2)

            return jax.lax.scan(body, (ours, theirs), (jax.random.split(k_steps, steps), actions))[1] + (actions,)

        return jax.vmap(one)(jax.random.split(key, n))

    pos1, done1, rew1, moved, pos2, done2, rew2, actions = map(np.asarray, run(jax.random.PRNGKey(0)))
    # Compare up to and including gymnax's first terminal step (its step_env does not stop afterwards).
    live = np.cumsum(np.cumsum(done2, axis=1), axis=1) <= 1
    np.testing.assert_array_equal(pos1[live], pos2[live])
    np.testing.assert_array_equal(done1[live], done2[live])
    np.testing.assert_array_equal(rew1[live], rew2[live])
    assert rew2[live].sum() > 0 and done2.any(axis=1).mean() > 0.3
    slip_rate = float((moved != actions)[live].mean())
    if is_slippery:  # 2/3 of the moves slide sideways
        assert abs(slip_rate - 2 / 3) < binomial_tolerance(2 / 3, int(live.sum()))
    else:
        assert slip_rate == 0.0


def test_random_policy_outcomes_match_exact_host_distribution(fixed, slippery):
    """Fixed map: the whole distribution of (goal / which hole / where alive) after the episode."""
    for (env, params), turns in ((fixed, 8), (slippery, 30)):
        n = 10000
        final, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(1), n, turns)
        exact = host_random_outcomes(np.asarray(env.fixed_map), turns, env.is_slippery)
        assert abs(sum(exact.values()) - 1) < 1e-9
        pos, status = np.asarray(final.game.pos), np.asarray(final.status)
        kind = np.where(status == envs.WON, "goal", np.where(status == envs.LOST, "hole", "alive"))
        assert set(zip(kind, map(tuple, np.stack(np.divmod(pos, 4), 1)))) <= set(exact)
        for (k, (r, c)), p in exact.items():
            rate = np.mean((kind == k) & (pos == 4 * r + c))
            assert abs(rate - p) < binomial_tolerance(p, n), (k, (r, c), rate, p)
        success = float(np.asarray(infos["success"]).any(axis=0).mean())
        p = host_random_success(np.asarray(env.fixed_map), turns, env.is_slippery)
        assert 0.005 < p and abs(success - p) < binomial_tolerance(p, n)


def test_random_policy_on_random_maps_matches_exact_host_rate(random_maps):
    env, params = random_maps
    n = 10000
    final, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(1), n, 8)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    desc = np.asarray(final.task)
    exact = np.mean([host_random_success(desc[i], 8, False) for i in range(n)])
    assert 0.02 < exact < 0.5
    assert abs(rate - exact) < binomial_tolerance(exact, n)


def test_random_maps_are_solvable_with_the_exact_hole_rate():
    desc, tries = jax.jit(jax.vmap(lambda k: sample_map(k, 0.2)))(jax.random.split(jax.random.PRNGKey(2), 3000))
    desc, tries = np.asarray(desc), np.asarray(tries)
    assert (desc[:, 0, 0] == START).all() and (desc[:, 3, 3] == GOAL).all()
    assert all(host_dist_to_goal(d) is not None for d in desc)
    # Exact values by enumerating the 2^14 hole patterns of the 14 other tiles.
    cells = [(r, c) for r in range(4) for c in range(4) if (r, c) not in ((0, 0), (3, 3))]
    accept = mean_holes = 0.0
    for bits in itertools.product((0, 1), repeat=14):
        d = np.zeros((4, 4), int)
        d[0, 0], d[3, 3] = START, GOAL
        for (r, c), b in zip(cells, bits):
            d[r, c] = HOLE if b else d[r, c]
        if host_dist_to_goal(d) is not None:
            w = 0.2 ** sum(bits) * 0.8 ** (14 - sum(bits))
            accept, mean_holes = accept + w, mean_holes + w * sum(bits)
    mean_holes /= accept
    assert abs(accept - 0.8587) < 1e-4  # the figure in the module docstring
    holes = (desc == HOLE).sum(axis=(1, 2))
    assert abs(holes.mean() - mean_holes) < 4 * holes.std() / np.sqrt(len(desc))
    assert abs(tries.mean() - 1 / accept) < 4 * tries.std() / np.sqrt(len(desc))


@pytest.mark.parametrize("which", ["fixed", "random_maps"])
def test_oracle_wins_whenever_the_goal_is_close_enough(which, request):
    env, params = request.getfixturevalue(which)
    final, infos, _ = run_trials(env, params, env.oracle_action, jax.random.PRNGKey(3), 1000, 8)
    won = np.asarray(infos["success"]).any(axis=0)
    dist = np.array([host_dist_to_goal(d) for d in np.asarray(final.task)])
    np.testing.assert_array_equal(won, dist <= 8)
    np.testing.assert_array_equal(np.asarray(final.time)[won], dist[won])  # along a shortest path
    assert won.mean() > 0.95


def test_oracle_route_replayed_in_episode_two_wins():
    trial, params = envs.make_trial("FrozenLake-misc")
    assert trial.env.deterministic and trial.deterministic
    replay = replay_episode_one(trial, params, jax.random.PRNGKey(5), 500, keep_tasks=True)
    tasks = replay["tasks"]  # [trial, step, 4, 4]
    np.testing.assert_array_equal(tasks, np.broadcast_to(tasks[:, :1], tasks.shape))
    idx, done, success = (replay["infos"][k] for k in ("episode_index", "episode_done", "episode_success"))
    won = [((idx == e) & done & success).any(axis=0) for e in (0, 1)]
    reachable = np.array([host_dist_to_goal(d) <= 8 for d in tasks[:, 0]])
    np.testing.assert_array_equal(won[0], reachable)
    np.testing.assert_array_equal(won[1], won[0])
    assert won[0].mean() > 0.95
