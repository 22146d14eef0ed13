"""Mastermind: peg rule against a pure-Python reference, exact success rates of the oracle (host enumeration
over all codes) and of random play, scripted messages, text rendering, and the task persisting in a trial."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (binomial_tolerance, oracle_success_per_task,
                     random_valid_policy, replay_episode_one, run_trials)
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, OUT_OF_TURNS, WON
from metarl_jax.envs.mastermind import pegs

ENV_ID = "game:Mastermind-v0-random"


@pytest.fixture(scope="module")
def game():
    return envs.make(ENV_ID)


def py_pegs(guess, code):
    """GEM's two-pass rule, written independently: blacks first, then whites from the leftover digits."""
    black = sum(g == c for g, c in zip(guess, code))
    code_left = [c for g, c in zip(guess, code) if g != c]
    white = 0
    for g, c in zip(guess, code):
        if g != c and g in code_left:
            code_left.remove(g)
            white += 1
    return black, white


def host_oracle_outcomes(max_turns=3, length=3, digits=6):
    """For every code (lexicographic), whether 'guess the first code consistent with the feedback' wins."""
    codes = list(itertools.permutations(range(1, digits + 1), length))  # lexicographic for sorted input
    wins = []
    for secret in codes:
        history, won = [], False
        for _ in range(max_turns):
            guess = next(c for c in codes if all(py_pegs(g, c) == fb for g, fb in history))
            if guess == secret:
                won = True
                break
            history.append((guess, py_pegs(guess, secret)))
        wins.append(won)
    return codes, np.array(wins)


def oracle_policy(env):
    return lambda key, state: env.oracle_action(key, state)


# ---------------------------------------------------------------- rules


def test_action_set_and_codes(game):
    env, params = game
    assert env.num_actions == 216 and env.num_codes == 120
    assert [tuple(c) for c in env.codes.tolist()] == list(itertools.permutations(range(1, 7), 3))
    assert env.action_text(0) == "\\boxed{1 1 1}" and env.action_text(215) == "\\boxed{6 6 6}"
    assert env.parse_action("my guess: \\boxed{ 2  5 1 }") == env.action_contents.index("2 5 1")
    assert env.parse_action("\\boxed{7 1 2}") == -1 and env.parse_action("\\boxed{1 2}") == -1
    for i in range(env.num_actions):
        assert env.parse_action(env.action_text(i)) == i


def test_pegs_match_python_reference_on_all_pairs(game):
    env, _ = game
    b, w = jax.jit(lambda g, c: pegs(g[:, None], c[None], 6))(env.guesses, env.codes)
    b, w = np.asarray(b), np.asarray(w)
    for i, g in enumerate(env.guesses.tolist()):
        for j, c in enumerate(env.codes.tolist()):
            assert (b[i, j], w[i, j]) == py_pegs(g, c), (g, c)


def test_scripted_episode_messages(game):
    env, params = game
    step = jax.jit(env.step_env)
    secret = env.codes.tolist().index([2, 4, 6])
    _, s = env.reset_to_task(jax.random.PRNGKey(0), jnp.int32(secret), params)
    k = jax.random.PRNGKey(1)
    a = env.parse_action
    _, s, r, term, _ = step(k, s, a("\\boxed{6 4 2}"), params)
    assert env.render_text(s) == "At turn 1, you guessed 6 4 2. Black pegs: 1, white pegs: 2."
    _, s, r, term, _ = step(k, s, a("\\boxed{6 4 2}"), params)
    assert env.render_text(s) == "At turn 2, you guessed 6 4 2, which you already guessed before."
    _, s2, r2, term2, _ = step(k, s, a("\\boxed{2 4 6}"), params)  # a win on the last turn is a win
    assert int(s2.status) == WON and float(r2) == 1.0 and bool(term2)
    assert env.render_text(s2) == "Correct! The secret code is 2 4 6. You cracked it in 3 turns."
    _, s3, r3, term3, _ = step(k, s, a("\\boxed{1 1 1}"), params)
    assert int(s3.status) == OUT_OF_TURNS and float(r3) == 0.0 and not bool(term3)
    assert bool(env.is_truncated(s3, params))
    assert env.render_text(s3) == "You have reached the maximum number of turns."
    _, s4, _, term4, _ = step(k, s, -1, params)
    assert int(s4.status) == FORMAT_ERROR and bool(term4)


# ---------------------------------------------------------------- policies


def test_oracle_matches_host_enumeration_per_code(game):
    env, params = game
    codes, host_wins = host_oracle_outcomes()
    wins = oracle_success_per_task(env, params, np.arange(env.num_codes), 3).any(axis=1)
    np.testing.assert_array_equal(wins, host_wins)
    # Exact: 41 / 120 codes are found within 3 turns by the first-consistent-code strategy.
    assert 0.2 < host_wins.mean() < 0.8


def test_oracle_rate_on_random_tasks(game):
    env, params = game
    _, host_wins = host_oracle_outcomes()
    _, infos, _ = run_trials(env, params, oracle_policy(env), jax.random.PRNGKey(3), 2000, 3)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    p = float(host_wins.mean())
    assert abs(rate - p) < binomial_tolerance(p, 2000)


def test_random_policy_matches_analytic_rate(game):
    env, params = game
    # Uniform over not-yet-guessed guesses: the secret is among the first 3 of 216 distinct draws.
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(4), 4000, 3)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    assert abs(rate - 3 / 216) < binomial_tolerance(3 / 216, 4000)


def test_same_task_across_episodes():
    replay = replay_episode_one(*envs.make_trial(ENV_ID), jax.random.PRNGKey(5), 256)
    assert replay["ended2"].all(), "episode 2 did not finish within the trial's step cap"
    won1, won2 = replay["won1"], replay["won2"]
    assert won1.any() and (~won1).any()
    np.testing.assert_array_equal(won2, won1)  # same code: the replayed guesses get the same pegs


# ---------------------------------------------------------------- text
